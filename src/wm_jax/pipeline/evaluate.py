"""Score a controller the way the paper reports it: mean ± std over N episodes (paper: 100).

`evaluate_controller` plays real episodes in worker processes, batching V → C → M for all of
them per frame (`wm_jax.envs.real_rollout`). Its seeds are `EVAL_SEED_OFFSET + i`: training never
uses seeds that high (`wm_jax.es.evolve` trains on [0, 9,000,000) and selects on
[9,000,000, 10,000,000)), so the score is on tracks / levels the controller never saw.
`evaluate_in_dream` gives the "score in dream" column of the paper's Doom table.

Two disjoint ranges of evaluation seeds keep choices apart from published scores:
*selection* seeds [10,000,000, 20,000,000) are what a run's own evaluate stage plays (and what
every choice of preset, τ or lever looked at); *publication* seeds from 20,000,000 are played
once, after every choice, by `python -m wm_jax.evaluate RUN_DIR --seeds publication`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax import dream
from wm_jax.envs import real_rollout
from wm_jax.es import evolve
from wm_jax.models import controller
from wm_jax.train.training_loop import append_jsonl, read_jsonl

EVAL_SEED_OFFSET = evolve.TRAIN_SEED_LIMIT  # 10,000,000: evaluation episode i uses this + i
SELECTION_SEED_OFFSET = EVAL_SEED_OFFSET  # the run's evaluate stage; choices look at these
PUBLICATION_SEED_OFFSET = 20_000_000  # published scores: no choice ever looked at them
SEED_SETS = {"selection": SELECTION_SEED_OFFSET, "publication": PUBLICATION_SEED_OFFSET}
NUM_EPISODES = 100  # World Models: average over 100 random trials


class EvaluationResult(NamedTuple):
    mean: float
    std: float
    returns: np.ndarray  # (N,) every episode's return (NaN where a worker lost it)
    lengths: np.ndarray  # (N,) steps per episode
    seeds: np.ndarray  # (N,) the game seeds (None-like -1 in the dream)

    def summary(self) -> str:
        """Like the paper's tables: '906 ± 21 over 100 episodes'."""
        lost = int(np.isnan(self.returns).sum())
        text = f"{self.mean:.0f} ± {self.std:.0f} over {len(self.returns) - lost} episodes"
        return text + (f" ({lost} lost)" if lost else "")


def _result(returns, lengths, seeds) -> EvaluationResult:
    returns = np.asarray(returns, np.float64).reshape(-1)
    finite = returns[~np.isnan(returns)]
    mean = float(finite.mean()) if finite.size else float("nan")
    std = float(finite.std()) if finite.size else float("nan")
    return EvaluationResult(
        mean, std, returns, np.asarray(lengths).reshape(-1), np.asarray(seeds).reshape(-1)
    )


