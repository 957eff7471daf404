"""Process-wide settings for speed (glibc's allocator told to keep and reuse its memory), and
the peak-memory measurement each stage records.

XLA:CPU allocates every step's temporaries with malloc (V's train step at batch 100: about
400 MB). glibc serves large blocks from fresh `mmap`ed pages (and from per-thread arenas that it
shrinks on free), so each step page-faults all of them in again: ~100,000 minor faults and
~240 ms of system time in a V step of ~1.2 s on this project's 2-core CPU. With one arena, no
`mmap`ed blocks and no trimming below 1 GB, the memory is reused and the faults disappear:
V training 77-80 -> 107-111 images/s, M training +10-20% (measured on a loaded 2-core EPYC,
`benchmarks/results/`). The price: freed memory stays with the process (up to the peak it
reached), and all threads share one malloc arena.

The command-line entry points (`wm_jax.pipeline.experiment`, `.sweep`, `.iterative`,
`benchmarks.run`) call `tune_malloc()` first; a library user may call it once at start-up. Set
`WM_JAX_MALLOC=default` to keep glibc's defaults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import resource
from pathlib import Path

# glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 1 << 30

_SETTINGS = ((M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES), (M_ARENA_MAX, 1))
_tuned = False


def tune_malloc() -> bool:
    """Apply the settings above to this process; True if they are in effect.

    A no-op (False) off glibc (macOS, musl), or with WM_JAX_MALLOC=default.
    """
    global _tuned
    if _tuned:
        return True
    if os.environ.get("WM_JAX_MALLOC", "tuned") == "default":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return False
    _tuned = all(mallopt(option, value) == 1 for option, value in _SETTINGS)
    return _tuned


def malloc_mode() -> str:
    """ "tuned" or "default": recorded beside benchmark figures and run results."""
    return "tuned" if _tuned else "default"


def reset_peak_memory() -> bool:
    """Start a new peak-resident-memory window for this process (Linux); True if it did.

    Writing "5" to /proc/self/clear_refs resets the kernel's high-water mark (VmHWM), so
    `peak_memory_mb` afterwards reports the peak since this call: one stage's, not the process's.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_memory_mb() -> dict[str, float | None]:
    """Peak resident memory in MB: this process (since `reset_peak_memory`) and its largest child.

    `process`: VmHWM from /proc/self/status where there is one, else getrusage's lifetime peak.
    `largest_child`: the largest finished worker process so far (getrusage; the process's
    lifetime, not one stage's). None where the platform does not say.
    """
    process = None
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                process = int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    # ru_maxrss is in kB on Linux, bytes on macOS.
    scale = 1 / 1024 if platform.system() == "Linux" else 1 / (1024 * 1024)
    if process is None:
        process = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * scale
    return {"process": round(process, 1), "largest_child": round(child, 1) if child else None}
