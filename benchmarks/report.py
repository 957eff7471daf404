"""Goals, the markdown summary and the dream plot of a `benchmarks.run` record; atomic writes."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

from wm_jax.core import checkpoint

GOAL_BATCH = 1024  # the dream goals are stated at 1,024 rollouts (one CMA-ES generation)
GPU_GOAL_STEPS_PER_S = 50e6  # CarRacing-sized dream steps/s on one H100/H200 (issue 16)
GPU_GOAL_CMA_S = 0.1  # one Doom CMA-ES generation, 64 × 16 × 2,100 steps, on one H100/H200
MAIN_JOB_GOAL_S = 45 * 60  # README command 1, fresh clone to a solved Doom agent, 2 CPU cores
MAIN_JOB_GOAL_MB = 6 * 1024  # its peak resident memory
# The committed end-to-end run of README command 1 that the main-job goals read.
MAIN_JOB_RUN = Path(__file__).resolve().parents[1] / (
    "experiments/results/doom_take_cover/small-publish-seed0"
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


def _ratio(a: dict | None, b: dict | None, key: str) -> float | None:
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
                _ratio(ours, torch_row, "steps_per_s"),
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
                _ratio(ours, doom["numpy"], "steps_per_s"),
                5.0,
                "×",
            )
        )
    vae = record.get("vae")
    if vae is not None:
        out.append(
            _goal(
                "V training images/s vs eager PyTorch",
                _ratio(vae["wm_jax"], vae.get("torch_eager"), "images_per_s"),
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
                _ratio(mdn["wm_jax"], mdn.get("torch_eager"), "timesteps_per_s"),
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
                _ratio(r, find_row(game["rows"], "wm_jax:batched", r["batch"]), "steps_per_s"),
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


def fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}" if value == 0 or 1e-2 <= abs(value) < 1e5 else f"{value:.3e}"
    if isinstance(value, int) and abs(value) >= 10_000:
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
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
    lines += _table(header, rows)
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
    lines += _table(
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
                _ratio(v["wm_jax"], v.get("torch_eager"), "images_per_s"),
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
                _ratio(m["wm_jax"], m.get("torch_eager"), "timesteps_per_s"),
                m["wm_jax"]["compile_s"],
            ]
        )
    if train_rows:
        lines += ["", "## Training (one Adam step per call)", ""]
        lines += _table(
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
        lines += _table(["game", "workers", "frames/s", "frames", "error"], rows)
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
        lines += _table(
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
