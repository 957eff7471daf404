"""One CMA-ES generation, ask → fitness → tell (World Models §3.3), for the dream and the game.

The same function runs inside the dream's jitted `lax.scan` (`wm_jax.es.evolve`, fitness in
JAX) and eagerly on the host for the real game (`wm_jax.es.evolve_real`, fitness from the worker
pool), so both share one key scheme and one fitness: generation g draws its keys from
`fold_in(run key, g)`, and an evaluation of the ES mean after generation g from
`fold_in(fold_in(run key, 2**30), g)`, apart from every generation's. evosax minimises, so the
fitness told is − the member's mean return over its rollouts (NaN returns, episodes a worker
lost, are left out of the mean; a member with none ranks last).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.core import distributed

EVALUATION_STREAM = 2**30  # folded into the run key for evaluations of the mean


class GenerationMetrics(NamedTuple):
    generation: jax.Array  # generations completed
    best_return: jax.Array  # best member's mean return this generation
    mean_return: jax.Array
    worst_return: jax.Array
    sigma: jax.Array  # CMA-ES step size after the update
    best_ever_return: jax.Array
    lost_episodes: jax.Array  # rollouts that returned NaN (a lost worker; never in the dream)


def generation_keys(run_key: jax.Array, generation: jax.Array | int) -> tuple[jax.Array, ...]:
    """(ask, fitness, tell) keys of generation `generation` (completed before it)."""
    key = jax.random.fold_in(jax.random.wrap_key_data(run_key), generation)
    return tuple(jax.random.split(key, 3))


def evaluation_key(run_key: jax.Array, generation: jax.Array | int) -> jax.Array:
    """The key of the ES mean's evaluation after `generation` generations."""
    key = jax.random.fold_in(jax.random.wrap_key_data(run_key), EVALUATION_STREAM)
    return jax.random.fold_in(key, generation)


def step(
    strategy: Any,
    es_params: Any,
    state: Any,
    fitness: Callable[[jax.Array, jax.Array], jax.Array],
    replicate: Callable[[Any], Any] = lambda x: x,
) -> tuple[Any, GenerationMetrics]:
    """One generation on `state` (an `evolve.EvolveState`).

    Args:
      strategy, es_params: evosax's CMA_ES and its params.
      fitness: `(key, population (P, D)) -> returns (P, R)`, a rollout's return per member and
        rollout (higher is better); traced in the dream, a host call in the real game.
      replicate: applied to what CMA-ES's update reads, so a sharded population's update runs
        replicated (`evolve.make_dream_evolver`).

    Returns:
      (the state after tell, the generation's metrics).
    """
    es_state = state.es_state
    key_ask, key_fitness, key_tell = generation_keys(state.key, es_state.generation_counter)
    population, es_state = strategy.ask(key_ask, es_state, es_params)  # (P, D)
    returns = jnp.asarray(fitness(key_fitness, population), jnp.float32)  # (P, R)
    mean_returns = replicate(jnp.nanmean(returns, axis=1))  # (P,)
    population, es_state = replicate((population, es_state))
    es_state, _ = strategy.tell(key_tell, population, -mean_returns, es_state, es_params)
    metrics = GenerationMetrics(
        generation=es_state.generation_counter,
        best_return=jnp.nanmax(mean_returns),
        mean_return=jnp.nanmean(mean_returns),
        worst_return=jnp.nanmin(mean_returns),
        sigma=es_state.std,
        best_ever_return=-es_state.best_fitness,
        lost_episodes=jnp.sum(jnp.isnan(returns)),
    )
    return state.replace(es_state=es_state), metrics


def host_rows(metrics: GenerationMetrics) -> list[dict[str, int | float]]:
    """The metrics as JSON rows, one per generation (fields of shape (G,) or scalars)."""
    arrays = {
        name: np.atleast_1d(np.asarray(v))
        for name, v in distributed.tree_to_host(metrics)._asdict().items()
    }

    def scalar(value):
        return int(value) if np.issubdtype(value.dtype, np.integer) else float(value)

    count = len(arrays["generation"])
    return [{name: scalar(value[i]) for name, value in arrays.items()} for i in range(count)]
