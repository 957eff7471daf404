"""The paper's temperature table from one trained M: `python -m wm_jax.sweep RUN_DIR`.

For each τ, C is trained in the dream of the run's M at that temperature and evaluated in the
dream and in the real game (World Models, Table 2: τ ∈ {0.10, 0.50, 1.00, 1.15, 1.30}). Each τ
gets its own run folder `RUN_DIR/sweep/tau_X/` that shares the parent's data, V and M (links,
not copies) and runs only train_controller → evaluate → report there, so it resumes like any
run. The run's own τ is the run's own row (not retrained). The table
(`RUN_DIR/sweep/temperature_table.md` and `.json`) holds every finished row, earlier
invocations' too, each with the generations its C was evolved for.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from wm_jax.core import links, runtime
from wm_jax.core.checkpoint import atomic_write_json, atomic_write_text
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import experiment, run_folder
from wm_jax.pipeline.cli import add_common_arguments, run_command
from wm_jax.pipeline.report import PAPER_DOOM

TEMPERATURES = (0.10, 0.50, 1.00, 1.15, 1.30)  # World Models, Table 2
SHARED_STAGES = ("collect", "train_vae", "encode", "train_mdn_rnn")
SHARED_PATHS = (
    "data",
    "checkpoints/vae",
    "checkpoints/mdn_rnn",
    "metrics/train_vae.jsonl",
    "metrics/train_mdn_rnn.jsonl",
)


def prepare_tau_run(run_dir: Path, config: cfg.ExperimentConfig, tau: float) -> Path:
    """A run folder for τ whose upstream stages are the parent's (linked, marked complete)."""
    for stage in SHARED_STAGES:
        if not (run_dir / "stages" / f"{stage}.json").is_file():
            raise FileNotFoundError(
                f"{run_dir} has not finished stage {stage}: run the experiment first "
                f"(python -m wm_jax.experiment {config.experiment} --run-dir {run_dir})"
            )
    sub = run_dir / "sweep" / f"tau_{tau:.2f}"
    for name in SHARED_PATHS:
        if (run_dir / name).exists():
            links.symlink(run_dir / name, sub / name)
    for stage in SHARED_STAGES:
        if run_folder.read_record(sub, stage) is None:
            run_folder.adopt_record(run_dir, sub, stage)
    return sub


def sweep(
    run_dir: str | Path,
    temperatures: tuple[float, ...] = TEMPERATURES,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Train and evaluate C at every τ with the run's M; returns the table rows."""
    run_dir = Path(run_dir)
    config = cfg.from_dict(json.loads((run_dir / "config.json").read_text()))
    if config.controller.train_in != "dream":
        raise cfg.ConfigError(
            f"{run_dir} trains C in the real game; a temperature sweep needs "
            "controller.train_in=dream (τ only changes the dream)"
        )
    for tau in temperatures:
        tau_config = cfg.apply_overrides(
            dataclasses.replace(
                config, controller=dataclasses.replace(config.controller, temperature=tau)
            ),
            overrides or [],
        )
        if tau_config == config:
            # The run's own C was trained at this τ with these settings: its row is the run.
            print(f"[sweep] τ = {tau:.2f}: the run's own C ({run_dir})", flush=True)
            continue
        sub = prepare_tau_run(run_dir, tau_config, tau)
        experiment.prepare_run_dir(sub, tau_config)
        print(f"[sweep] τ = {tau:.2f} in {sub}", flush=True)
        experiment.run_config(tau_config, sub, progress=progress)
        write_table(run_dir / "sweep", table_rows(run_dir))
    rows = table_rows(run_dir)
    write_table(run_dir / "sweep", rows)
    return [
        row for row in rows if round(row["temperature"], 2) in {round(t, 2) for t in temperatures}
    ]


def _row(run: Path, source: str) -> dict[str, Any] | None:
    """One table row from a finished run folder (None while its evaluation is missing)."""
    results_path = run / "results.json"
    if not results_path.is_file():
        return None
    evaluation = json.loads(results_path.read_text()).get("evaluation")
    if not evaluation:
        return None
    config = json.loads((run / "config.json").read_text())
    return {
        "temperature": config["controller"]["temperature"],
        "generations": config["controller"]["generations"],
        "source": source,
        "dream": evaluation.get("dream"),
        "real": {k: evaluation[k] for k in ("mean", "std", "episodes")},
    }


def table_rows(run_dir: Path) -> list[dict[str, Any]]:
    """Every finished row: the run itself and each `sweep/tau_*` run, sorted by τ.

    Rows from earlier invocations stay in the table, each with the number of generations its
    C was evolved for, so rows evolved differently are never silently compared.
    """
    rows = [_row(run_dir, ".")]
    for sub in sorted((run_dir / "sweep").glob("tau_*")):
        rows.append(_row(sub, f"sweep/{sub.name}"))
    rows = [row for row in rows if row is not None]
    return sorted(rows, key=lambda row: (row["temperature"], row["source"]))


def write_table(out_dir: Path, rows: list[dict[str, Any]]) -> str:
    """The paper's Table 2 with our numbers beside it (markdown and JSON)."""
    lines = [
        "| τ | C's generations | score in dream (ours) | real game (ours) | dream (paper) "
        "| real game (paper) | run |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        tau, dream, real = row["temperature"], row["dream"], row["real"]
        paper = PAPER_DOOM.get(round(tau, 2), ("—", "—"))
        dream_text = f"{dream['mean']:.0f} ± {dream['std']:.0f}" if dream else "—"
        real_text = f"{real['mean']:.0f} ± {real['std']:.0f} (n={real['episodes']})"
        lines.append(
            f"| {tau:.2f} | {row.get('generations', '—')} | {dream_text} | {real_text} "
            f"| {paper[0]} | {paper[1]} | {row.get('source', '—')} |"
        )
    table = "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "temperature_table.md", table)
    atomic_write_json(out_dir / "temperature_table.json", rows)
    return table


def main(argv: list[str] | None = None) -> int:
    runtime.tune_malloc()  # before XLA's first allocations
    parser = argparse.ArgumentParser(
        prog="python -m wm_jax.sweep",
        description="Fill the paper's temperature table (Doom) from one trained M.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished doom_take_cover run folder")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    add_common_arguments(parser, "e.g. controller.generations=20 (every τ's C)")
    args = parser.parse_args(argv)

    def work() -> list[dict[str, Any]]:
        with run_folder.held(args.run_dir, create=False):
            progress = not args.no_progress
            return sweep(args.run_dir, tuple(args.temperatures), args.overrides, progress)

    run_command(work, errors=(FileNotFoundError,))
    print((args.run_dir / "sweep" / "temperature_table.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
