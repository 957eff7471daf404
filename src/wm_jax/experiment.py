"""`python -m wm_jax.experiment`: the command; its code is `wm_jax.pipeline.experiment`."""

import sys

from wm_jax.pipeline.experiment import main

if __name__ == "__main__":
    sys.exit(main())
