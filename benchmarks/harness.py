"""What every benchmark section shares: the run's sizes (`Settings`: FULL, QUICK, TINY), timing
(medians of alternating repetitions, compile time apart), random weights, torch and progress lines.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import report

RESULTS_DIR = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run. Rates do not depend on them beyond noise; run time does."""

    name: str
    batches: tuple[int, ...]
    dream_steps_total: int  # steps per call ≈ this / batch, clipped to dream_steps_range
    dream_steps_range: tuple[int, int]
    repeats: int
    min_time_s: float  # each repetition repeats the call until it has run this long
    numpy_seconds: float
    numpy_rollout_steps: int
    numpy_workers: int | None  # None: one per core
    peak_sizes: tuple[int, ...] | None  # None: peak.CPU_SIZES / GPU_SIZES
    batched_at: tuple[int, ...] | None = None  # batches that also time wm_jax:batched (None: all)
    cma_population: int = 64
    cma_rollouts: int = 16
    cma_steps: int = 2100  # Doom's cap; no rollout ends earlier (done head biased off)
    cma_generations: int = 2
    vae_batch: int = 100
    mdn_batch: int = 100
    mdn_seq_len: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"car_racing": 999, "doom": 500}
    )
    collect_frames: int = 300  # per episode
    collect_episodes_per_worker: int = 2
    car_racing_steps: int = 500


FULL = Settings(
    name="full",
    batches=(1, 64, 1024, 16384),
    dream_steps_total=100_000,
    dream_steps_range=(5, 2000),
    repeats=5,
    min_time_s=1.0,
    numpy_seconds=5.0,
    numpy_rollout_steps=1000,
    numpy_workers=None,
    peak_sizes=None,
)


QUICK = dataclasses.replace(
    FULL,
    name="quick",
    batches=(1, 64, 1024),
    dream_steps_total=10_000,
    dream_steps_range=(5, 500),
    repeats=3,
    min_time_s=0.3,
    numpy_seconds=1.5,
    numpy_rollout_steps=100,
    batched_at=(1024,),
    cma_steps=50,
    mdn_seq_len={"car_racing": 100, "doom": 100},
    collect_frames=100,
    collect_episodes_per_worker=1,
    car_racing_steps=100,
)


# Smallest form, for tests/test_benchmarks.py: checks the harness, not the speed.
TINY = dataclasses.replace(
    QUICK,
    name="tiny",
    batches=(2,),
    dream_steps_total=6,
    dream_steps_range=(3, 3),
    batched_at=None,
    repeats=1,
    min_time_s=0.0,
    numpy_seconds=0.1,
    numpy_rollout_steps=3,
    numpy_workers=1,
    peak_sizes=(128,),
    cma_population=4,
    cma_rollouts=2,
    cma_steps=3,
    cma_generations=1,
    vae_batch=2,
    mdn_batch=2,
    mdn_seq_len={"car_racing": 4, "doom": 4},
    collect_frames=5,
    car_racing_steps=5,
)


PRESETS = {s.name: s for s in (FULL, QUICK, TINY)}


@dataclasses.dataclass(frozen=True)
class Torch:
    """torch, the reference models, the device they run on and how to wait for it."""

    torch: Any
    ref: Any
    device: str

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def tensor(self, array) -> Any:
        return self.torch.from_numpy(np.array(array)).to(self.device)


def load_torch() -> Torch | None:
    """Torch on all CPU cores, or on CUDA when JAX is on a GPU; None when not importable."""
    try:
        import torch

        from benchmarks import torch_reference
    except Exception:  # absent or broken: every torch figure is skipped
        return None
    torch_reference.use_all_cores()
    device = "cpu"
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        device = "cuda"
        torch.set_default_device(device)  # the reference builds its tensors on the default device
    return Torch(torch, torch_reference, device)


