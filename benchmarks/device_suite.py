"""Every speed figure of one accelerator in one call of under 8 minutes (one H100 / H200).

    bash benchmarks/device_suite.sh [--tiny]          # the prepared call (see that script)
    .venv/bin/python -m benchmarks.device_suite [--tiny] [--out-dir DIR] [--budget-s S]

Measures, in this order, each guarded so that one failure (an out-of-memory at a million
rollouts, say) loses only itself: the card's matmul peak (float32 at JAX's default precision,
which is TF32 on an NVIDIA GPU, at "highest" and in bfloat16); dream steps/s of the CarRacing-
and the Doom-sized M at batches 1 ... 1,048,576; one CMA-ES generation in the Doom dream at
64 × 16 × 2,100 steps; V and M training, and again with each implementation that
`wm_jax.core.kernels` chooses per backend (V's stride-2 layers, M's LSTM backward). Timing,
weights and sizes are `benchmarks.run`'s (medians after a warm-up, compile time apart); torch
and the NumPy reference are left out.

Writes `<machine>-<date>-device.json` and `.md` (`-tiny` with --tiny) into benchmarks/results/
(or --out-dir) after every measurement, so a call cut short keeps what it measured. A
measurement that would start after `--budget-s` seconds is recorded as skipped.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from threadpoolctl import threadpool_limits

from benchmarks import device_report, dream_speed, harness, peak, training_speed
from wm_jax.core import kernels, runtime

RESULTS_DIR = harness.RESULTS_DIR


@dataclasses.dataclass(frozen=True)
class Suite:
    """Sizes of one suite run; `bench` holds the sizes `benchmarks.run`'s sections read."""

    name: str
    bench: harness.Settings
    dream_games: tuple[str, ...] = ("doom", "car_racing")
    vae_batches: tuple[int, ...] = (100, 1024)  # the paper's 100, and one that fills a GPU
    mdn_batches: tuple[int, ...] = (100,)  # the paper's, at its sequence lengths
    peak_sizes: tuple[int, ...] = peak.GPU_SIZES
    budget_s: float = 400.0  # of the 8-minute call: start-up and the last measurement need the rest


DEVICE = Suite(
    name="device",
    bench=dataclasses.replace(
        harness.FULL,
        name="device",
        batches=(1, 64, 1024, 16384, 131072, 1048576),
        batched_at=(1024, 1048576),
        dream_steps_total=10_000_000,  # batch 1,024: 2,000 steps a call; 1M rollouts: 10
        dream_steps_range=(10, 2000),
        repeats=3,
        min_time_s=0.5,
        cma_generations=2,  # CMA-ES at its full size: 64 × 16 rollouts of 2,100 steps
    ),
)
# Toy sizes for tests/test_device_suite.py (CPU, seconds): checks the harness, not the speed.
TINY = Suite(
    name="tiny",
    bench=dataclasses.replace(harness.TINY, batches=(2,), batched_at=(2,)),
    vae_batches=(2,),
    mdn_batches=(2,),
    peak_sizes=(128,),
    budget_s=600.0,
)
SUITES = {suite.name: suite for suite in (DEVICE, TINY)}


# ---------------------------------------------------------------------------------------------
# Measurements


def dream_row(
    game_name: str,
    batch: int,
    settings: harness.Settings,
    impl: str = "dream",
    peak_gflops: float | None = None,
) -> dict[str, Any]:
    """Dream steps/s of `batch` rollouts of the `game_name` M ("doom" or "car_racing").

    `benchmarks.run`'s dream timing: random weights, `impl` "dream" (the path `wm_jax.es.evolve`
    runs: `vmap` over rollouts of a `lax.scan`) or "batched" (one scan over (batch, ...) arrays),
    compiled ahead (compile_s) and timed as the median of `settings.repeats` repetitions.

    Returns:
      The row: impl, batch, num_steps, steps_per_s, gflops (matmul FLOPs only), median_s,
      compile_s and, with `peak_gflops`, fraction_of_peak.
    """
    game = dream_speed.DREAM_GAMES[game_name]
    model_params, policy_params, initial_mu = dream_speed.dream_weights(game)
    num_steps = dream_speed.steps_for(settings, batch)
    fn = dream_speed.jax_dream_fn(game, batch, num_steps, impl)
    args = (jax.random.key(1), model_params, policy_params, initial_mu)
    compiled, compile_s = harness.compile_jit(fn, *args)
    timing = harness.time_calls(
        lambda: harness.block(compiled(*args)), settings.repeats, settings.min_time_s
    )
    row = dream_speed.dream_row(f"wm_jax:{impl}", batch, num_steps, timing, game.flops)
    row["compile_s"] = compile_s
    if peak_gflops:
        row["fraction_of_peak"] = row["gflops"] / peak_gflops
    return row


