"""Real-game rollouts through worker processes, batched V → C → M, and the evaluation report."""

import dataclasses
import functools
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dream_toys import counter_model
from fake_games import CountingGame

from wm_jax import dream
from wm_jax.envs import real_rollout
from wm_jax.es import evolve
from wm_jax.models import controller, mdn_rnn, vae
from wm_jax.pipeline import evaluate

M_CONFIG = mdn_rnn.MDNRNNConfig(
    latent_dim=4, action_dim=1, hidden_size=3, num_mixtures=2, use_restart=True, predict_done=True
)
C_CONFIG = controller.ControllerConfig(
    inputs=("z", "c", "h"), latent_dim=4, hidden_size=3, action_dim=1, use_bias=True
)


@pytest.fixture(scope="module")
def models():
    # Random weights of V's shapes without compiling V's initialiser (only encode is needed).
    config = vae.VAEConfig(latent_dim=4)
    shapes = jax.eval_shape(lambda key: vae.init_params(key, config), jax.random.key(0))
    rng = np.random.default_rng(0)
    vae_params = jax.tree.map(
        lambda s: jnp.asarray(0.05 * rng.standard_normal(s.shape), s.dtype), shapes
    )
    m_params = mdn_rnn.init_params(jax.random.key(1), M_CONFIG)
    return real_rollout.RealModels(vae_params, M_CONFIG, m_params)


@pytest.fixture(scope="module")
def population():
    return 0.8 * jax.random.normal(jax.random.key(2), (3, controller.num_params(C_CONFIG)))


def reference_episode(key, models, flat, seed, episode_id):
    """One episode in-process, step by step, the way the authors' code plays it."""
    game = CountingGame()
    frame = game.reset(seed)
    memory = mdn_rnn.initial_state(M_CONFIG)
    params = controller.unflatten_fn(C_CONFIG)(flat)
    total, restart = 0.0, True
    while True:
        mu, logvar = vae.encode(models.vae_params, vae.frames_to_float(frame))
        step_key = jax.random.fold_in(jax.random.fold_in(key, episode_id), game.steps)
        z = mu + jnp.exp(logvar / 2) * jax.random.normal(step_key, mu.shape)
        action = controller.act(C_CONFIG, params, controller.features(C_CONFIG, z, memory))
        memory, _ = mdn_rnn.forward_step(
            M_CONFIG, models.m_params, memory, z, action, jnp.asarray(restart)
        )
        restart = False
        frame, reward, terminated, _ = game.step(np.asarray(action))
        total += reward
        if terminated:
            return total, game.steps


def test_population_on_worker_pool_matches_in_process_play(models, population):
    key = jax.random.key(3)
    seeds = np.array([[5, 6], [7, 8], [9, 10]])
    with real_rollout.EnvPool(CountingGame, 2) as pool:
        results = real_rollout.evaluate_population_real(
            key, pool, models, C_CONFIG, population, 2, seeds
        )
    assert results.returns.shape == (3, 2) and np.all(np.isfinite(results.returns))
    np.testing.assert_array_equal(results.lengths, seeds % 4 + 3)
    for member, rollout in [(0, 0), (2, 1)]:
        expected, length = reference_episode(
            key, models, population[member], int(seeds[member, rollout]), member * 2 + rollout
        )
        assert results.lengths[member, rollout] == length
        np.testing.assert_allclose(results.returns[member, rollout], expected, rtol=1e-4)
    # Episode randomness follows the episode, not the worker: one worker gives the same numbers.
    with real_rollout.EnvPool(CountingGame, 1) as pool:
        single = real_rollout.evaluate_population_real(
            key, pool, models, C_CONFIG, population, 2, seeds
        )
    np.testing.assert_allclose(single.returns, results.returns, rtol=1e-5)


def test_a_crashed_worker_loses_one_episode_not_the_run(models, population):
    seeds = np.array([[4, 13], [6, 7], [8, 9]])
    with real_rollout.EnvPool(functools.partial(CountingGame, crash_seed=13), 2) as pool:
        with pytest.warns(RuntimeWarning, match="episode 1 lost"):
            results = real_rollout.evaluate_population_real(
                jax.random.key(4),
                pool,
                models,
                C_CONFIG,
                population,
                2,
                seeds,
                max_lost_fraction=0.5,
            )
        assert np.isnan(results.returns[0, 1])
        assert np.isfinite(np.delete(results.returns.reshape(-1), 1)).all()
        # The restarted worker keeps serving.
        again = real_rollout.evaluate_population_real(
            jax.random.key(4), pool, models, C_CONFIG, population[:1], 1, [[4]]
        )
        np.testing.assert_allclose(again.returns[0, 0], results.returns[0, 0], rtol=1e-5)


def test_evaluate_controller_reports_mean_std_and_uses_unseen_seeds(models, population):
    with real_rollout.EnvPool(CountingGame, 2) as pool:
        result = evaluate.evaluate_controller(
            jax.random.key(5),
            pool,
            models,
            C_CONFIG,
            population[1],
            num_episodes=5,
            progress=False,
        )
        with pytest.raises(ValueError, match="overlaps the training seeds"):
            evaluate.evaluate_controller(
                jax.random.key(5), pool, models, C_CONFIG, population[1], 2, seed_offset=0
            )
    assert evaluate.EVAL_SEED_OFFSET == evolve.TRAIN_SEED_LIMIT == 10_000_000
    np.testing.assert_array_equal(result.seeds, 10_000_000 + np.arange(5))
    assert result.returns.shape == (5,) and np.all(np.isfinite(result.returns))
    assert result.mean == pytest.approx(result.returns.mean())
    assert result.std == pytest.approx(result.returns.std())
    assert "over 5 episodes" in result.summary()


