"""Run a World Models experiment end to end: `python -m wm_jax.experiment doom_take_cover`.

Stages: collect → train_vae → encode → train_mdn_rnn → train_controller → evaluate → report.
Each writes into the run folder and records itself in `DIR/stages/<stage>.json` when complete;
a rerun skips complete stages and resumes interrupted ones from their checkpoints. `--stages`
reruns the stages it names from scratch.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

from wm_jax.core import distributed, kernels, runtime
from wm_jax.core.checkpoint import CheckpointError, atomic_write_json
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import results as results_file
from wm_jax.pipeline import run_folder
from wm_jax.pipeline.cli import add_common_arguments, run_command
from wm_jax.pipeline.presets import expected_wall_time, preset

# Settings that may differ when a run is resumed (they do not change what is computed; the
# publication step runs after every stage and keys its record by C and the episode count).
_RESUMABLE_CHANGES = {
    ("collect", "workers"),
    ("evaluate", "workers"),
    ("evaluate", "publication_episodes"),
}
# The §5 rounds run after the run's own stages: more of them, or other settings for rounds not
# run yet, continue a finished run (a round already run refuses other settings itself).
# `kernels` picks implementations of the same computation (wm_jax.core.kernels).
_RESUMABLE_SECTIONS = {"iterate", "kernels"}


def _settings_help() -> str:
    lines = []
    example = preset("doom_take_cover", "paper")
    for section in cfg.SECTIONS:
        sub = getattr(example, section)
        names = ", ".join(f.name for f in dataclasses.fields(sub))
        lines.append(f"  {section}: {names}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m wm_jax.experiment",
        description="World Models end to end: collect, V, encode, M, C, evaluate, report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=textwrap.dedent(
            f"""\
            experiments: {", ".join(cfg.EXPERIMENTS)}
            scales: smoke (minutes, CI), small (about an hour on a laptop CPU), paper
            stages: {" → ".join(cfg.STAGES)}

            settings (--set section.field=value; every value of a preset: --show-config):
            """
        )
        + _settings_help()
        + "\n\nexample: python -m wm_jax.experiment doom_take_cover --scale small "
        "--set controller.temperature=1.3",
    )
    parser.add_argument("experiment", choices=cfg.EXPERIMENTS)
    parser.add_argument("--scale", choices=cfg.SCALES, default="small")
    parser.add_argument("--run-dir", type=Path, default=None, help="default runs/EXPERIMENT-SCALE")
    parser.add_argument(
        "--stages",
        nargs="+",
        choices=cfg.STAGES,
        default=None,
        help="rerun these stages, and the ones after them, from scratch (default: every stage "
        "not yet complete)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--iterations",
        type=int,
        default=None,
        help="rounds of the paper's iterative training (§5) after the first C (the same as "
        "--set iterate.iterations=N; default: the preset's)",
    )
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print every setting of this experiment and scale (after --set) and exit",
    )
    add_common_arguments(parser)
    distributed.add_arguments(parser)
    return parser.parse_args(argv)


def config_lines(config: cfg.ExperimentConfig) -> list[str]:
    """Every setting as `section.field=value`, the form `--set` takes back."""
    lines = [f"experiment={config.experiment}", f"scale={config.scale}", f"seed={config.seed}"]
    for section in cfg.SECTIONS:
        for name, value in dataclasses.asdict(getattr(config, section)).items():
            text = ",".join(map(str, value)) if isinstance(value, tuple | list) else value
            lines.append(f"{section}.{name}={text}")
    return lines


def _diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    changes = []
    for section in set(old) | set(new):
        a, b = old.get(section), new.get(section)
        if (a is None and isinstance(b, dict)) or section in _RESUMABLE_SECTIONS:
            continue  # a section newer than the run (its defaults), or one that may change
        if isinstance(a, dict) and isinstance(b, dict):
            for name in sorted(set(a) | set(b)):
                if name not in a:  # a setting newer than the run: it takes its default
                    continue
                if a.get(name) != b.get(name) and (section, name) not in _RESUMABLE_CHANGES:
                    changes.append(f"{section}.{name}: {a.get(name)!r} -> {b.get(name)!r}")
        elif a != b:
            changes.append(f"{section}: {a!r} -> {b!r}")
    return changes


def prepare_run_dir(run_dir: Path, config: cfg.ExperimentConfig) -> None:
    """Create the run folder and its config.json, or check a resumed run has the same config."""
    path = run_dir / "config.json"
    if path.is_file():
        changes = _diff(json.loads(path.read_text()), json.loads(json.dumps(config.to_dict())))
        if changes:
            raise cfg.ConfigError(
                f"{path} was written with other settings ({'; '.join(changes)}); resume with "
                "the same settings or choose a new --run-dir"
            )
    if distributed.is_writer():
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, config.to_dict())
    distributed.barrier("run folder prepared")


def build_config(
    experiment: str, scale: str, seed: int, overrides: list[str]
) -> cfg.ExperimentConfig:
    """The preset with the `section.field=value` settings applied.

    Where C trains decides the rest of a preset (CarRacing: the dream, or the paper's real
    game), so `controller.train_in=...` picks the preset before the other settings apply.
    """
    key = "controller.train_in="
    train_in = [item.partition("=")[2].strip() for item in overrides if item.startswith(key)]
    base = preset(experiment, scale, seed, train_in=train_in[-1] if train_in else None)
    return cfg.apply_overrides(base, overrides)


def run(
    experiment: str,
    scale: str = "small",
    run_dir: str | Path | None = None,
    stages: list[str] | None = None,
    overrides: list[str] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run (or resume) an experiment; returns the contents of `DIR/results.json`.

    The run folder is locked for the whole run (`run_folder.RunLock`) and its console output
    goes to `DIR/run.log` too.
    """
    config = build_config(experiment, scale, seed, overrides or [])
    run_dir = Path(run_dir or Path("runs") / f"{experiment}-{scale}")
    several = distributed.process_count() > 1
    if several and config.controller.train_in == "real":
        raise cfg.ConfigError(
            "controller.train_in=real plays the real game on one host: run it without "
            "--num-processes"
        )
    # Process 0 locks the folder and logs into it; the others follow it (wm_jax.core.distributed).
    with run_folder.held(run_dir) if distributed.is_writer() else contextlib.nullcontext():
        wall_time = expected_wall_time(
            experiment, scale, config.iterate.iterations, config.controller.train_in
        )
        where = f" ({distributed.process_count()} processes)" if several else ""
        print(f"{experiment} at scale {scale} in {run_dir}{where}: {wall_time}", flush=True)
        prepare_run_dir(run_dir, config)
        results = run_config(config, run_dir, stages, progress)
        from wm_jax.pipeline import rounds

        # Several processes: each round's new episodes are collected in shares, its M and C
        # trained over every device, its evaluation and the publication run on process 0.
        if config.iterate.iterations:
            results = rounds.run_iterations(config, run_dir, progress)
        if config.evaluate.publication_episodes:
            results = rounds.publish(config, run_dir, results, progress)
        return results


