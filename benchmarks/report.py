"""The markdown summary and the dream plot of a `benchmarks.run` record; atomic writes."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from benchmarks.goals import ratio
from wm_jax.core import checkpoint


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if value == 0 or 1e-2 <= abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(fmt(cell) for cell in row) + " |" for row in rows]


def _machine_line(record: dict[str, Any]) -> str:
    m = record["machine"]
    torch = m["torch"] or "not importable (every torch figure skipped)"
    return (
        f"Machine: {m['cpu_model']}, {m['cores_usable']} cores usable ({m['cpu_count']} "
        f"CPUs); JAX {m['jax']} on {', '.join(m['jax_devices'])}; torch {torch}; NumPy "
        f"{m['numpy']}; Python {m['python']}. Load average (1, 5, 15 min) at the start: "
        f"{[round(x, 2) for x in m.get('load_average_1_5_15', [])]}; malloc "
        f"{m.get('malloc', 'default')} (`wm_jax.core.runtime`). Settings: "
        f"`{record['settings']['name']}`. {record.get('note', '')}"
    )


def _dream_lines(name: str, game: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"## Dream, {name}-sized",
        "",
        f"One step = controller + M's LSTM step + MDN head + sampling at τ "
        f"{game['temperature']}: {game['flops_per_step']['total']:,} matmul FLOP "
        f"({game['flops_formula']}). Steps/s = rollouts × steps per call / median seconds "
        "per call.",
        "",
    ]
    rows = [
        [
            r["impl"],
            r["batch"],
            r["num_steps"],
            r["steps_per_s"],
            r["gflops"],
            f"{r['fraction_of_peak']:.1%}",
            r.get("compile_s"),
        ]
        for r in game["rows"]
    ]
    n = game["numpy"]
    rows.append(
        [
            f"numpy, 1 rollout/process × {n['workers']}",
            n["workers"],
            n["rollout_steps"],
            n["steps_per_s"],
            n["gflops"],
            f"{n['fraction_of_peak']:.1%}",
            None,
        ]
    )
    header = ["impl", "batch", "steps/call", "steps/s", "GFLOP/s", "of peak", "compile s"]
    lines += table(header, rows)
    g = game.get("gemm_breakdown")
    if g is not None:
        lines += [
            "",
            f"The two matmuls alone at batch {g['batch']}: LSTM {g['lstm_gemm']} "
            f"{g['lstm_gemm_gflops']:.1f} GFLOP/s, head {g['head_gemm']} "
            f"{g['head_gemm_gflops']:.1f} GFLOP/s: at most "
            f"{fmt(g['matmul_only_steps_per_s'])} steps/s if nothing else ran.",
        ]
    return lines


def summary_lines(record: dict[str, Any]) -> list[str]:
    """The markdown summary (also printed at the end of a run)."""
    lines = [f"# wm_jax benchmarks: {record['name']}", "", _machine_line(record)]
    if "peak" in record:
        p = record["peak"]
        tried = [f"{k}²: {v:.1f}" for k, v in p["jax_gflops_by_size"].items()]
        tried += [
            f"{name} {'×'.join(map(str, p['gemm_shapes'][name]))}: {v:.1f}"
            for name, v in p.get("gemm_gflops", {}).items()
        ]
        lines += [
            "",
            f"Matmul peak measured in this run (float32): **{p['peak_gflops']:.1f} "
            f"GFLOP/s**, the best jit(jnp.dot) of {', '.join(tried)}; NumPy "
            f"{fmt(p['numpy_cpu_gflops'])}, torch {fmt(p['torch_cpu_gflops'])} GFLOP/s "
            f"at {p['cpu_reference_size']}² on the CPU.",
        ]
    lines += ["", "## Goals", ""]
    lines += table(
        ["goal", "measured", "target", "result"],
        [
            [
                g["goal"] + (f" ({g['detail']})" if g["detail"] else ""),
                g["measured"],
                f"{'≤' if g.get('at_most') else '≥'} {fmt(g['target'])} {g['unit']}",
                {True: "PASS", False: "MISS", None: "not measured"}[g["pass"]],
            ]
            for g in record["goals"]
        ],
    )
    for name, game in record.get("dream", {}).items():
        lines += _dream_lines(name, game)
    if "cma" in record:
        c = record["cma"]
        lines += [
            "",
            "## One CMA-ES generation in the Doom dream",
            "",
            f"Population {c['population']} × {c['rollouts_per_member']} rollouts × "
            f"{c['max_steps']} steps (done head off: every rollout runs to the cap): "
            f"**{fmt(c['seconds_per_generation'])} s/generation**, "
            f"{fmt(c['dream_steps_per_s'])} steps/s, compile {fmt(c['compile_s'])} s; "
            f"≈ {fmt(c['seconds_per_generation_at_2100_steps'])} s at 2,100 steps. Paper: "
            f"≈ {c['paper_seconds_per_generation']:.0f} s/generation (1,800 in 54 h).",
        ]
    train_rows = []
    if "vae" in record:
        v = record["vae"]
        train_rows.append(
            [
                "V (images/s)",
                f"{v['batch']} frames",
                v["wm_jax"]["images_per_s"],
                v.get("torch_eager", {}).get("images_per_s"),
                ratio(v["wm_jax"], v.get("torch_eager"), "images_per_s"),
                v["wm_jax"]["compile_s"],
            ]
        )
    for game, m in record.get("mdn", {}).items():
        train_rows.append(
            [
                f"M {game} (timesteps/s)",
                f"{m['batch']} × {m['seq_len']}",
                m["wm_jax"]["timesteps_per_s"],
                m.get("torch_eager", {}).get("timesteps_per_s"),
                ratio(m["wm_jax"], m.get("torch_eager"), "timesteps_per_s"),
                m["wm_jax"]["compile_s"],
            ]
        )
    if train_rows:
        lines += ["", "## Training (one Adam step per call)", ""]
        lines += table(
            ["model", "batch", "wm_jax", "eager torch", "ratio", "compile s"], train_rows
        )
    if "collect" in record:
        lines += [
            "",
            "## Real-game random-rollout collection (frames/s)",
            "",
            record["collect"].get("note", ""),
            "",
        ]
        rows = [
            [
                game,
                key.removeprefix("workers_"),
                r.get("frames_per_s"),
                r.get("frames"),
                r.get("error", ""),
            ]
            for game, runs in record["collect"].items()
            if isinstance(runs, dict)
            for key, r in runs.items()
        ]
        lines += table(["game", "workers", "frames/s", "frames", "error"], rows)
    if "car_racing" in record:
        lines += [
            "",
            "## CarRacing, stock vs fast renderer",
            "",
            "```",
            _compact(record["car_racing"]),
            "```",
        ]
    if record.get("main_job"):
        job = record["main_job"]
        pub = job.get("publication") or {}
        lines += [
            "",
            "## Doom main job (README command 1), from its committed run folder",
            "",
            f"`{job['run']}` ({job['machine']}, {job['cpus']} CPUs): "
            f"**{job['wall_time_s'] / 60:.0f} min** in all, peak resident memory "
            f"**{job['peak_memory_mb'] / 1024:.1f} GB**"
            + (
                f", {pub['mean']:.0f} ± {pub['std']:.0f} over {pub['episodes']} publication "
                "episodes"
                if pub
                else ""
            )
            + ". Not timed by this benchmark run: it is the run's own record.",
            "",
        ]
        lines += table(
            ["stage", "seconds"], [[k, round(v)] for k, v in job["stage_seconds"].items()]
        )
    if record.get("errors"):
        lines += ["", "## Sections that failed", ""]
        lines += [f"- {k}: {v}" for k, v in record["errors"].items()]
    return lines


def _compact(obj) -> str:
    if isinstance(obj, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ", ".join(_compact(v) for v in obj) + "]"
    return fmt(obj)


def plot_dream(record: dict[str, Any], path: Path) -> None:
    """Dream steps/s against batch size, log-log, one panel per game; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    games = record["dream"]
    fig, axes = plt.subplots(1, len(games), figsize=(6 * len(games), 4.5), squeeze=False)
    for ax, (name, game) in zip(axes[0], games.items(), strict=True):
        for impl in dict.fromkeys(r["impl"] for r in game["rows"]):
            rows = sorted((r for r in game["rows"] if r["impl"] == impl), key=lambda r: r["batch"])
            ax.plot([r["batch"] for r in rows], [r["steps_per_s"] for r in rows], "o-", label=impl)
        n = game["numpy"]
        ax.axhline(
            n["steps_per_s"],
            color="gray",
            ls="--",
            label=f"NumPy, 1 rollout/process × {n['workers']}",
        )
        ax.axhline(game["peak_steps_per_s"], color="k", ls=":", label="matmul-peak bound")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="rollouts stepped together (batch)",
            ylabel="dream steps/s",
            title=f"{name}-sized dream",
        )
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    machine = record["machine"]
    fig.suptitle(
        f"{machine['cpu_model']} ({machine['cores_usable']} cores), "
        f"{', '.join(machine['jax_devices'])}, {record['name']}"
    )
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.png")
    try:
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def write_outputs(record: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """<name>.json, <name>.md and (with a dream section) <name>-dream.png, each atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / f"{record['name']}.json", "md": out_dir / f"{record['name']}.md"}
    if "dream" in record:
        paths["png"] = out_dir / f"{record['name']}-dream.png"
    record["files"] = {key: str(path) for key, path in paths.items()}
    checkpoint.atomic_write_json(paths["json"], record)
    checkpoint.atomic_write_text(paths["md"], "\n".join(summary_lines(record)) + "\n")
    if "png" in paths:
        plot_dream(record, paths["png"])
    return paths
