"""The machine: what it is, its measured float32 matmul peak, and the FLOPs of one dream step.

Every dream figure is reported as a fraction of the peak measured *in the same run*, so a loaded
or throttled machine lowers both numbers together. The peak is the best GFLOP/s of `jnp.dot` on
large float32 square matrices under `jit` (the same XLA matmul the dream's LSTM uses); NumPy's and
PyTorch's are recorded for reference.

    .venv/bin/python -m benchmarks.peak      # prints the machine and its peaks
"""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

# Square sizes tried for the peak; the best of all sizes and repetitions is the peak.
CPU_SIZES = (1024, 2048)
GPU_SIZES = (4096, 8192)


def dream_step_flops(
    latent_dim: int,
    action_dim: int,
    hidden_size: int,
    controller_inputs: int,
    num_mixtures: int = 5,
    extra_inputs: int = 0,
    extra_outputs: int = 0,
) -> dict[str, int]:
    """Multiply-adds ×2 of one dream step, matmuls only (elementwise work and sampling excluded).

    LSTM (one fused kernel over [x, h]): 2 · (in + H) · 4H with in = Z + A + extra_inputs;
    MDN head: 2 · H · out with out = Z · K · 3 + extra_outputs; controller: 2 · in_c · A.

    Args:
      extra_inputs: M's inputs beyond [z, a] (Doom: 1, the restart flag).
      extra_outputs: M's outputs beyond the mixture (Doom: 1, the done logit).
      controller_inputs: the controller's input size (Doom: Z + 2H for [z, c, h]).

    Returns:
      {"lstm", "mdn_head", "controller", "total"} FLOPs per step of one rollout.
    """
    lstm_in = latent_dim + action_dim + extra_inputs
    lstm = 2 * (lstm_in + hidden_size) * 4 * hidden_size
    head = 2 * hidden_size * (latent_dim * num_mixtures * 3 + extra_outputs)
    ctrl = 2 * controller_inputs * action_dim
    return {"lstm": lstm, "mdn_head": head, "controller": ctrl, "total": lstm + head + ctrl}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform.processor() elsewhere)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _torch_version() -> str | None:
    try:
        import torch
    except Exception:  # torch is optional: absent, or broken by a partial install
        return None
    return torch.__version__


def machine_info() -> dict[str, Any]:
    """What every record names: CPU, cores, accelerator, library versions, load at the start."""
    devices = jax.devices()
    try:
        cores_usable = len(os.sched_getaffinity(0))
    except AttributeError:
        cores_usable = os.cpu_count()
    info = {
        "hostname": platform.node(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_usable": cores_usable,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "jax_devices": [f"{d.platform}:{d.device_kind}" for d in devices],
        "numpy": np.__version__,
        "torch": _torch_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }
    with contextlib.suppress(OSError):
        info["load_average_1_5_15"] = list(os.getloadavg())
    return info


def machine_slug(info: dict[str, Any]) -> str:
    """A file-name-safe machine name: backend, device or CPU model, core count."""
    if info["jax_backend"] == "cpu":
        name = f"cpu-{info['cpu_model']}-{info['cores_usable']}c"
    else:
        kinds = info["jax_devices"]
        name = f"{info['jax_backend']}-{kinds[0].split(':', 1)[1]}-x{len(kinds)}"
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return re.sub(r"-(processor|cpu|with-radeon-graphics)(?=-)", "", slug)[:60]


def _best_gflops(run, flops: float, repeats: int) -> float:
    run()  # warm-up (and compile)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best / 1e9


def jax_matmul_gflops(size: int, repeats: int = 5, dtype=jnp.float32) -> float:
    """Best GFLOP/s of a jitted (size × size) @ (size × size) on the default device."""
    key_a, key_b = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key_a, (size, size), dtype)
    b = jax.random.normal(key_b, (size, size), dtype)
    matmul = jax.jit(jnp.dot)
    return _best_gflops(lambda: matmul(a, b).block_until_ready(), 2.0 * size**3, repeats)


def gemm_gflops(m: int, k: int, n: int, repeats: int = 5) -> float:
    """Best GFLOP/s of a jitted (m × k) @ (k × n), e.g. at the dream's own LSTM shapes."""
    key_a, key_b = jax.random.split(jax.random.key(1))
    a = jax.random.normal(key_a, (m, k), jnp.float32)
    b = jax.random.normal(key_b, (k, n), jnp.float32)
    matmul = jax.jit(jnp.dot)
    return _best_gflops(lambda: matmul(a, b).block_until_ready(), 2.0 * m * k * n, repeats)


def numpy_matmul_gflops(size: int, repeats: int = 5) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    return _best_gflops(lambda: a @ b, 2.0 * size**3, repeats)


def torch_matmul_gflops(size: int, repeats: int = 5) -> float | None:
    """Best GFLOP/s of torch.mm on CPU with every core; None without torch."""
    try:
        import torch
    except Exception:  # torch is optional
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    a = torch.randn(size, size, device="cpu")
    b = torch.randn(size, size, device="cpu")
    return _best_gflops(lambda: torch.mm(a, b), 2.0 * size**3, repeats)


def measure_peak(
    sizes: tuple[int, ...] | None = None,
    repeats: int = 10,
    shapes: dict[str, tuple[int, int, int]] | None = None,
) -> dict[str, Any]:
    """The float32 matmul peak of this run: the best `jit(jnp.dot)` GFLOP/s of all matmuls tried.

    Args:
      sizes: square sizes (default CPU_SIZES / GPU_SIZES).
      shapes: more (m, k, n) matmuls by name, e.g. the dream's own: they are reported in
        `gemm_gflops` and count towards the peak, which is never below a matmul measured.

    On an accelerator only JAX's figures are measured on the device; NumPy and torch stay on the
    CPU and are recorded as such.
    """
    on_cpu = jax.default_backend() == "cpu"
    if sizes is None:
        sizes = CPU_SIZES if on_cpu else GPU_SIZES
    by_size = {str(size): jax_matmul_gflops(size, repeats) for size in sizes}
    by_shape = {name: gemm_gflops(*shape, repeats) for name, shape in (shapes or {}).items()}
    record: dict[str, Any] = {
        "method": "best of jit(jnp.dot) float32 matmuls, GFLOP/s = 2 m k n / seconds",
        "repeats": repeats,
        "sizes": list(sizes),
        "jax_gflops_by_size": by_size,
        "jax_gflops": max(by_size.values()),
        "gemm_shapes": {name: list(shape) for name, shape in (shapes or {}).items()},
        "gemm_gflops": by_shape,
    }
    cpu_size = max((s for s in sizes if s <= 2048), default=min(sizes))
    record["numpy_cpu_gflops"] = numpy_matmul_gflops(cpu_size, min(repeats, 5))
    record["torch_cpu_gflops"] = torch_matmul_gflops(cpu_size, min(repeats, 5))
    record["cpu_reference_size"] = cpu_size
    record["peak_gflops"] = max(record["jax_gflops"], *by_shape.values())
    return record


if __name__ == "__main__":
    import json

    print(json.dumps({"machine": machine_info(), "peak": measure_peak()}, indent=2))