def measure_peak(suite: Suite) -> dict[str, Any]:
    """`benchmarks.peak.measure_peak` (with the dream's own matmuls), plus the float32 peak at
    "highest" precision (no TF32) and the bfloat16 peak at the largest size."""
    repeats = 2 * suite.bench.repeats
    shapes = dream_speed.dream_gemm_shapes(suite.bench)
    record = peak.measure_peak(suite.peak_sizes, repeats, shapes)
    size = max(suite.peak_sizes)
    with jax.default_matmul_precision("highest"):
        record["jax_gflops_float32_highest"] = peak.jax_matmul_gflops(size, repeats)
    record["jax_gflops_bfloat16"] = peak.jax_matmul_gflops(size, repeats, jnp.bfloat16)
    record["precision_size"] = size
    record["default_precision"] = "JAX default (TF32 on NVIDIA GPUs with tensor cores)"
    return record


def _cma(settings: harness.Settings) -> dict[str, Any]:
    """`benchmarks.dream_speed.bench_cma` with one BLAS thread, as `wm_jax.es.evolve_loop` runs
    CMA-ES: on a CPU, CMA-ES's eigh in OpenBLAS threads fights XLA's (seconds a generation at
    Doom's size)."""
    with threadpool_limits(1, user_api="blas"):
        return dream_speed.bench_cma(settings) | {"blas_threads": 1}


def _memory_peak_bytes() -> int | None:
    """The device's peak bytes in use so far (None where the backend keeps no statistics)."""
    try:
        stats = jax.local_devices()[0].memory_stats() or {}
    except Exception:  # not every backend implements it
        return None
    return stats.get("peak_bytes_in_use")


def _guarded(record: dict[str, Any], label: str, measure: Callable[[], Any], deadline: float):
    """`measure()`, or None with the error (or the spent budget) in record["errors"/"skipped"]."""
    if time.perf_counter() > deadline:
        record["skipped"].append(label)
        print(f"  {label}: skipped (time budget spent)", file=sys.stderr, flush=True)
        return None
    start = time.perf_counter()
    try:
        return measure()
    except Exception as error:  # one failure (an OOM at 1M rollouts) must not lose the rest
        record["errors"][label] = f"{type(error).__name__}: {str(error)[:500]}"
        print(f"  {label} FAILED: {record['errors'][label]}", file=sys.stderr, flush=True)
        return None
    finally:
        record["seconds"][label] = time.perf_counter() - start


