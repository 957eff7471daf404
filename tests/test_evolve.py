"""CMA-ES in the dream: a solvable toy, vmap == loop, exact resume, sharded == unsharded, no
recompiles."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dream_toys import bump_reward_model

from wm_jax import dream
from wm_jax.dream import rollout as dream_rollout
from wm_jax.es import evolve
from wm_jax.models import controller

TOY_STEPS = 10
TOY_CONFIG = evolve.EvolveConfig(
    population_size=16,
    rollouts_per_member=2,
    sigma_init=0.1,
    eval_every=5,
    eval_rollouts=4,
    max_steps=TOY_STEPS,
    chunk_size=None,
    generations_per_call=5,
    checkpoint_every=5,
)
C_CONFIG = controller.ControllerConfig(latent_dim=2, hidden_size=2, action_dim=1)


@pytest.fixture(scope="module")
def toy():
    """A dream whose return is largest (best_reward per step) when the action is 0.5."""
    m_config, m_params, best_reward = bump_reward_model(target=0.5)
    env = dream.DreamEnv(m_config, reward="model", inputs=("z", "h"))
    params = env.make_params(m_params, jnp.zeros((4, 2)), jnp.zeros((4, 2)), 1.0, TOY_STEPS)
    return env, params, best_reward * TOY_STEPS


def test_cma_es_solves_a_toy_dream(toy, tmp_path):
    env, params, best_return = toy
    log_path = tmp_path / "metrics.jsonl"
    state = evolve.train_in_dream(
        jax.random.key(0),
        env,
        params,
        C_CONFIG,
        TOY_CONFIG,
        30,
        log_path=log_path,
        progress=False,
    )
    assert state.generation == 30
    rows = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [row["generation"] for row in rows] == list(range(1, 31))
    assert {"best_return", "mean_return", "worst_return", "sigma"} <= set(rows[0])
    assert rows[-1]["mean_return"] > 0.99 * best_return > rows[0]["mean_return"]
    assert float(state.best_eval_return) > 0.99 * best_return
    # The optimum: action tanh(b) = 0.5 whatever the (near-constant) features.
    mean = controller.unflatten_fn(C_CONFIG)(state.mean)
    assert abs(float(jnp.tanh(mean["b"][0])) - 0.5) < 0.05


def test_population_vmap_equals_python_loop(toy):
    env, params, _ = toy
    flat = 0.3 * jax.random.normal(jax.random.key(1), (3, controller.num_params(C_CONFIG)))
    key = jax.random.key(2)
    batched = jax.jit(
        lambda key, flat: evolve.evaluate_population_dream(
            key, env, params, C_CONFIG, flat, 2, TOY_STEPS
        )
    )(key, flat)
    assert batched.episode_return.shape == (3, 2)
    keys = jax.random.split(key, 6)
    unflatten = controller.unflatten_fn(C_CONFIG)

    @jax.jit
    def one(k, member):
        return dream_rollout.rollout(
            k,
            env,
            params,
            lambda p, o: controller.act(C_CONFIG, p, o),
            unflatten(member),
            TOY_STEPS,
        ).episode_return

    looped = [[one(keys[p * 2 + r], flat[p]) for r in range(2)] for p in range(3)]
    np.testing.assert_allclose(batched.episode_return, looped, rtol=1e-6)


def _read_rows(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for row in rows:
        row.pop("seconds_per_generation")
    return rows


def test_resume_after_kill_continues_identically(toy, tmp_path):
    env, params, _ = toy
    key = jax.random.key(3)
    straight = evolve.train_in_dream(
        key,
        env,
        params,
        C_CONFIG,
        TOY_CONFIG,
        10,
        checkpoint_dir=tmp_path / "a",
        log_path=tmp_path / "a.jsonl",
        progress=False,
    )
    evolve.train_in_dream(
        key,
        env,
        params,
        C_CONFIG,
        TOY_CONFIG,
        5,
        checkpoint_dir=tmp_path / "b",
        log_path=tmp_path / "b.jsonl",
        progress=False,
    )
    # A log line written after the last checkpoint, as if killed before the next save.
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write(json.dumps({"generation": 6, "stale": True}) + "\n")
    # "Kill": nothing survives in memory but the checkpoint folder and the log.
    resumed = evolve.train_in_dream(
        key,
        env,
        params,
        C_CONFIG,
        TOY_CONFIG,
        10,
        checkpoint_dir=tmp_path / "b",
        log_path=tmp_path / "b.jsonl",
        progress=False,
    )
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)
    assert _read_rows(tmp_path / "a.jsonl") == _read_rows(tmp_path / "b.jsonl")


def test_run_does_not_recompile_for_new_weights_or_temperature(toy):
    env, params, _ = toy
    evolver = evolve.make_dream_evolver(env, C_CONFIG, TOY_CONFIG)
    state = evolve.init_state(jax.random.key(4), C_CONFIG, TOY_CONFIG)
    state, metrics = evolver.run(state, params)
    assert metrics.best_return.shape == (TOY_CONFIG.generations_per_call,)
    before = evolver.run._cache_size()
    other = params.replace(
        model_params=jax.tree.map(lambda x: 0.9 * x, params.model_params),
        temperature=jnp.asarray(0.5, jnp.float32),
    )
    evolver.run(state, other)
    assert evolver.run._cache_size() == before
    assert evolve.make_dream_evolver(env, C_CONFIG, TOY_CONFIG) is evolver


def test_sharded_equals_unsharded_on_four_host_devices(tmp_path):
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import dataclasses, jax, jax.numpy as jnp, numpy as np
        from wm_jax import dream
        from wm_jax.models import controller
        from wm_jax.es import evolve
        from wm_jax.models import mdn_rnn
        assert jax.local_device_count() == 4, jax.devices()
        # A random Doom-like M whose episodes end at different steps, so compaction kicks in.
        m_config = mdn_rnn.MDNRNNConfig(latent_dim=4, action_dim=1, hidden_size=8,
                                        num_mixtures=3, use_restart=True, predict_done=True)
        m_params = mdn_rnn.init_params(jax.random.key(0), m_config)
        m_params["head"]["bias"] = m_params["head"]["bias"].at[-1].set(0.0)
        env, _ = dream.make_dream("doom_take_cover", m_config)
        params = env.make_params(m_params, jnp.zeros((4, 4)), jnp.zeros((4, 4)), 1.0, 30)
        c_config = controller.ControllerConfig(inputs=("z", "c", "h"), latent_dim=4,
                                               hidden_size=8, action_dim=1, use_bias=False)
        config = evolve.EvolveConfig(
            population_size=8, rollouts_per_member=4, sigma_init=0.5, eval_rollouts=8,
            max_steps=30, generations_per_call=2, eval_every=2, checkpoint_every=2,
            compact_min_batch=2)
        # The default (None) shards over as many devices as split the population evenly.
        auto = evolve._population_mesh(config)
        assert config.shard_population is None and auto is not None and auto.size == 4
        odd = dataclasses.replace(config, population_size=6, eval_rollouts=6)
        assert evolve._population_mesh(odd).size == 3
        runs = {{}}
        # unsharded plain chunks; sharded + compacted per device (shard_map); sharded full scan
        for name, shard, compact, chunk in [("plain", False, False, 4),
                                            ("compact", True, True, 4),
                                            ("full", True, False, None)]:
            cfg = dataclasses.replace(config, shard_population=shard, compact=compact,
                                      chunk_size=chunk)
            evolver = evolve.make_dream_evolver(env, c_config, cfg)
            state = evolve.init_state(jax.random.key(0), c_config, cfg)
            state, metrics = evolver.run(state, params)
            runs[name] = (state.es_state.mean, metrics.mean_return)
            if shard:  # the lowered program really splits the population 4 ways
                lowered = evolver.run.lower(state, params).as_text()
                assert '{{"pop"}}' in lowered, "population not sharded"
        exact = True
        for name in ("compact", "full"):
            for a, b in zip(runs["plain"], runs[name]):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
                exact = exact and np.array_equal(a, b)
        print("exact" if exact else "close")
        """
    )
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
    env["JAX_PLATFORMS"] = "cpu"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] in ("exact", "close")


def test_config_validation():
    with pytest.raises(ValueError, match="multiple of generations_per_call"):
        evolve.EvolveConfig(generations_per_call=10, eval_every=25)
    assert evolve.PAPER.population_size == 64 and evolve.PAPER.rollouts_per_member == 16
    assert evolve.PAPER.sigma_init == 0.1 and evolve.PAPER.eval_rollouts == 1024