UPSTREAM = results_file.UPSTREAM  # what each stage reads: stale when one of these changed
# Stages with no collective work: with several processes, process 0 runs them alone.
WRITER_STAGES = ("evaluate", "report")


def run_config(
    config: cfg.ExperimentConfig,
    run_dir: Path,
    stages: list[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Run the stages of `config` in a prepared run folder (see `prepare_run_dir`).

    `stages`: rerun these and every stage after them from scratch (each stage reads the
    outputs of the ones before it).
    """
    from wm_jax.pipeline import report
    from wm_jax.pipeline import stages as stage_lib

    kernels.use(config.kernels)  # the backend's implementations unless the config names one
    paths = run_folder.RunPaths(run_dir)
    functions = {
        "collect": stage_lib.collect,
        "train_vae": stage_lib.train_vae,
        "encode": stage_lib.encode,
        "train_mdn_rnn": stage_lib.train_mdn_rnn,
        "train_controller": stage_lib.train_controller,
        "evaluate": stage_lib.evaluate,
        "report": report.make_report,
    }
    first = min((cfg.STAGES.index(stage) for stage in stages or []), default=len(cfg.STAGES))
    writer = distributed.is_writer()  # several processes: process 0 writes the run folder
    if writer:
        run_folder.invalidate(run_dir, cfg.STAGES[first:])
    for stage in cfg.STAGES:
        distributed.barrier(f"before {stage}")  # every process reads the same records
        upstream = UPSTREAM[stage]
        inputs = run_folder.current_inputs(run_dir, upstream)
        if run_folder.is_current(run_dir, stage, upstream):
            print(
                f"[{stage}] complete, skipped ({run_folder.record_path(run_dir, stage)})",
                flush=True,
            )
            continue
        started = run_folder.started_inputs(run_dir, stage)
        stale = run_folder.read_record(run_dir, stage) is not None or (
            started is not None and started != inputs
        )
        distributed.barrier(f"decided {stage}")  # read before process 0 changes them
        if stale:
            # Built (or begun) from other versions of the stages before it: start afresh.
            print(f"[{stage}] stale (an earlier stage was rerun): starting it afresh", flush=True)
            if writer:
                run_folder.invalidate(run_dir, [stage])
        if writer:
            run_folder.mark_started(run_dir, stage, inputs)
        print(f"[{stage}] running", flush=True)
        if not writer and stage in WRITER_STAGES:
            continue  # host-only work (the real game, the report): process 0 does it
        # Time spent by earlier, interrupted attempts at this stage (a Ctrl-C, SIGTERM or an
        # error records it; a SIGKILL cannot), so a resumed stage reports its whole wall time.
        partial = run_folder.record_path(run_dir, stage, "partial")
        earlier = json.loads(partial.read_text())["seconds"] if partial.is_file() else 0.0
        start = time.perf_counter()
        runtime.reset_peak_memory()  # each stage's own peak, not the process's so far
        try:
            summary = functions[stage](config, paths, progress=progress)
        except BaseException as err:
            if writer:
                atomic_write_json(partial, {"seconds": earlier + time.perf_counter() - start})
            if isinstance(err, CheckpointError):
                raise CheckpointError(
                    f"[{stage}] {err}; {run_folder.rebuild_hint(str(err))}"
                ) from err
            raise
        seconds = earlier + time.perf_counter() - start
        print(f"[{stage}] done in {seconds:.1f} s", flush=True)
        if not writer:
            continue
        run_folder.write_record(
            run_dir, stage, summary, seconds, inputs, peak_memory_mb=runtime.peak_memory_mb()
        )
        partial.unlink(missing_ok=True)
        run_folder.record_path(run_dir, stage, "started").unlink(missing_ok=True)
        results_file.write_results(config, run_dir)
    results = results_file.write_results(config, run_dir) if writer else None
    distributed.barrier("stages done")
    return results if writer else json.loads((run_dir / "results.json").read_text())


def main(argv: list[str] | None = None) -> int:
    runtime.tune_malloc()  # before XLA's first allocations
    args = parse_args(argv)
    iterations = [] if args.iterations is None else [f"iterate.iterations={args.iterations}"]
    if args.show_config:

        def show() -> None:
            config = build_config(
                args.experiment, args.scale, args.seed, args.overrides + iterations
            )
            print("\n".join(config_lines(config)))

        try:
            run_command(show)
        except SystemExit as exit_:
            return int(exit_.code)
        return 0
    hint = "rerun the same command to resume"
    if args.stages:
        hint = "rerun without --stages to resume (the same --stages starts those stages over)"
    try:
        results = run_command(
            lambda: run(
                args.experiment,
                args.scale,
                args.run_dir,
                args.stages,
                args.overrides + iterations,
                args.seed,
                progress=not args.no_progress,
            ),
            resume_hint=hint,
        )
    except SystemExit as exit_:
        return int(exit_.code)
    evaluation = results.get("final") or results.get("evaluation") or {}
    if evaluation.get("mean") is not None:
        print(
            f"real-game score over {evaluation.get('episodes')} selection episodes: "
            f"{evaluation.get('mean'):.1f} ± {evaluation.get('std'):.1f}"
        )
    best = results.get("best")
    if best and best["iteration"] != evaluation.get("iteration"):
        print(
            f"best round on these seeds: {best['iteration']} ({best['mean']:.1f} ± "
            f"{best['std']:.1f}), {best['run_dir']}"
        )
    published = results.get("publication")
    if published:
        print(
            f"real-game score of round {published['iteration']} over {published['episodes']} "
            f"held-out publication episodes: {published['mean']:.1f} ± {published['std']:.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
