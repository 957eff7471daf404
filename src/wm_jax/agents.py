"""`python -m wm_jax.agents`: the command; its code is `wm_jax.pipeline.agents`."""

import sys

from wm_jax.pipeline.agents import main

if __name__ == "__main__":
    sys.exit(main())
