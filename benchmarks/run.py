"""Speed of wm_jax against eager PyTorch and the paper's NumPy-per-process approach, in one run.

    .venv/bin/python -m benchmarks.run [--quick] [--only dream,cma,vae,mdn,collect,car_racing]

Prints a table and writes, under benchmarks/results/ (or --out-dir), `<machine>-<date>.json` (every
measurement), `<machine>-<date>.md` (ratios against the goals, PASS/MISS) and
`<machine>-<date>-dream.png` (dream steps/s against batch size, log-log); `--quick` and `--only`
runs get a suffix so they never overwrite a full run. Every figure is the median of several
repetitions; compile time is measured and reported apart. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax

from benchmarks import goals, peak, report
from benchmarks.dream_speed import bench_cma, bench_dream, dream_gemm_shapes
from benchmarks.harness import FULL, QUICK, RESULTS_DIR, TINY, Settings, load_torch, progress
from benchmarks.training_speed import bench_mdn, bench_vae
from wm_jax.core import runtime

__all__ = ["FULL", "QUICK", "TINY", "Settings", "main", "run"]

SECTIONS = ("dream", "cma", "vae", "mdn", "collect", "car_racing")


def bench_collect(settings: Settings) -> dict[str, Any]:
    """Random-rollout collection frames/s per game (wm_jax.envs.collect), 1 and all workers."""
    from wm_jax.envs import collect

    out: dict[str, Any] = {}
    all_workers = os.cpu_count() or 1
    for game in ("car_racing", "doom_take_cover"):
        out[game] = {}
        for workers in sorted({1, all_workers}):
            episodes = workers * settings.collect_episodes_per_worker
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    summary = collect.collect(
                        game,
                        tmp,
                        episodes,
                        workers=workers,
                        max_frames=settings.collect_frames,
                        min_frames=0,
                        progress=False,
                    )
                record = {key: summary[key] for key in ("frames", "seconds", "frames_per_s")}
                record["failed"] = len(summary["failed"])
            except Exception as error:  # a game that cannot start is recorded
                record = {"error": f"{type(error).__name__}: {error}"}
            record |= {
                "workers": workers,
                "episodes": episodes,
                "max_frames": settings.collect_frames,
            }
            out[game][f"workers_{workers}"] = record
            progress(f"collect {game} x{workers}", record)
    out["note"] = "includes worker start-up and compressed writes; short episodes in --quick"
    return out


def bench_car_racing(settings: Settings) -> dict[str, Any]:
    """Stock vs fast CarRacing frames/s (benchmarks/car_racing_speed.run), 1 and all workers."""
    try:
        from benchmarks import car_racing_speed
    except ImportError as error:
        return {"skipped": f"benchmarks/car_racing_speed.py not importable: {error}"}
    out: dict[str, Any] = {}
    for workers in sorted({1, os.cpu_count() or 1}):
        try:
            out[f"workers_{workers}"] = car_racing_speed.run(settings.car_racing_steps, workers)
        except Exception as error:  # recorded, the run goes on
            out[f"workers_{workers}"] = {"error": f"{type(error).__name__}: {error}"}
        progress(f"car_racing x{workers}", out[f"workers_{workers}"])
    return out


def run(
    settings: Settings,
    only: tuple[str, ...] = SECTIONS,
    out_dir: Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Runs the chosen sections and writes the JSON, markdown and plot; returns the record."""
    machine = peak.machine_info() | {"malloc": runtime.malloc_mode()}
    tch = load_torch()
    record: dict[str, Any] = {"machine": machine, "settings": dataclasses.asdict(settings)}
    record["name"] = name or _default_name(machine, settings, only)
    record["torch_device"] = None if tch is None else tch.device
    if tch is None:
        record["note"] = "torch not importable: torch figures skipped."
    record["errors"] = {}
    print(f"benchmarks: {record['name']} ({', '.join(only)})", file=sys.stderr, flush=True)
    if "dream" in only:
        record["peak"] = peak.measure_peak(
            settings.peak_sizes, 2 * settings.repeats, dream_gemm_shapes(settings)
        )
        progress("matmul peak GFLOP/s", {"peak_gflops": record["peak"]["peak_gflops"]})
    sections: dict[str, Callable[[], Any]] = {
        "dream": lambda: bench_dream(settings, record["peak"], tch),
        "cma": lambda: bench_cma(settings),
        "vae": lambda: bench_vae(settings, tch),
        "mdn": lambda: bench_mdn(settings, tch),
        "collect": lambda: bench_collect(settings),
        "car_racing": lambda: bench_car_racing(settings),
    }
    for section in SECTIONS:
        if section in only:
            start = time.perf_counter()
            try:
                record[section] = sections[section]()
            except Exception as error:  # one broken section must not lose the rest
                record["errors"][section] = f"{type(error).__name__}: {error}"
                print(f"  {section} FAILED: {record['errors'][section]}", file=sys.stderr)
            record.setdefault("section_seconds", {})[section] = time.perf_counter() - start
    record["main_job"] = goals.main_job()
    record["goals"] = goals.goals(record)
    report.write_outputs(record, out_dir or RESULTS_DIR)
    return record


def _default_name(machine, settings: Settings, only) -> str:
    date = datetime.date.today().isoformat()
    name = f"{peak.machine_slug(machine)}-{date}"
    if settings.name != "full":
        name += f"-{settings.name}"
    if set(only) != set(SECTIONS):
        name += "-" + "+".join(s for s in SECTIONS if s in only)
    return name


def main(argv: list[str] | None = None) -> dict[str, Any]:
    runtime.tune_malloc()  # as the library's entry points do (see wm_jax.core.runtime)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller runs: under 5 min on 2 cores")
    size.add_argument("--tiny", action="store_true", help="smallest form, checks the harness only")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    parser.add_argument("--out-dir", type=Path, default=None, help=f"default {RESULTS_DIR}")
    parser.add_argument("--name", default=None, help="file stem (default <machine>-<date>[-mode])")
    parser.add_argument("--batches", default=None, help="dream batch sizes, e.g. 1,1024,131072")
    parser.add_argument("--cma-steps", type=int, default=None, help="dream steps per CMA rollout")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else QUICK if args.quick else FULL
    if settings is FULL and jax.default_backend() != "cpu":
        settings = dataclasses.replace(settings, batches=(1, 64, 1024, 16384, 131072, 1048576))
    if args.batches:
        settings = dataclasses.replace(
            settings, batches=tuple(int(b) for b in args.batches.split(","))
        )
    if args.cma_steps:
        settings = dataclasses.replace(settings, cma_steps=args.cma_steps)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    record = run(settings, only, args.out_dir, args.name)
    print("\n".join(report.summary_lines(record)))
    print(f"\nwrote {', '.join(record['files'].values())}")
    return record


if __name__ == "__main__":
    main()