def time_calls(call: Callable[[], Any], repeats: int, min_time_s: float) -> dict[str, Any]:
    """Median seconds per `call()` (which must block until done) over `repeats` repetitions.

    The first call is a warm-up (its time is reported as warmup_s); each repetition then repeats
    the call until `min_time_s` has passed, so short calls are timed over many runs.
    """
    return time_interleaved({"call": call}, repeats, min_time_s)["call"]


def time_interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int, min_time_s: float
) -> dict[str, dict[str, Any]]:
    """`time_calls` for several calls whose repetitions alternate (a, b, a, b, ...)."""
    warmups, counts = {}, {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        warmups[name] = time.perf_counter() - start
        counts[name] = max(1, math.ceil(min_time_s / max(warmups[name], 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                call()
            times[name].append((time.perf_counter() - start) / counts[name])
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "times_s": times[name],
            "calls_per_repeat": counts[name],
            "warmup_s": warmups[name],
        }
        for name in calls
    }


def time_torch(tch: Torch, call: Callable[[], Any], settings: Settings) -> dict[str, Any]:
    """`time_calls` for torch on the faster of every core and one thread (probed with one call
    each after a warm-up): on a busy machine spinning OpenMP threads can cost torch 10× or more.
    """
    probe: dict[int, float] = {}
    if tch.device == "cpu" and (os.cpu_count() or 1) > 1:
        for threads in (os.cpu_count() or 1, 1):
            tch.torch.set_num_threads(threads)
            call()
            start = time.perf_counter()
            call()
            probe[threads] = time.perf_counter() - start
        tch.torch.set_num_threads(min(probe, key=probe.get))
    timing = time_calls(call, settings.repeats, settings.min_time_s)
    timing |= {"torch_threads": tch.torch.get_num_threads(), "thread_probe_s": probe}
    tch.ref.use_all_cores()
    return timing


def compile_jit(
    fn: Callable, *args, compiler_options: dict[str, str] | None = None
) -> tuple[Callable, float]:
    """(compiled, seconds to trace, lower and compile `jax.jit(fn)` for `args`)."""
    start = time.perf_counter()
    compiled = jax.jit(fn, compiler_options=compiler_options).lower(*args).compile()
    return compiled, time.perf_counter() - start


def block(tree) -> None:
    jax.block_until_ready(tree)


def random_params(init: Callable, config: Any, seed: int = 0) -> Any:
    """Weights in `init(key, config)`'s layout, N(0, 1/fan_in) (biases N(0, 0.01)), from NumPy.

    Speed does not depend on the values, and this skips running `init` (M's orthogonal init
    runs XLA's slow CPU QR: seconds per call).
    """
    shapes = jax.eval_shape(lambda key: init(key, config), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(shape):
        fan_in = int(np.prod(shape.shape[:-1])) if len(shape.shape) > 1 else 10_000
        return jnp.asarray(rng.normal(0.0, fan_in**-0.5, shape.shape).astype(np.float32))

    return jax.tree.map(fill, shapes)


def progress(label: str, row: dict[str, Any]) -> None:
    keys = (
        "peak_gflops",
        "steps_per_s",
        "images_per_s",
        "timesteps_per_s",
        "seconds_per_generation",
        "frames_per_s",
        "compile_s",
        "error",
    )
    shown = ", ".join(f"{k} {report.fmt(row[k])}" for k in keys if k in row)
    print(f"  {label}: {shown}", file=sys.stderr, flush=True)


def run_worker(
    module: str, env: dict[str, str], args: tuple[str, ...] = (), timeout: float | None = None
) -> dict[str, Any]:
    """`python -m module --worker *args` in a fresh process (XLA reads its flags once, at
    start-up) with `env` over this one's and the repository on the path; the JSON record it
    prints last. A failed worker raises `subprocess.CalledProcessError` (its stderr attached)."""
    path = os.pathsep.join([str(REPO), str(REPO / "src"), os.environ.get("PYTHONPATH", "")])
    done = subprocess.run(
        [sys.executable, "-m", module, "--worker", *args],
        env=os.environ | {"PYTHONPATH": path} | env,
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])
