"""`python -m wm_jax.experiment`: the command; its code is `wm_jax.pipeline.experiment`."""

import sys

from wm_jax.core import distributed

if __name__ == "__main__":
    # Several processes connect before anything starts JAX (importing the pipeline does).
    try:
        distributed.initialize_from_argv(sys.argv[1:])
    except distributed.DistributedError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

from wm_jax.pipeline.experiment import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
