"""wm_jax.runtime: the allocator settings apply on glibc Linux, and can be declined."""

import platform

import pytest

from wm_jax import runtime


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
