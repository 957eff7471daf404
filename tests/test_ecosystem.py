"""The ecosystem contract: gymnax's and evosax's own tools drive the dream, unchanged.

How a user hands the dream to each library (what these tests do):

- gymnax `experimental.RolloutWrapper`: `env, _ = dream.make(...)`, then
  `RolloutWrapper(forward, env=env, num_env_steps=T)`; the env carries its params.
- evosax `GymnaxProblem` (names only): `gymnax.register("wm_jax/Dream-v0", lambda: env)` once,
  then `GymnaxProblem("wm_jax/Dream-v0", policy, episode_length=T)`.
- evosax `BraxProblem` (names only, default `env_kwargs={"backend": "spring"}`):
  `brax.envs.register_environment("wm_dream", functools.partial(BraxDream, env))`, then
  `BraxProblem("wm_dream", policy, episode_length=T)`.
"""

import dataclasses
import functools
import uuid

import brax.envs
import gymnax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dream_toys import counter_model
from evosax.algorithms import CMA_ES
from evosax.problems import MLP, BraxProblem, GymnaxProblem, tanh_output_fn
from gymnax.experimental import RolloutWrapper

from wm_jax import dream
from wm_jax.dream import brax_dream
from wm_jax.dream import rollout as dream_rollout
from wm_jax.models import controller, mdn_rnn

# Doom-shaped but tiny: z 4, LSTM 8, restart input, done head.
M_CONFIG = mdn_rnn.MDNRNNConfig(
    latent_dim=4, action_dim=1, hidden_size=8, num_mixtures=2, use_restart=True, predict_done=True
)
C_CONFIG = controller.ControllerConfig(
    inputs=("z", "c", "h"), latent_dim=4, hidden_size=8, action_dim=1
)
NUM_STEPS = 12


def make(config=M_CONFIG, m_params=None, max_steps=30, temperature=1.0):
    if m_params is None:
        m_params = mdn_rnn.init_params(jax.random.key(0), config)
    mu = jax.random.normal(jax.random.key(10), (5, config.latent_dim))
    logvar = jnp.full((5, config.latent_dim), -2.0)
    return dream.make("doom_take_cover", config, m_params, mu, logvar, temperature, max_steps)


def forward(policy_params, obs, key):
    """RolloutWrapper's `model_forward(policy_params, obs, key)`: our controller."""
    return controller.act(C_CONFIG, policy_params, obs)


def c_params(seed):
    return controller.init_params(jax.random.key(seed), C_CONFIG, scale=0.5)


