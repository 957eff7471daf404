"""`python -m wm_jax.sweep`: the command; its code is `wm_jax.pipeline.sweep`."""

import sys

from wm_jax.pipeline.sweep import main

if __name__ == "__main__":
    sys.exit(main())
