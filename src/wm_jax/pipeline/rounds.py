"""World Models §5 rounds after an experiment's first C (`wm_jax.pipeline.iterative`): their
table (one row per round from its run folder's stage records, `RUN_DIR/iterations/summary.md`
and `.json`), the best round on the evaluation's (selection) seeds, and that round's C on the
publication seeds."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wm_jax.core import distributed
from wm_jax.core.checkpoint import atomic_write_json, atomic_write_text
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import run_folder

# The stages a round's parent must have finished, and that every row reads.
PARENT_STAGES = ("collect", "train_vae", "encode", "train_mdn_rnn", "train_controller", "evaluate")


def round_row(run_dir: Path, iteration: int) -> dict[str, Any]:
    """One summary row from a finished run folder's stage markers."""
    records = {stage: run_folder.require_record(run_dir, stage) for stage in PARENT_STAGES}
    summaries = {stage: record["summary"] for stage, record in records.items()}
    evaluation = summaries["evaluate"]
    return {
        "iteration": iteration,
        "run_dir": str(run_dir),
        "episodes": summaries["collect"]["episodes"],
        "frames": summaries["collect"].get("frames"),
        "m_steps": summaries["train_mdn_rnn"]["steps"],
        "m_final_loss": (summaries["train_mdn_rnn"].get("final_loss") or {}).get("loss"),
        "dream": evaluation.get("dream"),
        "real": {k: evaluation[k] for k in ("mean", "std", "episodes")},
    }


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The round whose C scored best in the real game, on the evaluation's (selection) seeds.

    A later round is not always better: each re-evolves C, a noisy draw of its own (CarRacing,
    experiments/README.md: 670 ± 160 after one round, 342 ± 199 after the next). Choosing
    among rounds on the selection seeds keeps the publication seeds for the chosen C alone.
    """
    return max(rows, key=lambda row: (row["real"]["mean"], -row["iteration"]))


def write_summary(out_dir: Path, rows: list[dict[str, Any]]) -> str:
    """Per iteration: episodes, M's final loss, dream and real-game scores (markdown and JSON),
    and the best round (`best_row`)."""
    lines = [
        "| iteration | episodes | M steps | M final loss | score in dream | real game |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        name = "0 (parent)" if row["iteration"] == 0 else str(row["iteration"])
        loss = f"{row['m_final_loss']:.4f}" if row["m_final_loss"] is not None else "—"
        dream, real = row["dream"], row["real"]
        dream_text = f"{dream['mean']:.0f} ± {dream['std']:.0f}" if dream else "—"
        real_text = f"{real['mean']:.0f} ± {real['std']:.0f} (n={real['episodes']})"
        lines.append(
            f"| {name} | {row['episodes']} | {row['m_steps']} | {loss} | {dream_text} | "
            f"{real_text} |"
        )
    best = best_row(rows)
    lines.append(
        f"\nBest real-game score on these seeds: round {best['iteration']} "
        f"({best['real']['mean']:.0f} ± {best['real']['std']:.0f}), `{best['run_dir']}`."
    )
    table = "\n".join(lines) + "\n"
    atomic_write_text(out_dir / "summary.md", table)
    atomic_write_json(out_dir / "summary.json", rows)
    return table


def _shared(results_path: Path, results: dict) -> dict:
    """Process 0's `results` on every process, once it has written them (several processes)."""
    distributed.barrier(f"wrote {results_path}")
    return results if distributed.is_writer() else json.loads(results_path.read_text())


def publish(config: cfg.ExperimentConfig, run_dir: Path, results: dict, progress: bool) -> dict:
    """The chosen C (the best round on the selection seeds, or the run's only C) on
    `evaluate.publication_episodes` publication seeds, once every choice is made; the record
    goes to `DIR/publication/` and results.json (`publication`). Several processes: process 0
    plays the real game (host work, like the evaluate stage), the others wait."""
    from wm_jax.pipeline import evaluate

    if not distributed.is_writer():
        return _shared(run_dir / "results.json", results)

    best = results.get("best") or {}  # no §5 rounds: the run's own C
    chosen = Path(best.get("run_dir") or run_dir)
    episodes = config.evaluate.publication_episodes
    print(f"[publication] {chosen}: {episodes} publication episodes", flush=True)
    record = evaluate.measure_agent(
        chosen,
        episodes,
        evaluate.PUBLICATION_SEED_OFFSET,
        "publication",
        workers=config.evaluate.workers,
        out=run_dir / "publication" / f"seeds-{evaluate.PUBLICATION_SEED_OFFSET}-{episodes}.json",
        max_steps=config.evaluate.max_steps or None,
        progress=progress,
    )
    results["publication"] = {
        "iteration": best.get("iteration", 0),
        **{k: record[k] for k in ("agent", "mean", "std", "episodes", "first_seed", "seconds")},
    }
    atomic_write_json(run_dir / "results.json", results)
    return _shared(run_dir / "results.json", results)


def run_iterations(config: cfg.ExperimentConfig, run_dir: Path, progress: bool) -> dict:
    """World Models §5 on the finished run (`config.iterate`); the rows of each iteration's
    dream and real scores go into results.json (`iterations`), the last one is `final`, the
    best one on the evaluation's seeds `best` (`best_row`)."""
    from wm_jax.pipeline import iterative

    settings = config.iterate
    rows = iterative.run(
        run_dir,
        settings.iterations,
        settings.episodes or None,
        settings.noise,
        list(settings.overrides),
        warm_start=not settings.fresh_controller,
        progress=progress,
    )
    results: dict[str, Any] = {}  # the others read process 0's once written (`_shared`)
    if distributed.is_writer():
        results = json.loads((run_dir / "results.json").read_text())
        print(write_summary(run_dir / "iterations", rows), flush=True)
        results["iterations"] = rows
        results["final"] = {"iteration": rows[-1]["iteration"], **rows[-1]["real"]}
        best = best_row(rows)
        results["best"] = {
            "iteration": best["iteration"],
            "run_dir": best["run_dir"],
            **best["real"],
        }
        atomic_write_json(run_dir / "results.json", results)
    return _shared(run_dir / "results.json", results)