def run(
    suite: Suite,
    out_dir: Path | None = None,
    copy_to: Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Runs every measurement of `suite`, writing the record after each; returns it."""
    machine = peak.machine_info() | {"malloc": runtime.malloc_mode()}  # starts the backend
    start = time.perf_counter()
    deadline = start + suite.budget_s
    date = datetime.date.today().isoformat()
    record: dict[str, Any] = {
        "name": name or f"{peak.machine_slug(machine)}-{date}-{suite.name}",
        "suite": suite.name,
        "machine": machine,
        "settings": dataclasses.asdict(suite),
        "errors": {},
        "skipped": [],
        "seconds": {},
        "complete": False,
    }
    out_dir = Path(out_dir or RESULTS_DIR)
    print(f"device suite: {record['name']} on {machine['jax_devices']}", file=sys.stderr)

    def save() -> None:
        record["total_seconds"] = time.perf_counter() - start
        device_report.write_outputs(record, out_dir, copy_to)

    settings = suite.bench
    record["peak"] = _guarded(record, "peak", lambda: measure_peak(suite), deadline)
    peak_gflops = (record["peak"] or {}).get("peak_gflops")
    if peak_gflops:
        harness.progress("matmul peak GFLOP/s", {"peak_gflops": peak_gflops})
    save()

    record["dream"] = {}
    for game_name in suite.dream_games:
        game = dream_speed.DREAM_GAMES[game_name]
        rows: list[dict[str, Any]] = []
        record["dream"][game_name] = {
            "flops_per_step": game.flops,
            "temperature": game.temperature,
            "rows": rows,
        }
        for batch in settings.batches:
            both = settings.batched_at is None or batch in settings.batched_at
            for impl in ("dream", "batched") if both else ("dream",):
                label = f"dream {game_name} wm_jax:{impl} batch {batch}"

                def measure(game_name=game_name, batch=batch, impl=impl):
                    return dream_row(game_name, batch, settings, impl, peak_gflops)

                row = _guarded(record, label, measure, deadline)
                if row is not None:
                    row["device_peak_bytes_in_use"] = _memory_peak_bytes()
                    rows.append(row)
                    harness.progress(label, row)
                save()

    record["cma"] = _guarded(record, "cma doom generation", lambda: _cma(settings), deadline)
    save()

    training = (
        ("vae", suite.vae_batches, "vae_batch", training_speed.bench_vae),
        ("mdn", suite.mdn_batches, "mdn_batch", training_speed.bench_mdn),
    )
    for name, batches, field, measure in training:  # V's and M's training steps/s per batch
        record[name] = {}
        for batch in batches:
            sized = dataclasses.replace(settings, **{field: batch})
            result = _guarded(
                record, f"{name} batch {batch}", lambda s=sized, f=measure: f(s, None), deadline
            )
            if result is not None:
                record[name][str(batch)] = result
            save()

    # Both implementations of each backend-chosen kernel (wm_jax.core.kernels), at the sizes
    # above: what decides that module's "auto" row for this backend.
    record["kernels"] = {"auto": dataclasses.asdict(kernels.active())}
    choices = (
        ("vae_layers", ("fast", "flax"), training_speed.bench_vae),
        ("lstm", ("fused", "scan"), training_speed.bench_mdn),
    )
    for field, options, measure in choices:
        for option in options:
            with kernels.using(kernels.KernelsConfig(**{field: option})):
                result = _guarded(
                    record,
                    f"kernels {field}={option}",
                    lambda f=measure: f(settings, None),
                    deadline,
                )
            if result is not None:
                record["kernels"][f"{field}={option}"] = result
            save()

    record["complete"] = True
    save()
    return record


def main(argv: list[str] | None = None) -> dict[str, Any]:
    runtime.tune_malloc()  # as the library's entry points do (see wm_jax.core.runtime)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.device_suite", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the harness")
    parser.add_argument("--out-dir", type=Path, default=None, help=f"default {RESULTS_DIR}")
    parser.add_argument("--copy-to", type=Path, default=None, help="also copy the record here")
    parser.add_argument("--name", default=None, help="file stem (default <machine>-<date>-suite)")
    parser.add_argument("--budget-s", type=float, default=None, help="skip what would start later")
    parser.add_argument("--batches", default=None, help="dream batch sizes, e.g. 1,1024,1048576")
    args = parser.parse_args(argv)
    suite = TINY if args.tiny else DEVICE
    if args.budget_s is not None:
        suite = dataclasses.replace(suite, budget_s=args.budget_s)
    if args.batches:
        batches = tuple(int(b) for b in args.batches.split(","))
        suite = dataclasses.replace(suite, bench=dataclasses.replace(suite.bench, batches=batches))
    record = run(suite, args.out_dir, args.copy_to, args.name)
    print("\n".join(device_report.summary_lines(record)))
    print(f"wrote {', '.join(record['files'].values())}")
    return record


if __name__ == "__main__":
    main()
