"""CMA-ES for C in the real game, as the paper trained CarRacing's controller (§3.3, Appendix).

Each generation is `wm_jax.es.generation.step`, the dream's own, run on the host: ask → the
population's rollouts on the worker pool (`wm_jax.envs.real_rollout`) → tell. Training
episodes use game seeds below `evolve.SELECTION_SEED_OFFSET`, each seed once per run, so no
track is seen twice and none reaches the evaluation seeds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

from wm_jax.es import evolve, evolve_loop
from wm_jax.es import generation as es_generation
from wm_jax.models import controller


def train_seeds(generation: int, population_size: int, rollouts_per_member: int) -> np.ndarray:
    """Game seeds of generation g: distinct across members, rollouts and generations.

    Returns:
      (P, R) int64 seeds in [0, evolve.SELECTION_SEED_OFFSET).
    """
    per_generation = population_size * rollouts_per_member
    first = generation * per_generation
    if first + per_generation > evolve.SELECTION_SEED_OFFSET:
        raise ValueError(f"generation {generation} would reach the evaluation seeds")
    return (first + np.arange(per_generation)).reshape(population_size, rollouts_per_member)


def train_in_real(
    key: jax.Array,
    evaluate_fn: Callable[[jax.Array, np.ndarray, np.ndarray], np.ndarray],
    c_config: controller.ControllerConfig,
    config: evolve.EvolveConfig,
    num_generations: int,
    *,
    checkpoint_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    progress: bool = True,
) -> evolve.EvolveState:
    """Evolve C in the real game, as the paper did for CarRacing.

    Args:
      evaluate_fn: (key, flat_params (P, D), seeds (P, R)) -> returns (P, R), NaN for lost
        episodes; usually `functools.partial(real_rollout.evaluate_population_real, pool=...,
        models=..., c_config=...)` (see `real_rollout.population_evaluator`).
    """
    strategy, es_params = evolve.make_strategy(config, controller.num_params(c_config))
    state = evolve_loop.restore_or(evolve.init_state(key, c_config, config), checkpoint_dir)
    num_eval = config.eval_rollouts
    eval_seeds = evolve.SELECTION_SEED_OFFSET + np.arange(num_eval)
    if config.generations_per_call != 1:
        config = dataclasses.replace(config, generations_per_call=1)

    def advance(state):
        generation = int(state.es_state.generation_counter)
        seeds = train_seeds(generation, config.population_size, config.rollouts_per_member)

        def fitness(key, population):
            return evaluate_fn(key, np.asarray(population), seeds)

        state, metrics = es_generation.step(strategy, es_params, state, fitness)
        return state, es_generation.host_rows(metrics)

    def evaluate_mean(state):
        key = es_generation.evaluation_key(state.key, state.es_state.generation_counter)
        flat = np.asarray(state.es_state.mean)[None]
        return evaluate_fn(key, flat, eval_seeds[None]).reshape(-1)

    return evolve_loop.run_loop(
        state,
        advance,
        evaluate_mean,
        config,
        num_generations,
        checkpoint_dir,
        evolve_loop.checkpoint_config("real", c_config, config),
        log_path,
        progress,
    )
