"""`python -m wm_jax.experiment`: the command; its code is `wm_jax.pipeline.experiment`."""

import sys

if __name__ == "__main__":
    from wm_jax.core import distributed

    distributed.initialize_from_argv(sys.argv[1:])  # before the pipeline's imports start JAX
    from wm_jax.pipeline.experiment import main

    sys.exit(main())