def evaluate_controller(
    key: jax.Array,
    game: str | real_rollout.EnvPool,
    models: real_rollout.RealModels,
    c_config: controller.ControllerConfig,
    c_params: Any,
    num_episodes: int = NUM_EPISODES,
    *,
    num_workers: int = 4,
    seed_offset: int = EVAL_SEED_OFFSET,
    max_steps: int | None = None,
    progress: bool = True,
    env_kwargs: dict | None = None,
    record_path: str | Path | None = None,
) -> EvaluationResult:
    """Play `num_episodes` real episodes with seeds `seed_offset + i`.

    Args:
      game: a game name for `wm_jax.envs.make_env` (a pool of `num_workers` is started and
        closed here), or an open `real_rollout.EnvPool` to reuse.
      c_params: the controller's params pytree or its flat (D,) vector.
      record_path: a JSON-lines file that gets every episode as it finishes; episodes already
        in it are not played again (an interrupted evaluation resumes per episode, with the
        same results as an uninterrupted one).
    """
    if seed_offset < evolve.TRAIN_SEED_LIMIT:
        raise ValueError(
            f"seed_offset {seed_offset} overlaps the training seeds [0, {evolve.TRAIN_SEED_LIMIT})"
        )
    flat = np.asarray(
        c_params if isinstance(c_params, jax.Array | np.ndarray) else controller.flatten(c_params)
    )
    if flat.shape != (controller.num_params(c_config),):
        raise ValueError(
            f"c_params has {flat.shape}, expected ({controller.num_params(c_config)},)"
        )
    seeds = seed_offset + np.arange(num_episodes)
    returns = np.full(num_episodes, np.nan)
    lengths = np.zeros(num_episodes, np.int64)
    for row in read_jsonl(record_path, key="episode") if record_path else []:
        if row.get("episode", -1) < num_episodes and row.get("seed") == seeds[row["episode"]]:
            returns[row["episode"]], lengths[row["episode"]] = row["return"], row["length"]
    todo = np.flatnonzero(np.isnan(returns))
    if todo.size == 0:
        return _result(returns, lengths, seeds)

    def record(index: int, episode_return: float, length: int) -> None:
        episode = int(todo[index])
        row = {"episode": episode, "seed": int(seeds[episode]), "return": episode_return}
        append_jsonl(record_path, [row | {"length": length}])

    pool = game
    if isinstance(game, str):
        workers = max(1, min(num_workers, todo.size))
        pool = real_rollout.EnvPool.for_game(game, workers, **(env_kwargs or {}))
    try:
        results = real_rollout.evaluate_population_real(
            key,
            pool,
            models,
            c_config,
            flat[None],
            int(todo.size),
            seeds[todo][None],
            max_steps=max_steps,
            progress=progress,
            episode_ids=todo,
            on_episode=record if record_path else None,
        )
    finally:
        if isinstance(game, str):
            pool.close()
    returns[todo], lengths[todo] = results.returns.reshape(-1), results.lengths.reshape(-1)
    return _result(returns, lengths, seeds)


def evaluate_in_dream(
    key: jax.Array,
    env: dream.DreamEnv,
    env_params: dream.DreamParams,
    c_config: controller.ControllerConfig,
    c_params: Any,
    num_episodes: int = NUM_EPISODES,
    max_steps: int = 2100,
    chunk_size: int | None = 50,
) -> EvaluationResult:
    """The same statistics for `num_episodes` dream episodes (all in one jitted call)."""
    flat = c_params if isinstance(c_params, jax.Array) else controller.flatten(c_params)
    flat = jnp.asarray(flat)[None]
    results = _dream_eval(key, env, env_params, c_config, flat, num_episodes, max_steps, chunk_size)
    return _result(results.episode_return, results.length, np.full(num_episodes, -1))


@functools.partial(jax.jit, static_argnums=(1, 3, 5, 6, 7))
def _dream_eval(key, env, env_params, c_config, flat, num_episodes, max_steps, chunk_size):
    return evolve.evaluate_population_dream(
        key, env, env_params, c_config, flat, num_episodes, max_steps, chunk_size, compact=True
    )


def evaluate_random_policy(
    game: str,
    num_episodes: int = 20,
    seed_offset: int = EVAL_SEED_OFFSET,
    max_steps: int | None = None,
) -> EvaluationResult:
    """The baseline: the game's random-rollout policy (the one V and M's data was collected
    with), on the evaluation's first `num_episodes` seeds, one episode at a time in this process.
    """
    from wm_jax.envs import game_spec, random_policy

    spec, factory = game_spec(game), random_policy(game)
    seeds = seed_offset + np.arange(num_episodes)
    return play_in_process(game, lambda seed: factory(spec, seed), seeds, max_steps)


def play_in_process(
    game: str, policy_for: Any, seeds: np.ndarray, max_steps: int | None = None
) -> EvaluationResult:
    """One real episode per seed, one after another in this process (no worker pool).

    Args:
      policy_for: seed -> policy(frame (64, 64, 3) uint8) -> action (A,) in [-1, 1].
      max_steps: the episode cap (default: the game's).
    """
    from wm_jax.envs import make_env
    from wm_jax.envs.base import play_episode

    env = make_env(game) if max_steps is None else make_env(game, max_steps=max_steps)
    returns, lengths = [], []
    try:
        for seed in seeds:
            played = play_episode(env, policy_for(int(seed)), int(seed))
            returns.append(played.total_return)
            lengths.append(played.length)
    finally:
        env.close()
    return _result(returns, lengths, seeds)


