"""Dream episodes: jit == no-jit, vmap == loop == compacted batch, the valid mask, truncation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from dream_toys import C_CONFIG, C_PARAMS, counter_model, make, policy

from wm_jax import dream
from wm_jax.dream import rollout as dream_rollout
from wm_jax.models import controller


def test_jit_equals_no_jit():
    env, params = make()
    key = jax.random.key(7)

    def run(key, params):
        return dream_rollout.rollout(key, env, params, policy, C_PARAMS, 30, chunk_size=8)

    eager = run(key, params)
    jitted = jax.jit(run)(key, params)
    np.testing.assert_allclose(jitted.episode_return, eager.episode_return)
    np.testing.assert_array_equal(jitted.length, eager.length)


def test_vmap_over_rollouts_equals_loop_and_compaction():
    env, params = make(done_bias=-0.1)
    keys = jax.random.split(jax.random.key(8), 16)
    c_params = jax.vmap(lambda k: controller.init_params(k, C_CONFIG, scale=0.5))(
        jax.random.split(jax.random.key(9), 16)
    )

    def run(key, c_params, chunk_size):
        return dream_rollout.rollout(key, env, params, policy, c_params, 30, chunk_size)

    batched = jax.jit(jax.vmap(lambda k, p: run(k, p, 7)))(keys, c_params)
    single = jax.jit(lambda k, p: run(k, p, 7))
    looped = [single(keys[i], jax.tree.map(lambda x: x[i], c_params)) for i in range(4)]
    # Compaction: chunks run on the live episodes only, in batches of 16, 8 or 4.
    compacted = jax.jit(
        lambda k, p: dream_rollout.rollout_batch(k, env, params, policy, p, 30, 7, min_bucket=4)
    )(keys, c_params)
    np.testing.assert_allclose(batched.episode_return[:4], [r.episode_return for r in looped])
    np.testing.assert_array_equal(batched.length[:4], [r.length for r in looped])
    # (chunks == one full-length scan: test_valid_mask_stops_rewards_after_done)
    np.testing.assert_array_equal(compacted.length, batched.length)
    np.testing.assert_allclose(compacted.episode_return, batched.episode_return)
    lengths = np.asarray(batched.length)
    assert lengths.min() < 7 < 30 == lengths.max()  # some done early, some run to the cap
    assert np.sum(lengths <= 14) >= 8  # half the batch is done after two chunks: compaction


def test_valid_mask_stops_rewards_after_done():
    config, m_params = counter_model(done_at=5)
    env, _ = dream.make_dream("doom_take_cover", config)
    c_config = controller.ControllerConfig(
        inputs=("z", "c", "h"), latent_dim=2, hidden_size=2, action_dim=1, use_bias=False
    )
    c_params = controller.zeros_params(c_config)

    def act(p, obs):
        return controller.act(c_config, p, obs)

    params = env.make_params(m_params, jnp.zeros((1, 2)), jnp.zeros((1, 2)), 1.0, 2100)

    @functools.partial(jax.jit, static_argnums=1)
    def run(params, chunk_size):
        return dream_rollout.rollout(jax.random.key(0), env, params, act, c_params, 20, chunk_size)

    for chunk_size in (None, 3):
        result = run(params, chunk_size)
        assert float(result.episode_return) == 5.0 and int(result.length) == 5
    # Truncation at max_steps_in_episode (traced) before M's done.
    result = run(params.replace(max_steps_in_episode=jnp.asarray(3, jnp.int32)), 3)
    assert float(result.episode_return) == 3.0 and int(result.length) == 3
    trajectory = jax.jit(
        lambda: dream_rollout.rollout_trajectory(jax.random.key(0), env, params, act, c_params, 8)
    )()
    np.testing.assert_array_equal(trajectory.valid, [1, 1, 1, 1, 1, 0, 0, 0])
    assert float(jnp.sum(trajectory.reward * trajectory.valid)) == 5.0
