"""Does the dream agree with the game on the simplest policies? A fixed-action probe.

A controller trained in M's dream learns whatever the dream rewards, including M's mistakes
(World Models, "Cheating the World Model": C found policies that exploit M's imperfections). The
cheapest mistakes to find are fixed actions: play one action every step, in the dream and in the
real game, and compare the returns. Where the dream pays far more than the game for one of them,
C is likely to learn that action (our first `small` Doom agent held "left" every frame: 1,888
steps in the dream, 205 in the game) and the dream needs more data where it is wrong (§5's
iterative training collects exactly there).

`probe(config, paths)` returns one row per fixed action of the game; the report prints them.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.dream import rollout as dream_rollout
from wm_jax.envs import registry

# Fixed actions worth probing, as controller outputs in [-1, 1]: a view of each game's
# `GameSpec.fixed_actions` (see the specs in `wm_jax.envs.registry`), and the real episodes per
# action in the report (`GameSpec.probe_episodes`: CarRacing plays up to 1,000 frames at ~350
# frames/s).
FIXED_ACTIONS = registry.Table(lambda spec: dict(spec.fixed_actions))
REPORT_EPISODES = registry.Table(lambda spec: spec.probe_episodes)
SEED_OFFSET = 20_000_000  # real-game seeds of the probe, apart from training and evaluation


def _constant(action: jax.Array, obs: jax.Array) -> jax.Array:
    del obs
    return action


@functools.partial(jax.jit, static_argnums=(1, 4, 5))
def _dream_rollouts(key, env, env_params, action, episodes: int, max_steps: int):
    keys = jax.random.split(key, episodes)
    run = jax.vmap(
        lambda k: dream_rollout.rollout(
            k, env, env_params, _constant, action, max_steps, chunk_size=100
        )
    )
    return run(keys)  # RolloutResult of (episodes,) each


def dream_episodes(
    key: jax.Array, env, env_params, action, episodes: int
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths (episodes,) of dream episodes that play `action` (A,) every step."""
    max_steps = int(env_params.max_steps_in_episode)
    action = jnp.asarray(action, jnp.float32)
    result = _dream_rollouts(key, env, env_params, action, episodes, max_steps)
    return np.asarray(result.episode_return), np.asarray(result.length)


def dream_returns(key: jax.Array, env, env_params, action, episodes: int) -> np.ndarray:
    """Returns (episodes,) of dream episodes that play `action` (A,) every step."""
    return dream_episodes(key, env, env_params, action, episodes)[0]


def real_episodes(
    game: str, action, episodes: int, max_steps: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Returns and lengths (episodes,) of real episodes that play `action` (A,) every frame."""
    from wm_jax.pipeline.evaluate import play_in_process

    action = np.asarray(action, np.float32)
    seeds = SEED_OFFSET + np.arange(episodes)
    result = play_in_process(game, lambda seed: lambda frame: action, seeds, max_steps)
    return np.asarray(result.returns), np.asarray(result.lengths)


def real_returns(game: str, action, episodes: int, max_steps: int | None = None) -> np.ndarray:
    """Returns (episodes,) of real episodes that play `action` (A,) every frame."""
    return real_episodes(game, action, episodes, max_steps)[0]


def _lengths(lengths: np.ndarray) -> dict[str, float]:
    return {"mean": float(lengths.mean()), "min": int(lengths.min()), "max": int(lengths.max())}


def probe(config, paths, episodes: int = 20, max_steps: int | None = None) -> list[dict[str, Any]]:
    """One row per fixed action: its mean and std return in the dream and in the real game.

    Args:
      config, paths: a run whose M predicts done or reward (its dream has something to pay).
      episodes: episodes per action in each world.
      max_steps: the episode cap in both worlds (default: the run's dream cap, which C was
        trained under; the game plays to the same cap, so both pay for the same steps).

    Returns:
      rows with the action's name and output, mean and std return in each world ("dream",
      "real"), and episode lengths ("dream_length", "real_length": mean, min, max; a dream
      whose M predicts done ends episodes before the cap where the game would).
    """
    from wm_jax.pipeline import run_models

    env, env_params = run_models.make_dream(config, paths)
    if max_steps is None:
        max_steps = int(env_params.max_steps_in_episode)
    env_params = env_params.replace(max_steps_in_episode=jnp.asarray(max_steps, jnp.int32))
    key = jax.random.fold_in(jax.random.key(config.seed), SEED_OFFSET)
    rows = []
    for i, (name, action) in enumerate(registry.game_spec(config.game).fixed_actions):
        in_dream, dream_lengths = dream_episodes(
            jax.random.fold_in(key, i), env, env_params, action, episodes
        )
        real, real_lengths = real_episodes(config.game, action, episodes, max_steps)
        rows.append(
            {
                "action": name,
                "output": list(action),
                "dream": {"mean": float(in_dream.mean()), "std": float(in_dream.std())},
                "real": {"mean": float(real.mean()), "std": float(real.std())},
                "dream_length": _lengths(dream_lengths),
                "real_length": _lengths(real_lengths),
                "episodes": episodes,
                "max_steps": max_steps,
            }
        )
    return rows


def markdown(rows: list[dict[str, Any]]) -> str:
    """The probe as a table; a dream return far above the game's marks a likely exploit.

    The ratio column holds the ratio where the game's return is positive (Doom's frames
    survived), else the difference (CarRacing's fixed actions mostly lose points in the game).
    Rows from `probe` add the mean episode lengths: where the dream's M predicts done, a dream
    that never ends an episode the game ends shows there.
    """
    lengths = all("dream_length" in row for row in rows)
    header = "| fixed action | C output | return in dream | return in real game | dream / real "
    header += "(dream − real where real ≤ 0) |"
    lines = [header + (" mean length dream / real |" if lengths else ""), "|---" * 5 + "|"]
    lines[-1] += "---|" if lengths else ""
    for row in rows:
        dream_mean, real_mean = row["dream"]["mean"], row["real"]["mean"]
        ratio = (
            f"{dream_mean / real_mean:.1f}×" if real_mean > 0 else f"{dream_mean - real_mean:+.0f}"
        )
        line = (
            f"| {row['action']} | {row['output']} | {dream_mean:.0f} ± {row['dream']['std']:.0f} "
            f"| {real_mean:.0f} ± {row['real']['std']:.0f} | {ratio} |"
        )
        if lengths:
            line += f" {row['dream_length']['mean']:.0f} / {row['real_length']['mean']:.0f} |"
        lines.append(line)
    return "\n".join(lines) + "\n"
