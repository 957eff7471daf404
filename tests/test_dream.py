"""The dream as a gymnax environment: shapes, M equivalence, masks, traces, temperature."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dream_toys import C_PARAMS, M_CONFIG, SATURATE, _quiet_mixture, _zeros, make, policy

from wm_jax import dream
from wm_jax.dream import rollout as dream_rollout
from wm_jax.models import mdn_rnn, vae


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


def car_racing_done_model(done_at: int, step_reward: float = -0.1, penalty: float = -100.0):
    """A CarRacing-shaped M (z 2, a 3, LSTM 2, done and reward heads, no restart input): done
    first at step `done_at` (1-based), reward `step_reward` before it and `penalty` from it on.

    Cell 0 counts as `dream_toys.counter_model`'s: c0_t = tanh(0.5) t. Cell 1 forgets and reads
    h0_{t-1} through g = tanh(500 (h0_{t-1} - threshold)), so h1_t = -tanh(1) before step
    `done_at` and +tanh(1) from it on; the reward head maps those to step_reward and penalty.
    """
    config = mdn_rnn.MDNRNNConfig(
        latent_dim=2,
        action_dim=3,
        hidden_size=2,
        num_mixtures=1,
        predict_done=True,
        predict_reward=True,
    )
    params = _zeros(config)
    step_size = float(jnp.tanh(0.5))
    h0 = lambda t: float(jnp.tanh(step_size * t))  # noqa: E731
    i, f, g, o = 0, 2, 4, 6  # gate columns of cell 0; cell 1 is the next column of each
    bias = jnp.zeros(8).at[jnp.array([i, i + 1, f, o, o + 1])].set(SATURATE)
    bias = bias.at[f + 1].set(-SATURATE).at[g].set(0.5).at[g + 1].set(-500.0 * h0(done_at - 1.5))
    h0_row = config.latent_dim + config.action_dim  # inputs [z, a], then h_{t-1}
    kernel = params["lstm"]["kernel"].at[h0_row, g + 1].set(500.0)
    size = config.latent_dim * config.num_mixtures * 3  # head: mixture, done, reward
    scale = float(jnp.tanh(1.0))
    head_kernel = params["head"]["kernel"].at[0, size].set(100.0)
    head_kernel = head_kernel.at[1, size + 1].set((penalty - step_reward) / (2 * scale))
    head_bias = (
        _quiet_mixture(config, params["head"]["bias"]).at[size].set(-100.0 * h0(done_at - 0.5))
    )
    head_bias = head_bias.at[size + 1].set((penalty + step_reward) / 2)
    params = {
        "lstm": {"kernel": kernel, "bias": bias},
        "head": {"kernel": head_kernel, "bias": head_bias},
    }
    return config, params


@pytest.mark.parametrize("done_at", [1, 4])
def test_car_racing_dream_ends_at_ms_done_and_pays_the_penalty_once(done_at):
    config, m_params = car_racing_done_model(done_at)
    env, max_steps = dream.make_dream("car_racing", config)
    assert max_steps == 1000
    params = env.make_params(m_params, jnp.zeros((3, 2)), jnp.full((3, 2), -4.0), max_steps=30)

    def full_gas(policy_params, obs):
        del policy_params, obs
        return jnp.array([0.0, 1.0, 0.0])

    key = jax.random.key(2)
    expected = -0.1 * (done_at - 1) - 100.0
    for chunk_size in (None, 3):
        result = dream_rollout.rollout(key, env, params, full_gas, None, 30, chunk_size=chunk_size)
        assert int(result.length) == done_at
        np.testing.assert_allclose(float(result.episode_return), expected, atol=1e-3)
    # Past M's done the same M keeps paying the penalty, every step: what a dream without a
    # done (M trained on full 1,000-frame episodes) paid the controller.
    trajectory = dream_rollout.rollout_trajectory(key, env, params, full_gas, None, 8)
    np.testing.assert_array_equal(trajectory.done, np.arange(8) >= done_at - 1)
    np.testing.assert_array_equal(trajectory.valid, np.arange(8) < done_at)
    np.testing.assert_allclose(trajectory.reward[done_at - 1 :], -100.0, atol=1e-3)
    np.testing.assert_allclose(trajectory.reward[: done_at - 1], -0.1, atol=1e-3)


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
