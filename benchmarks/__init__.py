"""Speed measurements of wm_jax against eager PyTorch and the paper's NumPy-per-process approach.

`python -m benchmarks.run` runs them all; see benchmarks/README.md.
"""
