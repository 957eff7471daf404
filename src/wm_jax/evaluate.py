"""`python -m wm_jax.evaluate`: the command; its code is `wm_jax.pipeline.evaluate`."""

import sys

from wm_jax.pipeline.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
