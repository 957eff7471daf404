"""Fixtures shared by test files."""

import atexit
import os
import shutil
import tempfile

# One persistent XLA compilation cache for the session, fresh each time (nothing stale carries
# over between runs): the suite builds the same programs many times (every smoke pipeline, each
# resume of the kill-anywhere tests, worker processes, which read these variables too), and a
# program compiled once is then read back instead of compiled again. Set before jax is imported.
_CACHE = tempfile.mkdtemp(prefix="wm_jax_test_xla_cache_")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _CACHE)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from wm_jax.core import runtime  # noqa: E402

runtime.tune_malloc()  # the suite runs XLA:CPU as the entry points do (faster: no page faults)


@pytest.fixture(autouse=True)
def default_kernels():
    """Every test starts on the backend's default kernels (`wm_jax.core.kernels`): a run with
    `--set kernels.*` sets the process's choice, which would otherwise reach the tests after it
    in the same worker (V's XLA convolutions differ from the default ones by float32 rounding,
    and by batch size)."""
    from wm_jax.core import kernels

    with kernels.using(kernels.KernelsConfig()):
        yield


@pytest.fixture(scope="session")
def doom_smoke_run(tmp_path_factory):
    """One finished `doom_take_cover --scale smoke` run (real Doom), shared by the end-to-end
    tests of the runner, the temperature sweep and the iterative procedure: each adds its own
    subfolder and leaves the run itself as it found it."""
    from wm_jax.pipeline import experiment

    run_dir = tmp_path_factory.mktemp("doom") / "run"
    experiment.run("doom_take_cover", "smoke", run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="session")
def minatar_smoke_run(tmp_path_factory):
    """One finished `minatar_breakout --scale smoke` run (the fastest game), shared read-only by
    the runner's end-to-end test, the kill-anywhere tests and the notebook test."""
    from wm_jax.pipeline import experiment

    run_dir = tmp_path_factory.mktemp("minatar") / "run"
    experiment.run("minatar_breakout", "smoke", run_dir, progress=False)
    return run_dir


# The README's test command runs the suite on every core (pytest-xdist, `--dist loadgroup`);
# the tests that share one of the smoke runs above go to one worker, so each run is built once.
_SHARED_RUNS = ("doom_smoke_run", "minatar_smoke_run")


def pytest_collection_modifyitems(items):
    for item in items:
        shared = [name for name in _SHARED_RUNS if name in getattr(item, "fixturenames", ())]
        if shared:
            item.add_marker(pytest.mark.xdist_group(shared[0]))
