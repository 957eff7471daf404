"""The table of World Models §5 rounds (`wm_jax.pipeline.iterative`): one row per round from its
run folder's stage records, the best round on the evaluation's seeds, and
`RUN_DIR/iterations/summary.md` and `.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wm_jax.core.checkpoint import atomic_write_json, atomic_write_text
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
