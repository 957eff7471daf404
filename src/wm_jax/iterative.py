"""`python -m wm_jax.iterative`: the command; its code is `wm_jax.pipeline.iterative`."""

import sys

from wm_jax.pipeline.iterative import main

if __name__ == "__main__":
    sys.exit(main())
