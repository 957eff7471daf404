"""Fixtures shared by test files."""

import pytest

from wm_jax import runtime

runtime.tune_malloc()  # the suite runs XLA:CPU as the entry points do (faster: no page faults)


@pytest.fixture(scope="session")
def doom_smoke_run(tmp_path_factory):
    """One finished `doom_take_cover --scale smoke` run (real Doom), shared by the end-to-end
    tests of the runner, the temperature sweep and the iterative procedure: each adds its own
    subfolder and leaves the run itself as it found it."""
    from wm_jax import experiment

    run_dir = tmp_path_factory.mktemp("doom") / "run"
    experiment.run("doom_take_cover", "smoke", run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def minatar_smoke_run(tmp_path_factory):
    """One finished `minatar_breakout --scale smoke` run (the fastest game), shared read-only by
    the runner's end-to-end test, the kill-anywhere tests and the notebook test."""
    from wm_jax import experiment

    run_dir = tmp_path_factory.mktemp("minatar") / "run"
    experiment.run("minatar_breakout", "smoke", run_dir, progress=False)
    return run_dir