def unique(name):
    """gymnax.register refuses a name twice per process."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def test_bare_dream_gives_one_clear_error_and_make_carries_params():
    bare, _ = dream.make_dream("doom_take_cover", M_CONFIG)
    for build in (
        lambda: bare.default_params,
        lambda: RolloutWrapper(forward, env=bare, num_env_steps=3),
        lambda: brax_dream.BraxDream(bare),
    ):
        with pytest.raises(ValueError, match="no default params.*with_params"):
            build()
    env, params = make()
    assert env.default_params is params and env.num_actions == 1
    # Equal (shared compiled code) only with the same params object: gymnax's params-less
    # step traces default_params as constants.
    assert env == bare.with_params(params) and env != bare
    assert env != bare.with_params(make()[1])
    with pytest.raises(ValueError, match="latent_dim"):
        dream.DreamEnv(dataclasses.replace(M_CONFIG, latent_dim=3)).with_params(params)


@pytest.fixture(scope="module")
def wrapper():
    """One wrapper for the module: its jitted rollouts are compiled once (`self` is static)."""
    env, _ = make()
    return RolloutWrapper(forward, env=env, num_env_steps=NUM_STEPS)


def test_rollout_wrapper_single_rollout_is_stepping_the_dream_by_hand(wrapper):
    env, params = wrapper.env, wrapper.env_params
    assert params is env.default_params and wrapper.input_shape == (env.obs_dim,)
    key, policy_params = jax.random.key(7), c_params(3)
    obs, action, reward, next_obs, done, cum_return = wrapper.single_rollout(key, policy_params)
    assert obs.shape == (NUM_STEPS, env.obs_dim) and action.shape == (NUM_STEPS, 1)
    assert reward.shape == done.shape == (NUM_STEPS,) and cum_return.shape == (1,)

    # The wrapper's key discipline, by hand with the dream's own gymnax API.
    key_reset, key = jax.random.split(key)
    hand_obs, state = env.reset(key_reset, params)
    hand = []
    for _ in range(NUM_STEPS):
        key, key_step, key_net = jax.random.split(key, 3)
        act = forward(policy_params, hand_obs, key_net)
        step_obs, state, rew, terminated, truncated, _ = env.step(key_step, state, act, params)
        hand.append((hand_obs, rew, terminated | truncated))
        hand_obs = step_obs
    np.testing.assert_allclose(obs, np.stack([h[0] for h in hand]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(reward, [h[1] for h in hand])
    np.testing.assert_array_equal(done, [h[2] for h in hand])
    alive = np.cumprod(np.concatenate([[1.0], 1.0 - np.asarray(done[:-1], np.float32)]))
    np.testing.assert_allclose(cum_return, [np.sum(reward * alive)], rtol=1e-6)


@pytest.mark.parametrize(
    ("done_at", "max_steps", "expected"), [(5, 30, 5), (50, 7, 7)], ids=["done", "truncated"]
)
def test_rollout_wrapper_return_equals_our_rollout(done_at, max_steps, expected):
    """An M whose done comes at a known step: the same return from gymnax and from us."""
    config, m_params = counter_model(done_at)
    env, params = make(config, m_params, max_steps=max_steps)
    c_config = dataclasses.replace(
        C_CONFIG, latent_dim=config.latent_dim, hidden_size=config.hidden_size
    )
    policy_params = controller.init_params(jax.random.key(1), c_config, scale=0.5)

    def act(policy_params, obs, key=None):
        return controller.act(c_config, policy_params, obs)

    wrapper = RolloutWrapper(act, env=env, num_env_steps=NUM_STEPS)
    *_, cum_return = wrapper.single_rollout(jax.random.key(2), policy_params)
    ours = dream_rollout.rollout(jax.random.key(2), env, params, act, policy_params, NUM_STEPS)
    assert float(cum_return[0]) == float(ours.episode_return) == expected


def test_rollout_wrapper_batch_rollout_is_single_rollouts(wrapper):
    keys = jax.random.split(jax.random.key(0), 3)
    batch = wrapper.batch_rollout(keys, c_params(1))
    obs, action, reward, _, done, cum_return = batch
    assert obs.shape == (3, NUM_STEPS, wrapper.env.obs_dim) and action.shape == (3, NUM_STEPS, 1)
    assert reward.shape == done.shape == (3, NUM_STEPS) and cum_return.shape == (3, 1)
    single = wrapper.single_rollout(keys[1], c_params(1))
    for got, want in zip(batch, single, strict=True):
        np.testing.assert_allclose(got[1], want, rtol=1e-5, atol=1e-6)
    # Survival reward: +1 per step alive, so a return counts the steps until done.
    assert np.all((cum_return >= 1) & (cum_return <= NUM_STEPS))


def test_rollout_wrapper_population_rollout_is_batch_rollouts(wrapper):
    keys = jax.random.split(jax.random.key(0), 3)
    population = jax.tree.map(lambda *leaves: jnp.stack(leaves), c_params(1), c_params(2))
    pop = wrapper.population_rollout(keys, population)
    assert pop[0].shape == (2, 3, NUM_STEPS, wrapper.env.obs_dim) and pop[-1].shape == (2, 3, 1)
    for member in (0, 1):
        batch = wrapper.batch_rollout(keys, c_params(member + 1))
        for got, want in zip(pop, batch, strict=True):
            np.testing.assert_allclose(got[member], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(pop[1][0], pop[1][1])  # the members act differently


def policy_module(action_dim=1):
    return MLP(layer_sizes=(8, action_dim), output_fn=tanh_output_fn)


def test_evosax_gymnax_problem_evaluates_a_cma_es_population():
    config, m_params = counter_model(done_at=4)
    env, _ = make(config, m_params)
    name = unique("wm_jax/Dream-v0")
    gymnax.register(name, lambda: env)  # GymnaxProblem takes registered names only
    problem = GymnaxProblem(
        name,
        policy_module(),
        episode_length=NUM_STEPS,
        num_rollouts=2,
        env_params={"temperature": 1.3},  # field overrides of the dream's params
    )
    assert problem.env is env and float(problem.env_params.temperature) == 1.3
    assert problem.observation_shape == (env.obs_dim,) and problem.num_actions == 1

    key_sample, key_es, key_ask, key_eval = jax.random.split(jax.random.key(0), 4)
    solution = problem.sample(key_sample)
    es = CMA_ES(population_size=4, solution=solution)
    es_params = es.default_params
    es_state = es.init(key_es, solution, es_params)
    population, es_state = es.ask(key_ask, es_state, es_params)
    fitness, _, metrics = problem.eval(key_eval, population, problem.init(key_eval))
    # Done at step 4 whatever the policy: every member's return is 4.
    np.testing.assert_array_equal(fitness, np.full(4, 4.0))
    assert metrics["env_states"][0].shape == (4, 2, NUM_STEPS, env.obs_dim)


def test_evosax_brax_problem_with_default_env_kwargs_drives_brax_dream():
    config, m_params = counter_model(done_at=4)
    env, _ = make(config, m_params)
    name = unique("wm_dream")
    # create() passes evosax's default env_kwargs {"backend": "spring"} to BraxDream.
    brax.envs.register_environment(name, functools.partial(brax_dream.BraxDream, env))
    problem = BraxProblem(name, policy_module(), episode_length=NUM_STEPS, num_rollouts=2)
    assert problem.observation_shape == (env.obs_dim,) and problem.action_shape == (1,)

    keys = jax.random.split(jax.random.key(0), 3)
    population = jax.tree.map(lambda *leaves: jnp.stack(leaves), *map(problem.sample, keys))
    fitness, _, metrics = problem.eval(jax.random.key(1), population, problem.init(keys[0]))
    np.testing.assert_array_equal(fitness, np.full(3, 4.0))
    assert metrics["env_states"].obs.shape == (3, 2, NUM_STEPS, env.obs_dim)
