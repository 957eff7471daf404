"""The benchmark goals (issues 16 and 17) read from a `benchmarks.run` record: each one's
measurement and PASS / MISS / not measured; and the committed Doom main job's wall time and peak
memory."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

GOAL_BATCH = 1024  # the dream goals are stated at 1,024 rollouts (one CMA-ES generation)
GPU_GOAL_STEPS_PER_S = 50e6  # CarRacing-sized dream steps/s on one H100/H200 (issue 16)
GPU_GOAL_CMA_S = 0.1  # one Doom CMA-ES generation, 64 × 16 × 2,100 steps, on one H100/H200
MAIN_JOB_GOAL_S = 45 * 60  # README command 1, fresh clone to a solved Doom agent, 2 CPU cores
MAIN_JOB_GOAL_MB = 6 * 1024  # its peak resident memory
# The committed end-to-end run of README command 1 that the main-job goals read.
MAIN_JOB_RUN = Path(__file__).resolve().parents[1] / (
    "experiments/results/doom_take_cover/small-main-252fdd4-seed0"
)


def _goal(
    name: str, measured, target: float, unit: str, detail: str = "", at_most: bool = False
) -> dict[str, Any]:
    if measured is None:
        passed = None
    else:
        passed = bool(measured <= target) if at_most else bool(measured >= target)
    return {
        "goal": name,
        "measured": measured,
        "target": target,
        "unit": unit,
        "pass": passed,
        "detail": detail,
        "at_most": at_most,
    }


def main_job(run_dir: Path = MAIN_JOB_RUN) -> dict[str, Any] | None:
    """Wall time and peak memory of a committed `doom_take_cover --scale small` run folder: every
    stage of the first C, of each §5 round (its linked V excluded: it is the first C's) and the
    publication step, from the results.json files the run wrote. None if it is not there."""
    root = Path(run_dir) / "results.json"
    if not root.is_file():
        return None
    first = json.loads(root.read_text())
    stages = {f"first C {k}": v for k, v in first["wall_time_s"].items()}
    peaks = [first.get("peak_memory_mb_overall") or 0.0]
    for path in sorted((Path(run_dir) / "iterations").glob("iter_*/results.json")):
        rnd = json.loads(path.read_text())
        for stage, seconds in rnd["wall_time_s"].items():
            if stage != "train_vae":
                stages[f"{path.parent.name} {stage}"] = seconds
        peaks.append(rnd.get("peak_memory_mb_overall") or 0.0)
    if first.get("publication"):
        stages["publication"] = first["publication"]["seconds"]
    return {
        "run": str(Path(run_dir).relative_to(MAIN_JOB_RUN.parents[3]))
        if Path(run_dir).is_relative_to(MAIN_JOB_RUN.parents[3])
        else str(run_dir),
        "wall_time_s": sum(stages.values()),
        "stage_seconds": stages,
        "peak_memory_mb": max(peaks),
        "publication": first.get("publication"),
        "machine": first.get("machine"),
        "cpus": first.get("cpus"),
    }


def find_row(rows: list[dict], impl: str, batch: int) -> dict | None:
    return next((r for r in rows if r["impl"] == impl and r["batch"] == batch), None)


def ratio(a: dict | None, b: dict | None, key: str) -> float | None:
    if a is None or b is None or key not in a or key not in b:
        return None
    return a[key] / b[key]


def goals(record: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal's measurement and PASS (True) / MISS (False) / not measured (None)."""
    out = []
    doom = record.get("dream", {}).get("doom")
    if doom is not None:
        ours = find_row(doom["rows"], "wm_jax:dream", GOAL_BATCH)
        # The faster torch setting (every core, or one thread) is the reference.
        torch_rows = [r for r in doom["rows"] if r["impl"].startswith("torch_eager")]
        torch_row = max(
            (r for r in torch_rows if r["batch"] == GOAL_BATCH),
            key=lambda r: r["steps_per_s"],
            default=None,
        )
        prefix = f"Dream, Doom-sized, batch {GOAL_BATCH}:"
        out.append(
            _goal(
                f"{prefix} steps/s vs eager PyTorch",
                ratio(ours, torch_row, "steps_per_s"),
                1.7,
                "×",
                f"{torch_row['impl']}, {torch_row['torch_threads']} threads" if torch_row else "",
            )
        )
        out.append(
            _goal(
                f"{prefix} fraction of measured matmul peak",
                ours and ours["fraction_of_peak"],
                0.85,
                "of peak",
            )
        )
        out.append(
            _goal(
                f"{prefix} steps/s vs NumPy, 1 rollout/process on every core",
                ratio(ours, doom["numpy"], "steps_per_s"),
                5.0,
                "×",
            )
        )
    vae = record.get("vae")
    if vae is not None:
        out.append(
            _goal(
                "V training images/s vs eager PyTorch",
                ratio(vae["wm_jax"], vae.get("torch_eager"), "images_per_s"),
                1.0,
                "×",
                f"batch {vae['batch']}, torch {vae.get('torch_eager', {}).get('torch_threads')} "
                "threads",
            )
        )
    for game, mdn in record.get("mdn", {}).items():
        threads = mdn.get("torch_eager", {}).get("torch_threads")
        detail = f"batch {mdn['batch']}, seq {mdn['seq_len']}"
        if mdn["seq_len"] != mdn["paper_seq_len"]:
            detail += f" (paper {mdn['paper_seq_len']})"
        detail += f", torch {threads} threads"
        out.append(
            _goal(
                f"M training timesteps/s vs eager PyTorch, {game}",
                ratio(mdn["wm_jax"], mdn.get("torch_eager"), "timesteps_per_s"),
                1.5,
                "×",
                detail,
            )
        )
    for name, game in record.get("dream", {}).items():
        # Issue 17: the rollout path (chunked loop, done bookkeeping) must cost nothing over one
        # plain lax.scan of the same step, at every batch; the worst batch is the measure.
        pairs = [
            (
                r["batch"],
                ratio(r, find_row(game["rows"], "wm_jax:batched", r["batch"]), "steps_per_s"),
            )
            for r in game["rows"]
            if r["impl"] == "wm_jax:dream"
        ]
        pairs = [(b, x) for b, x in pairs if x is not None]
        if pairs:
            batch, worst = min(pairs, key=lambda p: p[1])
            out.append(
                _goal(
                    f"Dream, {name}-sized: rollout path vs a plain lax.scan of the same step, "
                    "worst batch",
                    worst,
                    1.0,
                    "×",
                    f"batch {batch}; batches {', '.join(str(b) for b, _ in pairs)}",
                )
            )
    fast = record.get("car_racing", {}).get("workers_1")
    if fast is not None and "cpu_ratio" in fast:
        out.append(
            _goal(
                "Fast CarRacing vs gymnasium's, per core",
                fast["cpu_ratio"],
                3.0,
                "×",
                f"1 worker, {fast['steps']} steps",
            )
        )
    job = record.get("main_job")
    if job is not None:
        detail = f"{job['run']}, {job['cpus']} CPUs; not timed by this benchmark run"
        out.append(
            _goal(
                "Doom main job (README command 1), fresh clone to a solved agent",
                job["wall_time_s"] / 60,
                MAIN_JOB_GOAL_S / 60,
                "min",
                detail,
                at_most=True,
            )
        )
        out.append(
            _goal(
                "Doom main job: peak resident memory",
                job["peak_memory_mb"] / 1024,
                MAIN_JOB_GOAL_MB / 1024,
                "GB",
                job["run"],
                at_most=True,
            )
        )
    cma = record.get("cma")
    gpu = record["machine"]["jax_backend"] == "gpu"
    if cma is not None and "seconds_per_generation_at_2100_steps" in cma and gpu:
        out.append(
            _goal(
                "GPU: one Doom CMA-ES generation, 64 × 16 × 2,100 steps",
                cma["seconds_per_generation_at_2100_steps"],
                GPU_GOAL_CMA_S,
                "s",
                f"measured at {cma['max_steps']} steps, scaled",
                at_most=True,
            )
        )
    car = record.get("dream", {}).get("car_racing")
    if car is not None and gpu:
        ours = [r for r in car["rows"] if r["impl"].startswith("wm_jax")]
        best = max(ours, key=lambda r: r["steps_per_s"])
        out.append(
            _goal(
                "GPU: CarRacing-sized dream steps/s",
                best["steps_per_s"],
                GPU_GOAL_STEPS_PER_S,
                "steps/s",
                f"batch {best['batch']}",
            )
        )
    return out
