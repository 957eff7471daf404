"""Steps/s of stock gymnasium CarRacing-v3 against `FastCarRacing`, one process and one per core.

Each worker is a fresh process holding one environment (as the World Models rollout workers
did); all workers of a run build and reset their environment, wait at a barrier, then time
`steps` steps of the same random actions (resets after an episode end included). The
aggregate rate is all workers' steps over the slowest worker's time.

    .venv/bin/python -m benchmarks.car_racing_speed [--steps 500] [--workers N] [--rounds 3]

Without --workers it measures 1 worker and os.cpu_count() workers. `run(steps, workers)` returns
one measurement as a dict, for benchmarks/run.py.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from typing import Any

import numpy as np

KINDS = ("stock", "fast")


def _make_env(kind: str):
    if kind == "stock":
        from gymnasium.envs.box2d.car_racing import CarRacing

        return CarRacing()
    from wm_jax.envs.car_racing_fast import FastCarRacing

    return FastCarRacing()


def _random_actions(seed: int, steps: int) -> np.ndarray:
    """(steps, 3) float32 (steer, gas, brake): uniform steering, mostly gas, light braking."""
    rng = np.random.default_rng(seed)
    return rng.uniform([-1.0, 0.0, 0.0], [1.0, 1.0, 0.2], size=(steps, 3)).astype(np.float32)


def _worker(kind: str, seed: int, steps: int, barrier, results) -> None:
    """Builds one env, waits for the other workers, then times `steps` steps."""
    try:
        env = _make_env(kind)
        env.reset(seed=seed)
        actions = _random_actions(seed, steps)
        barrier.wait()
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        for action in actions:
            _, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                env.reset()
        results.put(
            (seed, steps, time.perf_counter() - start_wall, time.process_time() - start_cpu, None)
        )
    except Exception as error:  # reported to the parent, which raises
        barrier.abort()
        results.put((seed, 0, 0.0, 0.0, f"{type(error).__name__}: {error}"))


def measure(kind: str, steps: int, workers: int) -> dict[str, float]:
    """Aggregate and per-worker steps/s of `workers` processes, one `kind` env each."""
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(workers)
    results = context.Queue()
    processes = [
        context.Process(target=_worker, args=(kind, seed, steps, barrier, results))
        for seed in range(workers)
    ]
    for process in processes:
        process.start()
    rows = [results.get() for _ in processes]
    for process in processes:
        process.join()
    errors = [row[4] for row in rows if row[4] is not None]
    if errors:
        raise RuntimeError(f"{kind} worker failed: {errors[0]}")
    wall = max(row[2] for row in rows)
    return {
        "steps_per_s": sum(row[1] for row in rows) / wall,
        "steps_per_s_per_worker": float(np.mean([row[1] / row[2] for row in rows])),
        "steps_per_cpu_s_per_worker": float(np.mean([row[1] / row[3] for row in rows])),
    }


def run(steps: int = 500, workers: int | None = None, rounds: int = 1) -> dict[str, Any]:
    """Stock and fast CarRacing steps/s with `workers` processes (None: one per core).

    Args:
        steps: timed steps per worker.
        workers: processes, one environment each; None: os.cpu_count().
        rounds: stock-then-fast measurements; each rate is the median over rounds, which
            evens out other load on a shared machine.

    Returns:
        {"workers", "steps", "stock_steps_per_s", "fast_steps_per_s", "ratio", ...}; rates are
        aggregates over workers; "ratio" is fast / stock; "*_per_cpu_s" rates use each worker's
        CPU time, which is steadier than wall time on a shared machine.
    """
    workers = workers or os.cpu_count() or 1
    record: dict[str, Any] = {"workers": workers, "steps": steps, "rounds": rounds}
    results = {kind: [] for kind in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            results[kind].append(measure(kind, steps, workers))
    for kind in KINDS:
        median = {
            key: float(np.median([r[key] for r in results[kind]])) for key in results[kind][0]
        }
        record[f"{kind}_steps_per_s"] = median["steps_per_s"]
        record[f"{kind}_steps_per_s_per_worker"] = median["steps_per_s_per_worker"]
        record[f"{kind}_steps_per_cpu_s"] = median["steps_per_cpu_s_per_worker"]
    record["ratio"] = record["fast_steps_per_s"] / record["stock_steps_per_s"]
    record["cpu_ratio"] = record["fast_steps_per_cpu_s"] / record["stock_steps_per_cpu_s"]
    record["frames_per_s"] = record["fast_steps_per_s"]  # the figure benchmarks/run.py shows
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=500, help="timed steps per worker")
    parser.add_argument(
        "--workers", type=int, default=None, help="processes (default: 1, then one per core)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="medians over this many runs")
    args = parser.parse_args()
    counts = [args.workers] if args.workers else sorted({1, os.cpu_count() or 1})
    for workers in counts:
        record = run(args.steps, workers, args.rounds)
        print(
            f"{workers} worker(s) x {args.steps} steps, median of {args.rounds}: "
            f"stock {record['stock_steps_per_s']:.0f} steps/s, "
            f"fast {record['fast_steps_per_s']:.0f} steps/s, ratio {record['ratio']:.2f}x "
            f"(per CPU second per worker: stock {record['stock_steps_per_cpu_s']:.0f}, "
            f"fast {record['fast_steps_per_cpu_s']:.0f}, ratio {record['cpu_ratio']:.2f}x)",
            flush=True,
        )


if __name__ == "__main__":
    main()
