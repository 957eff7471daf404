"""Diagnostics of a Doom run, as used in experiments/README.md.

    python experiments/doom_diagnostics.py RUN_DIR recon OUT.png # V on late frames (fireballs)
    python experiments/doom_diagnostics.py RUN_DIR dream PREFIX  # dream frames, always left/right
    python experiments/doom_diagnostics.py RUN_DIR done [N]      # M's done head on real deaths

`recon` reconstructs 12 frames from the second half of two stored episodes; `dream` draws 400
dream steps of "always left" and "always right" at the run's τ, one frame in 25 (an X marks
steps after the dream's done); `done` runs M teacher-forced over the last N encoded episodes
and reports how often its done logit is > 0 at the death step and before it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax import dream
from wm_jax.data import EpisodeStore, load_encoded
from wm_jax.dream import rollout as dream_rollout
from wm_jax.models import mdn_rnn
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import probe, report, run_folder, run_models


def recon(config, paths, out: str) -> None:
    store = EpisodeStore(paths.episodes)
    frames = []
    for index in (store.indices()[-1], store.indices()[-7]):
        episode = store.read(index)
        steps = np.linspace(len(episode.frames) // 3, len(episode.frames) - 2, 6).astype(int)
        frames += [episode.frames[t] for t in steps]
    report.reconstructions(run_models.load_vae(config, paths), np.stack(frames), out)


def dream_strips(config, paths, prefix: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env, env_params = run_models.make_dream(config, paths)
    vae_params = run_models.load_vae(config, paths)
    for name in ("left", "right"):
        action = jnp.asarray(probe.FIXED_ACTIONS["doom_take_cover"][name])
        trajectory = jax.jit(
            lambda key, a: dream_rollout.rollout_trajectory(
                key, env, env_params, lambda p, obs: p, a, 400
            )
        )(jax.random.key(2), action)
        frames = np.asarray(dream.render(vae_params, trajectory.z))
        steps = range(0, 400, 25)
        fig, axes = plt.subplots(1, len(steps), figsize=(2 * len(steps), 2.3))
        for ax, t in zip(axes, steps, strict=True):
            ax.imshow(frames[t])
            ax.set_title(f"t={t}{'' if trajectory.valid[t] else ' X'}", fontsize=8)
            ax.axis("off")
        fig.savefig(f"{prefix}_{name}.png", dpi=60, bbox_inches="tight")
        plt.close(fig)


def done_head(config, paths, count: int) -> None:
    params = run_models.load_mdn_rnn(config, paths)
    forward = jax.jit(lambda z, a: mdn_rnn.forward_sequence(config.mdn_rnn, params, z, a))
    at_death, before_death, earlier = [], [], []
    for episode in load_encoded(EpisodeStore(paths.encoded))[-count:]:
        if not episode.dones[-1]:
            continue
        output = forward(jnp.asarray(episode.mu[None]), jnp.asarray(episode.actions[None]))
        logits = np.asarray(output.done_logit[0])
        at_death.append(logits[-1])
        before_death.append(logits[-5:-1].max())
        earlier.append(logits[:-10])
    earlier = np.concatenate(earlier)
    print(f"{len(at_death)} episodes ending in death")
    print(f"done logit > 0 at the death step: {np.mean(np.array(at_death) > 0):.0%}")
    print(f"... at one of the 4 steps before it: {np.mean(np.array(before_death) > 0):.0%}")
    print(f"... at earlier steps (false alarms): {np.mean(earlier > 0):.3%}")


def main(argv: list[str]) -> None:
    run_dir, command, *rest = argv
    config = cfg.from_dict(json.loads((Path(run_dir) / "config.json").read_text()))
    paths = run_folder.RunPaths(Path(run_dir))
    if command == "recon":
        recon(config, paths, rest[0])
    elif command == "dream":
        dream_strips(config, paths, rest[0])
    elif command == "done":
        done_head(config, paths, int(rest[0]) if rest else 60)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
