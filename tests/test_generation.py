"""wm_jax.es.generation: the one CMA-ES generation both trainers run (dream in jit, real game on
the host): the same update either way, NaN returns left out and counted, one key scheme."""

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.es import evolve
from wm_jax.es import generation as es_generation
from wm_jax.models import controller

C_CONFIG = controller.ControllerConfig(latent_dim=2, hidden_size=2, action_dim=1)
CONFIG = evolve.EvolveConfig(population_size=8, rollouts_per_member=3, eval_every=0)


def _setup():
    strategy, es_params = evolve.make_strategy(CONFIG, controller.num_params(C_CONFIG))
    state = evolve.init_state(jax.random.key(0), C_CONFIG, CONFIG)
    return strategy, es_params, state


def _sphere(key, population):
    # A known answer: the best member is the one nearest the origin; rollouts add noise.
    noise = jax.random.normal(key, (population.shape[0], CONFIG.rollouts_per_member))
    return -jnp.sum(population**2, axis=1, keepdims=True) + 0.01 * noise


def test_the_jitted_step_equals_the_host_step():
    strategy, es_params, state = _setup()
    jitted = jax.jit(lambda s: es_generation.step(strategy, es_params, s, _sphere))
    host_fitness = lambda key, population: np.asarray(_sphere(key, population))  # noqa: E731
    in_jit, on_host = state, state
    for _ in range(3):
        in_jit, metrics_jit = jitted(in_jit)
        on_host, metrics_host = es_generation.step(strategy, es_params, on_host, host_fitness)
    np.testing.assert_allclose(in_jit.es_state.mean, on_host.es_state.mean, rtol=1e-5, atol=1e-6)
    (row_jit,), (row_host,) = map(es_generation.host_rows, (metrics_jit, metrics_host))
    assert row_jit.keys() == row_host.keys()
    np.testing.assert_allclose(list(row_jit.values()), list(row_host.values()), rtol=1e-5)
    assert int(on_host.es_state.generation_counter) == 3


def test_nan_returns_are_left_out_of_the_mean_and_counted():
    strategy, es_params, state = _setup()

    def lossy(key, population):
        returns = np.array(_sphere(key, population))
        returns[0, :2] = np.nan  # two of member 0's rollouts lost
        returns[1, :] = np.nan  # all of member 1's
        return returns

    _, metrics = es_generation.step(strategy, es_params, state, lossy)
    (row,) = es_generation.host_rows(metrics)
    assert row["lost_episodes"] == 5
    assert np.isfinite([row["best_return"], row["mean_return"], row["worst_return"]]).all()
    assert row["generation"] == 1 and isinstance(row["generation"], int)


def test_generation_and_evaluation_keys_are_distinct_and_reproducible():
    _, _, state = _setup()
    keys = [
        jax.random.key_data(k)
        for g in range(3)
        for k in es_generation.generation_keys(state.key, g)
    ]
    keys += [jax.random.key_data(es_generation.evaluation_key(state.key, g)) for g in range(3)]
    as_tuples = {tuple(np.asarray(k).tolist()) for k in keys}
    assert len(as_tuples) == 12
    again = jax.random.key_data(es_generation.generation_keys(state.key, 2)[1])
    np.testing.assert_array_equal(again, keys[7])
