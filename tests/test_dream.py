"""The dream as a gymnax environment: shapes, M equivalence, masks, traces, temperature."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dream_toys import C_PARAMS, M_CONFIG, make, policy

from wm_jax import dream, dream_rollout, mdn_rnn, vae


def test_shapes_and_gymnax_api():
    env, params = make()
    obs, state = env.reset(jax.random.key(0), params)
    assert obs.shape == (4 + 8 + 8,) == (env.obs_dim,)
    assert env.observation_space(params).shape == obs.shape
    assert env.action_space(params).shape == (1,)
    # gymnax 1.0.1: step -> (obs, state, reward, terminated, truncated, info), auto-reset.
    obs, state, reward, terminated, truncated, info = env.step(
        jax.random.key(1), state, jnp.array([0.3]), params
    )
    assert obs.shape == (20,) and reward.shape == () and terminated.dtype == jnp.bool_
    assert truncated.dtype == jnp.bool_ and "done_logit" in info
    assert int(state.time) == 1 or bool(terminated)


def test_reset_samples_from_the_bank_and_zero_memory():
    env, params = make()
    obs, state = env.reset_env(jax.random.key(0), params)
    assert not jnp.any(state.memory.c) and not jnp.any(state.memory.h) and bool(state.restart)
    distance = jnp.min(jnp.linalg.norm(params.initial_mu - state.z, axis=-1))
    assert distance < 4 * jnp.exp(-1.0) * 2  # within a few σ = e^-1 of one bank entry


def test_one_dream_step_equals_m_step():
    env, params = make(temperature=1.15)
    _, state = env.reset_env(jax.random.key(0), params)
    action = jnp.array([0.7])
    key = jax.random.key(5)
    obs, new_state, reward, terminated, _ = env.step_env(key, state, action, params)
    memory, z_next, done_logit, _ = mdn_rnn.step(
        key,
        M_CONFIG,
        params.model_params,
        state.memory,
        state.z,
        action,
        1.15,
        restart=jnp.array(True),
    )
    np.testing.assert_array_equal(new_state.z, z_next)
    np.testing.assert_array_equal(new_state.memory.h, memory.h)
    np.testing.assert_array_equal(obs, jnp.concatenate([z_next, memory.c, memory.h]))
    assert float(reward) == 1.0 and bool(terminated) == bool(done_logit > 0)
    assert not bool(new_state.restart)


def test_no_retrace_when_weights_or_temperature_change():
    env, params = make()

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key, params):
        return dream_rollout.rollout(key, env, params, policy, C_PARAMS, 10, chunk_size=5)

    run(jax.random.key(0), params)
    _, other = make(temperature=0.5, model_key=1)
    run(jax.random.key(0), other)
    run(jax.random.key(1), params.replace(temperature=jnp.asarray(1.3, jnp.float32)))
    # A new env object with the same config is the same static argument.
    env2, _ = make()
    assert env2 == env and hash(env2) == hash(env)


def test_temperature_changes_dream_statistics_and_vmaps():
    env, params = make(max_steps=2100, done_bias=-30.0)
    keys = jax.random.split(jax.random.key(4), 64)

    def spread(temperature):
        p = params.replace(temperature=temperature)
        trajectories = jax.vmap(
            lambda k: dream_rollout.rollout_trajectory(k, env, p, policy, C_PARAMS, 6)
        )(keys)
        return jnp.std(trajectories.z[:, -1], axis=0).mean()

    temperatures = jnp.array([0.05, 1.5])
    spreads = jax.jit(jax.vmap(spread))(temperatures)
    assert spreads[0] < 0.7 * spreads[1]
    looped = [jax.jit(spread)(t) for t in temperatures]  # one compile: τ is traced
    np.testing.assert_allclose(spreads, looped, rtol=1e-4)


def test_car_racing_needs_a_reward_head():
    with pytest.raises(dream.DreamNotTrainableError, match="no reward head"):
        dream.make_dream("car_racing", mdn_rnn.CAR_RACING)
    with_reward = mdn_rnn.MDNRNNConfig(predict_reward=True)
    env, max_steps = dream.make_dream("car_racing", with_reward)
    assert env.reward_kind == "model" and env.obs_dim == 32 + 256 and max_steps == 1000


def test_bad_params_raise():
    env, _ = make()
    m_params = mdn_rnn.init_params(jax.random.key(0), M_CONFIG)
    with pytest.raises(ValueError, match="initial_mu"):
        env.make_params(m_params, jnp.zeros((3, 5)), jnp.zeros((3, 5)))
    with pytest.raises(ValueError, match="no default params"):
        env.default_params  # noqa: B018


def test_render_decodes_to_uint8_frames():
    # Shapes only (eval_shape): V itself is tested in test_vae.py.
    config = vae.VAEConfig(latent_dim=4)
    vae_params = jax.eval_shape(lambda key: vae.init_params(key, config), jax.random.key(0))
    frames = jax.eval_shape(dream.render, vae_params, jnp.zeros((2, 3, 4)))
    assert frames.shape == (2, 3, 64, 64, 3) and frames.dtype == jnp.uint8
