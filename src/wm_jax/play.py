"""`python -m wm_jax.play`: the command; its code is `wm_jax.pipeline.play`."""

import sys

from wm_jax.pipeline.play import main

if __name__ == "__main__":
    sys.exit(main())
