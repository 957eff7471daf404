"""The brax adapter: brax's own PPO trains a couple of iterations inside a tiny dream."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
from brax.training.agents.ppo import networks as ppo_networks
from brax.training.agents.ppo import train as ppo

from wm_jax import dream
from wm_jax.dream import brax_dream
from wm_jax.models import mdn_rnn

M_CONFIG = mdn_rnn.MDNRNNConfig(
    latent_dim=4, action_dim=1, hidden_size=8, num_mixtures=2, use_restart=True, predict_done=True
)


def make_env(done_bias=0.0):
    env, _ = dream.make_dream("doom_take_cover", M_CONFIG)
    m_params = mdn_rnn.init_params(jax.random.key(0), M_CONFIG)
    m_params["head"]["bias"] = m_params["head"]["bias"].at[-1].set(done_bias)
    params = env.make_params(m_params, jnp.zeros((3, 4)), jnp.zeros((3, 4)), 1.0, 2100)
    return brax_dream.BraxDream(env, params)


def test_adapter_steps_like_the_dream():
    env = make_env()
    assert env.observation_size == 4 + 8 + 8 and env.action_size == 1
    state = jax.jit(env.reset)(jax.random.PRNGKey(0))  # brax's raw uint32 keys
    state = jax.jit(env.step)(state, jnp.array([0.2]))
    assert state.obs.shape == (20,) and state.reward == 1.0
    assert state.done.dtype == jnp.float32 and int(state.pipeline_state.time) == 1


def test_compat_shim_replicates_inside_its_block_and_leaves_jax_as_it_was():
    had = hasattr(jax, "device_put_replicated")
    with brax_dream.jax_compat() as added:
        assert added is not had
        with brax_dream.jax_compat() as added_again:
            assert not added_again  # already there: nothing replaced
        tree = {"w": jnp.arange(3.0)}
        out = jax.device_put_replicated(tree, jax.local_devices()[:1])
        np.testing.assert_array_equal(out["w"], [[0.0, 1.0, 2.0]])
    assert hasattr(jax, "device_put_replicated") is had


def test_brax_ppo_trains_in_the_dream():
    tiny = functools.partial(
        ppo_networks.make_ppo_networks,
        policy_hidden_layer_sizes=(8,),
        value_hidden_layer_sizes=(8,),
    )
    num_envs, unroll_length, iterations = 8, 10, 2
    with brax_dream.jax_compat():  # brax 0.14.2 PPO calls jax.device_put_replicated
        _, params, metrics = ppo.train(
            environment=make_env(),
            num_timesteps=num_envs * unroll_length * iterations,
            episode_length=50,
            num_envs=num_envs,
            batch_size=8,
            num_minibatches=1,
            unroll_length=unroll_length,
            num_updates_per_batch=1,
            num_evals=1,
            run_evals=False,
            network_factory=tiny,
            seed=0,
        )
    assert metrics["training/sps"] > 0
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(params))
