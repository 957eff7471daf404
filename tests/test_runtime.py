"""wm_jax.core.runtime: the allocator settings apply on glibc Linux, and can be declined."""

import platform

import pytest

from wm_jax.core import runtime


def test_tune_malloc_declined_by_environment(monkeypatch):
    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.setenv("WM_JAX_MALLOC", "default")
    assert runtime.tune_malloc() is False
    assert runtime.malloc_mode() == "default"


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only"
)
def test_tune_malloc_applies_on_glibc_and_is_idempotent(monkeypatch):
    monkeypatch.setattr(runtime, "_tuned", False)
    monkeypatch.delenv("WM_JAX_MALLOC", raising=False)
    assert runtime.tune_malloc() is True
    assert runtime.tune_malloc() is True
    assert runtime.malloc_mode() == "tuned"
    # The process still allocates and frees normally afterwards.
    blocks = [bytearray(8 << 20) for _ in range(8)]
    del blocks


PEAK_PROBE = """
import json, numpy as np
from wm_jax.core import runtime
runtime.reset_peak_memory()
before = runtime.peak_memory_mb()["process"]
block = np.ones(50_000_000, np.float32)  # 200 MB, every page touched
during = runtime.peak_memory_mb()["process"]
del block
runtime.reset_peak_memory()
after = runtime.peak_memory_mb()["process"]
print(json.dumps([before, during, after]))
"""


@pytest.mark.skipif(platform.system() != "Linux", reason="/proc/self/clear_refs is Linux's")
def test_peak_memory_sees_a_stage_allocation_and_resets_between_stages():
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PEAK_PROBE], capture_output=True, text=True, check=True
    )
    before, during, after = json.loads(out.stdout)
    assert during - before > 180  # the 200 MB block is counted
    assert after < during - 150  # and a new window forgets it once it is freed