def measure_agent(
    agent_path: Path,
    episodes: int,
    first_seed: int,
    seed_set: str = "custom",
    *,
    workers: int = 0,
    out: Path | None = None,
    max_steps: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Play a shipped agent or a finished run folder's V, M and C on real seeds
    `first_seed + i` and write the JSON record (`out`, default `AGENT/evaluation/`).

    The record's name carries a digest of C's weights, so an evaluation of another C (a stage
    rerun since) never resumes into it; its per-episode JSON lines let an interrupted one resume.
    """
    import time

    from wm_jax.core.checkpoint import atomic_write_json
    from wm_jax.data.encode import params_fingerprint
    from wm_jax.pipeline import agents, stages
    from wm_jax.pipeline import config as cfg

    if episodes < 1:
        raise cfg.ConfigError(f"--episodes {episodes}: must be >= 1")
    agent = agents.load(agent_path)  # a shipped agent (manifest.json) or a run folder
    config, c_config = agent.config, agent.c_config
    digest = params_fingerprint(agent.c_flat)[:12]
    out = out or agent_path / "evaluation" / f"seeds-{first_seed}-{episodes}.json"
    record_path = out.with_name(f"{out.stem}.{digest}.jsonl")
    start = time.perf_counter()
    result = evaluate_controller(
        stages._stage_key(config, "evaluate"),
        config.game,
        agent.models(),
        c_config,
        agent.c_flat,
        episodes,
        num_workers=workers or stages._workers(0),
        seed_offset=first_seed,
        max_steps=max_steps,
        progress=progress,
        record_path=record_path,
    )
    record = {
        "agent": str(agent_path),
        "controller_sha256": digest,
        "experiment": config.experiment,
        "seed_set": seed_set,
        "first_seed": first_seed,
        "episodes": int(np.isfinite(result.returns).sum()),
        "mean": result.mean,
        "std": result.std,
        "returns": [float(r) for r in result.returns],
        "lengths": [int(n) for n in result.lengths],
        "seconds": time.perf_counter() - start,
    }
    atomic_write_json(out, record)
    print(f"{result.summary()} on seeds {first_seed}..{first_seed + episodes - 1}: {out}")
    return record


def main(argv: list[str] | None = None) -> int:
    """`python -m wm_jax.evaluate RUN_DIR`: re-measure a run's agent on any real seeds."""
    import argparse

    from wm_jax.core import runtime
    from wm_jax.pipeline.cli import exit_code

    runtime.tune_malloc()
    parser = argparse.ArgumentParser(
        prog="python -m wm_jax.evaluate",
        description="Play a trained agent (V, M, C of a run folder) in the real game on given "
        "seeds, in parallel, and write a JSON record.",
    )
    parser.add_argument(
        "agent", type=Path, help="a shipped agent folder (agents/GAME) or a finished run folder"
    )
    parser.add_argument("--episodes", type=int, default=NUM_EPISODES)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--seeds", choices=tuple(SEED_SETS), default="publication")
    group.add_argument("--first-seed", type=int, default=None, help="seeds S, S + 1, ...")
    parser.add_argument("--workers", type=int, default=0, help="0: one per CPU core")
    parser.add_argument("--out", type=Path, default=None, help="default AGENT/evaluation/")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    first = SEED_SETS[args.seeds] if args.first_seed is None else args.first_seed
    return exit_code(
        lambda: measure_agent(
            args.agent,
            args.episodes,
            first,
            args.seeds if args.first_seed is None else "custom",
            workers=args.workers,
            out=args.out,
            progress=not args.no_progress,
        )
    )


if __name__ == "__main__":
    import sys

    sys.exit(main())
