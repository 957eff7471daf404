"""The run report: pictures a person would rather look at than read, and one markdown page.

`DIR/report/report.md` with, beside it: V's reconstructions next to the originals, the loss
curves of V and M, the CMA-ES fitness curve, a real episode next to its reconstruction and next
to M's dream from the same start (animated GIF), the evaluation histogram, and the results table
in the paper's form with the paper's numbers in the next column.
"""

from __future__ import annotations

import json
from typing import Any

import imageio.v2 as imageio
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # no display: files only
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from wm_jax.data import EpisodeStore  # noqa: E402
from wm_jax.models import (
    mdn_rnn,
    vae,  # noqa: E402
)
from wm_jax.pipeline.config import STAGES, ExperimentConfig  # noqa: E402
from wm_jax.train.training_loop import read_jsonl  # noqa: E402

# World Models, Tables 1 and 2 (../shared/PAPER.md).
PAPER_CAR_RACING = {
    "linear_z": ("World Models, V only (z)", "632 ± 251"),
    "hidden_z": ("World Models, V only + hidden layer", "788 ± 141"),
    "linear_zh": ("World Models, full (z, h)", "906 ± 21"),
}
PAPER_DOOM = {  # τ: (score in dream, score in real game)
    0.10: ("2086 ± 140", "193 ± 58"),
    0.50: ("2060 ± 277", "196 ± 50"),
    1.00: ("1145 ± 690", "868 ± 511"),
    1.15: ("918 ± 546", "1092 ± 556"),
    1.30: ("732 ± 269", "753 ± 139"),
}
_WHERE = {"real": "real game", "dream": "dream"}
GIF_FRAMES = 300  # real frames shown; every second one is drawn (15 fps of a 30 fps game)
GIF_FPS = 15


