"""The record of one `benchmarks.device_suite` run: its markdown (the machine, then one table per
measurement) and its atomic writes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from benchmarks import report
from wm_jax.core import checkpoint


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The markdown of a suite record: the machine, then one table per measurement."""
    fmt = report.fmt
    machine = record["machine"]
    lines = [
        f"# wm_jax device suite: {record['name']}",
        "",
        f"{', '.join(machine['jax_devices'])}; jax {machine['jax']}; {machine['cpu_model']} "
        f"({machine['cores_usable']} cores); {machine['date']}; "
        f"{fmt(record.get('total_seconds'))} s in all"
        + ("" if record["complete"] else " (**incomplete**: the call ended early)"),
        "",
    ]
    peak_record = record.get("peak")
    if peak_record:
        lines += ["## Matmul peak (GFLOP/s)", ""]
        lines += report.table(
            ["float32, default precision", "float32, highest", "bfloat16", "used as the peak"],
            [
                [
                    peak_record["jax_gflops"],
                    peak_record.get("jax_gflops_float32_highest"),
                    peak_record.get("jax_gflops_bfloat16"),
                    peak_record["peak_gflops"],
                ]
            ],
        )
        lines.append("")
    for game_name, game in (record.get("dream") or {}).items():
        lines += [
            f"## Dream steps/s, {game_name}-sized M "
            f"({fmt(game['flops_per_step']['total'])} matmul FLOPs a step)",
            "",
        ]
        header = ["impl", "batch", "steps/call", "steps/s", "GFLOP/s", "of peak", "compile s"]
        rows = [
            [
                row["impl"],
                row["batch"],
                row["num_steps"],
                row["steps_per_s"],
                row["gflops"],
                row.get("fraction_of_peak"),
                row["compile_s"],
            ]
            for row in game["rows"]
        ]
        lines += report.table(header, rows) + [""]
    cma = record.get("cma")
    if cma:
        lines += [
            "## One CMA-ES generation in the Doom dream",
            "",
            f"{cma['population']} × {cma['rollouts_per_member']} rollouts × {cma['max_steps']} "
            f"steps: **{fmt(cma['seconds_per_generation'])} s** "
            f"({fmt(cma['dream_steps_per_s'])} dream steps/s; compile {fmt(cma['compile_s'])} s; "
            f"the paper: about {fmt(cma['paper_seconds_per_generation'])} s on 64 cores).",
            "",
        ]
    if record.get("vae"):
        lines += ["## V training (Adam)", ""]
        rows = [
            [batch, r["wm_jax"]["images_per_s"], r["wm_jax"]["median_s"], r["wm_jax"]["compile_s"]]
            for batch, r in record["vae"].items()
        ]
        lines += report.table(["batch", "images/s", "s/step", "compile s"], rows) + [""]
    if record.get("mdn"):
        lines += ["## M training (Adam, teacher forcing)", ""]
        rows = [
            [
                game,
                batch,
                r["seq_len"],
                r["wm_jax"]["timesteps_per_s"],
                r["wm_jax"]["median_s"],
                r["wm_jax"]["compile_s"],
            ]
            for batch, games in record["mdn"].items()
            for game, r in games.items()
        ]
        header = ["game", "batch", "seq len", "timesteps/s", "s/step", "compile s"]
        lines += report.table(header, rows) + [""]
    chosen = record.get("kernels") or {}
    if len(chosen) > 1:
        lines += [
            "## Kernel choices (wm_jax.core.kernels)",
            "",
            f'"auto" on this backend: {chosen["auto"]}.',
            "",
        ]
        rows = []
        for choice, r in chosen.items():
            if choice.startswith("vae_layers="):
                rows.append([choice, "V", f"{fmt(r['wm_jax']['images_per_s'])} images/s"])
            elif choice.startswith("lstm="):
                rows += [
                    [choice, f"M {game}", f"{fmt(g['wm_jax']['timesteps_per_s'])} timesteps/s"]
                    for game, g in r.items()
                ]
        lines += report.table(["choice", "training", "rate"], rows) + [""]
    if record["errors"] or record["skipped"]:
        lines += ["## Failed or skipped", ""]
        lines += [f"- {label}: {error}" for label, error in record["errors"].items()]
        lines += [f"- {label}: skipped, time budget spent" for label in record["skipped"]]
        lines.append("")
    return lines


def write_outputs(
    record: dict[str, Any], out_dir: Path, copy_to: Path | None = None
) -> dict[str, Path]:
    """<name>.json and <name>.md in `out_dir` (atomically), and copies in `copy_to`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{record['name']}.json", "md": out_dir / f"{record['name']}.md"}
    record["files"] = {key: str(path) for key, path in paths.items()}
    checkpoint.atomic_write_json(paths["json"], record)
    checkpoint.atomic_write_text(paths["md"], "\n".join(summary_lines(record)))
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        for path in paths.values():
            shutil.copyfile(path, copy_to / path.name)
    return paths