def test_interrupted_evaluation_resumes_per_episode_with_the_same_results(
    models, population, tmp_path
):
    record = tmp_path / "episodes.jsonl"
    with real_rollout.EnvPool(CountingGame, 2) as pool:
        args = (jax.random.key(6), pool, models, C_CONFIG, population[2], 5)
        whole = evaluate.evaluate_controller(*args, progress=False)
        first = evaluate.evaluate_controller(*args, progress=False, record_path=record)
        rows = record.read_text().splitlines()
        assert len(rows) == 5
        np.testing.assert_allclose(first.returns, whole.returns, rtol=1e-6)
        # A kill after three episodes, the last line cut short: two are played again.
        kept = [json.loads(row) for row in rows][:3]
        record.write_text("".join(json.dumps(r) + "\n" for r in kept) + '{"episode": 4, "se')
        played = []
        original = real_rollout.evaluate_population_real

        def counting(*a, **k):
            result = original(*a, **k)
            played.append(result.returns.size)
            return result

        real_rollout.evaluate_population_real = counting
        try:
            resumed = evaluate.evaluate_controller(*args, progress=False, record_path=record)
        finally:
            real_rollout.evaluate_population_real = original
    assert played == [2]
    np.testing.assert_allclose(resumed.returns, whole.returns, rtol=1e-6)
    np.testing.assert_array_equal(resumed.lengths, whole.lengths)
    np.testing.assert_array_equal(resumed.seeds, whole.seeds)


def test_evaluate_in_dream():
    config, m_params = counter_model(done_at=5)
    env, _ = dream.make_dream("doom_take_cover", config)
    params = env.make_params(m_params, jnp.zeros((1, 2)), jnp.zeros((1, 2)))
    c_config = controller.ControllerConfig(
        inputs=("z", "c", "h"), latent_dim=2, hidden_size=2, action_dim=1, use_bias=False
    )
    result = evaluate.evaluate_in_dream(
        jax.random.key(0),
        env,
        params,
        c_config,
        controller.zeros_params(c_config),
        8,
        max_steps=20,
        chunk_size=4,
    )
    np.testing.assert_array_equal(result.returns, np.full(8, 5.0))
    assert result.mean == 5.0 and result.std == 0.0


def test_mismatched_controller_and_game_raise(models):
    three_actions = controller.ControllerConfig(kind="linear_z", inputs=("z",), latent_dim=4)
    with (
        real_rollout.EnvPool(CountingGame, 1) as pool,
        pytest.raises(ValueError, match="takes 1 actions"),
    ):
        real_rollout.evaluate_population_real(
            jax.random.key(0), pool, models, three_actions, np.zeros((1, 15)), 1
        )
    with pytest.raises(ValueError, match="need M"):
        real_rollout.make_policy_step(C_CONFIG, None)


def _missing(*modules):
    return [name for name in modules if importlib.util.find_spec(name) is None]


@pytest.mark.parametrize(
    ("game", "action_dim", "needs"),
    [("doom_take_cover", 1, ("vizdoom",)), ("car_racing", 3, ("gymnasium", "Box2D"))],
)
def test_controller_plays_a_few_frames_of_each_real_game(models, game, action_dim, needs):
    missing = _missing(*needs)
    if missing:
        pytest.skip(f"{game} needs {missing}, not installed")
    m_config = dataclasses.replace(M_CONFIG, action_dim=action_dim)
    c_config = dataclasses.replace(C_CONFIG, action_dim=action_dim)
    game_models = models._replace(
        m_config=m_config, m_params=mdn_rnn.init_params(jax.random.key(6), m_config)
    )
    c_params = controller.init_params(jax.random.key(7), c_config)
    result = evaluate.evaluate_controller(
        jax.random.key(8),
        game,
        game_models,
        c_config,
        c_params,
        num_episodes=2,
        num_workers=2,
        max_steps=5,
        progress=False,
    )
    np.testing.assert_array_equal(result.lengths, [5, 5])
    assert np.all(np.isfinite(result.returns))


def test_random_policy_baseline_is_seeded_on_the_evaluation_seeds():
    pytest.importorskip("vizdoom")
    first = evaluate.evaluate_random_policy("doom_take_cover", num_episodes=2)
    again = evaluate.evaluate_random_policy("doom_take_cover", num_episodes=2)
    np.testing.assert_array_equal(first.seeds, evaluate.EVAL_SEED_OFFSET + np.arange(2))
    np.testing.assert_array_equal(first.returns, again.returns)  # same seeds, same episodes
    # Take Cover pays +1 per frame alive: the return is the episode's length.
    np.testing.assert_array_equal(first.returns, first.lengths)
    assert first.mean == pytest.approx(np.mean(first.returns)) and first.mean > 50