def _save(fig, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reconstructions(vae_params, frames: np.ndarray, path) -> None:
    """Originals (top row) above V's reconstructions from μ (bottom row)."""
    mu, _ = vae.encode(vae_params, vae.frames_to_float(frames))
    recon = np.asarray(vae.decode(vae_params, mu))
    fig, axes = plt.subplots(2, len(frames), figsize=(1.5 * len(frames), 3.2), squeeze=False)
    for i in range(len(frames)):
        for row, image in enumerate((frames[i], recon[i])):
            axes[row, i].imshow(image)
            axes[row, i].axis("off")
    axes[0, 0].set_title("original", fontsize=8, loc="left")
    axes[1, 0].set_title("V(original)", fontsize=8, loc="left")
    _save(fig, path)


def loss_curves(rows_by_model: dict[str, list[dict]], path) -> bool:
    """One panel per model: its loss against training step (log scale where positive)."""
    rows_by_model = {name: rows for name, rows in rows_by_model.items() if rows}
    if not rows_by_model:
        return False
    fig, axes = plt.subplots(
        1, len(rows_by_model), figsize=(5 * len(rows_by_model), 3.5), squeeze=False
    )
    for ax, (name, rows) in zip(axes[0], rows_by_model.items(), strict=True):
        steps = [row["step"] for row in rows]
        for metric in [m for m in rows[-1] if m not in ("step", "grad_norm")][:4]:
            ax.plot(steps, [row.get(metric, np.nan) for row in rows], label=metric)
        if all(row["loss"] > 0 for row in rows):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    _save(fig, path)
    return True


def fitness_curve(rows: list[dict], path) -> bool:
    """Best / mean / worst return of the population per CMA-ES generation."""
    if not rows:
        return False
    generation = [row["generation"] for row in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for metric in ("best_return", "mean_return", "worst_return"):
        ax.plot(generation, [row[metric] for row in rows], label=metric.replace("_return", ""))
    evaluated = [row for row in rows if row.get("eval_return") is not None]
    if evaluated:
        ax.plot(
            [r["generation"] for r in evaluated],
            [r["eval_return"] for r in evaluated],
            "k*",
            label="ES mean, evaluated",
        )
    ax.set_xlabel("generation")
    ax.set_ylabel("return")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def dream_from_real(key, config: ExperimentConfig, mdn_params, mu, logvar, actions, tau):
    """M's open-loop dream: the real episode's first code and actions, sampled at τ.

    Returns:
      z (T, Z): z[0] the real first code, z[t + 1] M's sample after action t.
    """
    mdn_config = config.mdn_rnn
    key_start, key_steps = jax.random.split(key)
    z0 = mu[0] + jnp.exp(logvar[0] / 2) * jax.random.normal(key_start, mu[0].shape)

    def one_step(carry, inputs):
        state, z = carry
        t, action = inputs
        restart = (t == 0) if mdn_config.use_restart else None
        state, z_next, _, _ = mdn_rnn.step(
            jax.random.fold_in(key_steps, t),
            mdn_config,
            mdn_params,
            state,
            z,
            action,
            tau,
            restart=restart,
        )
        return (state, z_next), z_next

    steps = (jnp.arange(len(actions) - 1), jnp.asarray(actions[:-1]))
    _, zs = jax.lax.scan(one_step, (mdn_rnn.initial_state(mdn_config), z0), steps)
    return jnp.concatenate([z0[None], zs])


def write_gif(path, frames: np.ndarray, fps: float) -> None:
    """An endlessly looping GIF of `frames` (T, H, W, 3) uint8 that plays at `fps`.

    GIF delays are whole centiseconds, so 15 fps (6.67 cs a frame) alternates 7, 7, 6: each
    frame is shown within 10 ms of its time and the clip lasts exactly T / fps.
    """
    if not 0 < fps <= 50:  # players slow delays under 2 cs down to 10 cs
        raise ValueError(f"a GIF plays at most 50 fps, got fps={fps}")
    ends_cs = np.round(np.arange(1, len(frames) + 1) * 100 / fps).astype(int)
    delays_ms = 10 * np.diff(ends_cs, prepend=0)
    # imageio 2.x's pillow writer takes `duration` in milliseconds: duration=1/15 gave 0 delay.
    imageio.mimsave(path, list(frames), duration=delays_ms.tolist(), loop=0)


def episode_gif(config, paths, vae_params, mdn_params, path) -> bool:
    """Real | V(real) | M's dream from the same start, side by side, as an animated GIF."""
    from wm_jax.data import EncodedEpisode  # noqa: F401  (documents what the store holds)

    store, encoded = EpisodeStore(paths.episodes), EpisodeStore(paths.encoded)
    common = sorted(set(store.indices()) & set(encoded.indices()))
    if not common:
        return False
    real, codes = store.read(common[0]), encoded.read(common[0])
    n = min(GIF_FRAMES, len(real.frames))
    recon = vae.decode(vae_params, jnp.asarray(codes.mu[:n]))
    z = dream_from_real(
        jax.random.key(config.seed),
        config,
        mdn_params,
        codes.mu[:n],
        codes.logvar[:n],
        codes.actions[:n],
        config.controller.temperature,
    )
    dreamt = vae.decode(vae_params, z)
    write_gif(path, side_by_side(real.frames[:n], recon, dreamt), GIF_FPS)
    return True


def side_by_side(real: np.ndarray, *decoded: Any) -> np.ndarray:
    """Real frames (T, 64, 64, 3) uint8 | each decoded video (T, 64, 64, 3) in [0, 1], every
    second frame at twice the size: the frames of a GIF at `GIF_FPS`."""
    to_uint8 = lambda x: np.asarray(jnp.round(jnp.clip(x, 0, 1) * 255)).astype(np.uint8)  # noqa: E731
    gap = np.full((len(real), 64, 4, 3), 255, np.uint8)
    panels = np.concatenate([real, *(p for video in decoded for p in (gap, to_uint8(video)))], 2)
    return panels[::2].repeat(2, axis=1).repeat(2, axis=2)  # 128 px tall: easier to see


def evaluation_histogram(returns: list[float], random_returns, path) -> bool:
    if not returns:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(returns, bins=20, alpha=0.8, label=f"trained C (n={len(returns)})")
    if random_returns:
        ax.hist(random_returns, bins=20, alpha=0.5, label="random policy")
    ax.axvline(np.mean(returns), color="k", ls="--", label=f"mean {np.mean(returns):.0f}")
    ax.set_xlabel("return in the real game")
    ax.set_ylabel("episodes")
    ax.legend(fontsize=8)
    _save(fig, path)
    return True


def results_table(config: ExperimentConfig, evaluation: dict) -> str:
    """The paper's table form, ours beside the paper's number."""
    ours = f"{evaluation['mean']:.0f} ± {evaluation['std']:.0f}" if evaluation else "not run"
    if config.game == "doom_take_cover":
        tau = round(float(config.controller.temperature), 2)
        in_dream = evaluation.get("dream") if evaluation else None
        dream_text = f"{in_dream['mean']:.0f} ± {in_dream['std']:.0f}" if in_dream else "—"
        paper = PAPER_DOOM.get(tau, ("—", "—"))
        return (
            "| τ | score in dream (ours) | real game (ours) | dream (paper) | real game (paper) |\n"
            "|---|---|---|---|---|\n"
            f"| {tau:.2f} | {dream_text} | {ours} | {paper[0]} | {paper[1]} |\n"
            "| random policy | — | see histogram | — | 210 ± 108 |\n"
        )
    if config.game.startswith("car_racing"):
        method, paper = PAPER_CAR_RACING[config.controller.kind]
        where = f"C trained in the {_WHERE[config.controller.train_in]}"
        return (
            "| method | score (ours) | score (paper) |\n|---|---|---|\n"
            f"| {method} ({where}) | {ours} | {paper} |\n"
        )
    return f"| experiment | score (ours) |\n|---|---|\n| {config.experiment} | {ours} |\n"


def data_lines(summary: dict[str, Any]) -> list[str]:
    """What V trained on: the episodes collected, used and skipped as corrupt."""
    collected, vae_summary = summary.get("collect") or {}, summary.get("train_vae") or {}
    if "frames" not in vae_summary:
        return []
    skipped = vae_summary.get("skipped_episodes") or []
    text = (
        f"V trained on {vae_summary['frames']:,} frames of {vae_summary.get('episodes', '?')} "
        f"episodes ({collected.get('episodes', '?')} collected"
    )
    text += f"; {len(skipped)} corrupt, skipped: {', '.join(skipped)})." if skipped else ")."
    return ["## Data", "", text, ""]


def make_report(config: ExperimentConfig, paths, progress: bool = True) -> dict[str, Any]:
    """Draw every figure into `DIR/report/` and write `DIR/report/report.md`."""
    del progress
    from wm_jax.pipeline import run_models

    out = paths.report
    out.mkdir(parents=True, exist_ok=True)
    results = json.loads((paths.root / "results.json").read_text())
    summary = results.get("stages", {})
    evaluation = summary.get("evaluate") or {}
    controller = summary.get("train_controller") or {}
    vae_params = run_models.load_vae(config, paths)
    mdn_params = run_models.load_mdn_rnn(config, paths)
    store = EpisodeStore(paths.episodes)
    first = next(episode for _, episode in store.episodes()).frames  # the first readable
    sample = first[np.linspace(0, len(first) - 1, 8).astype(int)]

    figures: dict[str, str] = {}
    reconstructions(vae_params, sample, out / "reconstructions.png")
    figures["reconstructions"] = "reconstructions.png"
    curves = {
        "V (ConvVAE)": read_jsonl(paths.metrics("train_vae")),
        "M (MDN-RNN)": read_jsonl(paths.metrics("train_mdn_rnn")),
    }
    if loss_curves(curves, out / "losses.png"):
        figures["losses"] = "losses.png"
    cma_rows = read_jsonl(paths.metrics("train_controller"), key="generation")
    if fitness_curve(cma_rows, out / "fitness.png"):
        figures["fitness"] = "fitness.png"
    if episode_gif(config, paths, vae_params, mdn_params, out / "real_vae_dream.gif"):
        figures["gif"] = "real_vae_dream.gif"
    returns = evaluation.get("returns", [])
    random_returns = (evaluation.get("random_policy") or {}).get("returns")
    if evaluation_histogram(returns, random_returns, out / "evaluation.png"):
        figures["evaluation"] = "evaluation.png"

    fixed_actions = None
    if config.mdn_rnn.predict_done or config.mdn_rnn.predict_reward:
        from wm_jax.pipeline import probe  # plays the real game: only for dreams that pay something

        episodes = min(probe.REPORT_EPISODES[config.game], config.evaluate.episodes)
        fixed_actions = probe.probe(config, paths, episodes=episodes)

    wall = results.get("wall_time_s", {})
    lines = [
        f"# {config.experiment} — World Models in JAX ({config.scale} scale, seed {config.seed})",
        "",
        "## Results",
        "",
        results_table(config, evaluation),
    ]
    if evaluation:
        lines += [
            f"Real game: **{evaluation['mean']:.1f} ± {evaluation['std']:.1f}** over "
            f"{evaluation['episodes']} episodes (seeds never used in training); C trained in "
            f"the {_WHERE[config.controller.train_in]} for {controller.get('generations')} "
            "generations.",
            "",
        ]
        if evaluation.get("random_policy"):
            baseline = evaluation["random_policy"]
            lines += [
                f"The random policy the data was collected with: {baseline['mean']:.1f} ± "
                f"{baseline['std']:.1f} over the first {baseline['episodes']} of the same seeds.",
                "",
            ]
    lines += data_lines(summary)
    sections = [
        ("evaluation", "Returns in the real game"),
        ("reconstructions", "V: originals (top) and reconstructions (bottom)"),
        (
            "gif",
            "A real episode | V's reconstruction | M's dream from the same start "
            f"(same actions, τ = {config.controller.temperature})",
        ),
        ("losses", "Training curves of V and M"),
        ("fitness", "CMA-ES: best, mean and worst return per generation"),
    ]
    for name, title in sections:
        if name in figures:
            lines += [f"## {title}", "", f"![{title}]({figures[name]})", ""]
    if fixed_actions:
        lines += [
            "## Fixed actions: the dream against the real game",
            "",
            "Each action played every step (dream at "
            f"τ = {config.controller.temperature}). A dream paying far more than the game for "
            "one of them is an exploit C is likely to find (see `wm_jax.pipeline.probe`).",
            "",
            probe.markdown(fixed_actions),
        ]
    lines += ["## Wall time per stage", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {wall[stage]:.1f} |" for stage in STAGES if stage in wall]
    device = results.get("device", {})
    lines += [
        "",
        f"Device: {device.get('platform')} ({device.get('kind')}); "
        f"jax {results.get('versions', {}).get('jax')}.",
        "",
    ]
    (out / "report.md").write_text("\n".join(lines))
    summary = {"figures": sorted(figures.values()), "report": str(out / "report.md")}
    return summary | ({"fixed_actions": fixed_actions} if fixed_actions else {})
