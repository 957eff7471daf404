"""The iterative training procedure (World Models §5) and its collection policy."""

import json
import pickle
from collections import deque

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.core import checkpoint
from wm_jax.data import EpisodeStore
from wm_jax.data.encode import MIRROR_OFFSET
from wm_jax.envs import DriverMix, game_spec, make_env, random_policy, real_rollout
from wm_jax.envs.collect import _batched_share, collect, episode_seeds, run_episode
from wm_jax.envs.controller_policy import ControllerPolicy
from wm_jax.es import evolve
from wm_jax.models import controller, mdn_rnn, vae
from wm_jax.pipeline import config, experiment, iterative, rounds, run_models, stages
from wm_jax.pipeline.presets import preset

M_CONFIG = mdn_rnn.MDNRNNConfig(
    latent_dim=4, action_dim=1, hidden_size=3, num_mixtures=2, use_restart=True, predict_done=True
)
C_CONFIG = controller.ControllerConfig(
    inputs=("z", "c", "h"), latent_dim=4, hidden_size=3, action_dim=1, use_bias=False
)
SPEC = game_spec("doom_take_cover")
MIRROR = ["data.mirror=true"]


@pytest.fixture(scope="module")
def factory_args():
    # Random weights of V's shapes without compiling V's initialiser (only encode is needed).
    shapes = jax.eval_shape(lambda k: vae.init_params(k, vae.VAEConfig(4)), jax.random.key(0))
    rng = np.random.default_rng(0)
    vae_params = jax.tree.map(lambda s: 0.05 * rng.standard_normal(s.shape).astype(s.dtype), shapes)
    m_params = mdn_rnn.init_params(jax.random.key(1), M_CONFIG)
    flat = 2.0 * rng.standard_normal(controller.num_params(C_CONFIG))  # saturates tanh at times
    return C_CONFIG, flat, vae_params, M_CONFIG, m_params


def _frames(count, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)


def _play(factory, seed, frames):
    policy = factory(SPEC, seed)
    return np.stack([policy(frame) for frame in frames])


def test_policy_factory_pickles_is_deterministic_and_in_range(factory_args):
    factory = ControllerPolicy(*factory_args, noise=0.3)
    frames = _frames(6)
    actions = _play(factory, 7, frames)  # builds the jitted step: it must not travel
    clone = pickle.loads(pickle.dumps(factory))
    assert clone._device is None and isinstance(clone.m_params["lstm"]["kernel"], np.ndarray)
    np.testing.assert_array_equal(_play(clone, 7, frames), actions)
    assert actions.shape == (6, 1) and actions.dtype == np.float32
    assert np.all(np.abs(actions) <= 1.0)
    assert not np.array_equal(_play(factory, 8, frames), actions)  # the noise follows the seed
    assert "noise=0.3" in repr(factory)


def test_policy_without_noise_acts_like_the_batched_evaluation_step(factory_args):
    """ControllerPolicy(noise=0) is real_rollout's V → C → M step, one slot of a batch."""
    c_config, flat, vae_params, m_config, m_params = factory_args
    frames, others = _frames(5), _frames(5, seed=1)
    seed = 123
    actions = _play(ControllerPolicy(*factory_args, noise=0.0), seed, frames)
    step = real_rollout.make_policy_step(c_config, m_config)
    memory = mdn_rnn.initial_state(m_config, (2,))
    flats = np.stack([flat, -flat]).astype(np.float32)
    keys = jax.random.key_data(jax.vmap(jax.random.key)(np.array([seed, 9])))
    for t in range(len(frames)):
        batched, memory = step(
            keys,
            vae_params,
            m_params,
            flats,
            memory,
            np.stack([frames[t], others[t]]),
            np.array([t == 0, t == 0]),
            np.array([t, t], np.int32),
        )
        # Equal to float32 rounding, which follows the batch (1 slot against 2) and the CPU's
        # vector width: 2e-6 apart on an AVX-512 EPYC, after C's tanh saturates at times.
        np.testing.assert_allclose(actions[t], np.asarray(batched[0]), atol=1e-5)


def test_a_controller_collects_batched_as_it_plays_in_process(factory_args, tmp_path):
    """§5 collection plays C over the whole game pool in one batched step; each episode is the
    one `ControllerPolicy` plays alone (same z samples, same noise), whatever the workers."""
    factory = ControllerPolicy(*factory_args, noise=0.3)
    kwargs = {"seed": 5, "max_frames": 15, "min_frames": 0, "progress": False, "policy": factory}
    two = collect("minatar_breakout", tmp_path / "two", 3, workers=2, **kwargs)
    assert two["stored"] == 3 and two["workers"] == 2
    spec = game_spec("minatar_breakout")
    env = make_env(spec)
    try:
        for index in range(3):  # one episode at a time, in this process: the same episodes
            a = EpisodeStore(tmp_path / "two").read(index)
            alone = run_episode(env, factory, spec, 5, index, 15)
            np.testing.assert_array_equal(alone.frames, a.frames)
            np.testing.assert_allclose(alone.actions, a.actions, atol=1e-5)
            np.testing.assert_array_equal(alone.rewards, a.rewards)
    finally:
        env.close()
    assert np.abs(a.actions).max() <= 1.0 and len(np.unique(a.actions)) > 3  # noisy, clipped


def test_a_driver_mix_plays_only_its_controller_episodes_batched():
    class Batched:
        def play_batched(self, *args):
            raise AssertionError("not played here")

    mix = DriverMix(Batched(), game_spec("car_racing").driver, 0.5)
    todo = deque(range(40))
    player, mine = _batched_share(mix, 7, todo)
    drivers = [i for i in range(40) if mix.picks_driver(episode_seeds(7, i)[1])]
    assert player is mix.base and 10 < len(drivers) < 30
    assert list(todo) == drivers and sorted(mine + drivers) == list(range(40))
    assert _batched_share(random_policy("car_racing"), 7, deque([1])) == (None, [])


def test_policy_factory_rejects_bad_input(factory_args):
    c_config, flat, vae_params, m_config, m_params = factory_args
    with pytest.raises(ValueError, match="flat_params"):
        ControllerPolicy(c_config, flat[:-1], vae_params, m_config, m_params)
    with pytest.raises(ValueError, match="need M"):
        ControllerPolicy(c_config, flat, vae_params)
    with pytest.raises(ValueError, match="takes 3 actions"):
        ControllerPolicy(*factory_args)(game_spec("car_racing"), 0)


def test_iteration_config_counts_m_steps_and_refuses_frozen_settings():
    parent = preset("doom_take_cover", "smoke")
    assert iterative.iteration_config(parent, 10, 2, []).mdn_train.num_steps == 30
    changed = iterative.iteration_config(parent, 10, 2, ["mdn_train.num_steps=5"])
    assert changed.mdn_train.num_steps == 20
    for frozen in ("vae.kl_tolerance=1.0", "collect.max_frames=30", "controller.kind=linear_z"):
        with pytest.raises(config.ConfigError, match=frozen.split("=")[0]):
            iterative.iteration_config(parent, 10, 1, [frozen])


def test_refuses_a_run_whose_controller_was_trained_in_the_real_game(tmp_path):
    car = preset("car_racing", "smoke", train_in="real")
    experiment.prepare_run_dir(tmp_path, car)
    with pytest.raises(config.ConfigError, match="controller.train_in=real"):
        iterative.run(tmp_path, iterations=1)


# -------------------------------------------------------------------------------------------
# end to end on a smoke Doom run


@pytest.fixture(scope="module")
def iterated(doom_smoke_run):
    run_dir = doom_smoke_run
    # As the README's recipe: every episode also encoded mirrored (data.mirror).
    rows = iterative.run(
        run_dir, iterations=1, episodes=2, noise=0.1, overrides=MIRROR, progress=False
    )
    return run_dir, rows


@pytest.mark.slow
def test_an_iteration_collects_with_c_and_retrains_m_and_c(iterated):
    run_dir, rows = iterated
    sub = run_dir / "iterations" / "iter_1"
    assert {p.stem for p in (sub / "stages").iterdir()} == set(config.STAGES)
    parent_store, store = (
        EpisodeStore(run_dir / "data" / "episodes"),
        EpisodeStore(sub / "data/episodes"),
    )
    new = [1_000_000, 1_000_001]
    assert store.indices() == parent_store.indices() + new
    mirrored = [MIRROR_OFFSET + index for index in store.indices()]
    assert EpisodeStore(sub / "data" / "encoded").indices() == store.indices() + mirrored
    first = parent_store.indices()[0]
    assert store.path(first).stat().st_ino == parent_store.path(first).stat().st_ino  # a link
    assert not (sub / "data" / "new_episodes").exists()

    # The new episodes are the parent's C (with noise 0.1) playing: replay its stored frames.
    parent_config = config.from_dict(json.loads((run_dir / "config.json").read_text()))
    factory = run_models.controller_policy(parent_config, stages.RunPaths(run_dir), noise=0.1)
    for i, index in enumerate(new):
        episode = store.read(index)
        _, policy_seed = episode_seeds(iterative.collect_seed(parent_config.seed, 1), i)
        np.testing.assert_allclose(
            _play(factory, policy_seed, episode.frames), episode.actions, atol=1e-5
        )
    meta = store.read_meta()["iterations"][0]
    assert meta["first_index"] == 1_000_000 and "noise=0.1" in meta["policy"]

    # M continued from the parent's checkpoint; V is the parent's.
    parent_steps = checkpoint.latest_step(run_dir / "checkpoints" / "mdn_rnn")
    assert checkpoint.latest_step(sub / "checkpoints" / "mdn_rnn") == 2 * parent_steps
    assert len(checkpoint.all_steps(run_dir / "checkpoints" / "mdn_rnn")) >= 1  # untouched
    assert (sub / "checkpoints" / "vae").resolve() == (run_dir / "checkpoints" / "vae").resolve()
    m_rows = (sub / "metrics" / "train_mdn_rnn.jsonl").read_text().splitlines()
    assert json.loads(m_rows[-1])["step"] == 2 * parent_steps

    assert [row["iteration"] for row in rows] == [0, 1]
    assert rows[1]["episodes"] == rows[0]["episodes"] + 2 and rows[1]["m_steps"] == 2 * parent_steps
    table = (run_dir / "iterations" / "summary.md").read_text().splitlines()
    assert (
        len(table) == 6 and table[2].startswith("| 0 (parent) | ") and table[3].startswith("| 1 |")
    )
    assert table[5].startswith("Best real-game score on these seeds: round ")
    assert json.loads((run_dir / "iterations" / "summary.json").read_text()) == json.loads(
        json.dumps(rows)
    )


@pytest.mark.slow
def test_warm_start_centres_cma_es_on_the_previous_controller(iterated, tmp_path):
    run_dir, _ = iterated
    parent_config = config.from_dict(json.loads((run_dir / "config.json").read_text()))
    paths, parent = stages.RunPaths(tmp_path), stages.RunPaths(run_dir)
    iterative.warm_start_es(parent_config, paths, parent, 1)
    c_config = run_models.controller_config(parent_config)
    target = evolve.init_state(jax.random.key(0), c_config, parent_config.evolve)
    state = checkpoint.restore(paths.checkpoints("controller"), target=target)
    assert state.generation == 0
    np.testing.assert_array_equal(np.asarray(state.mean), run_models.load_controller(parent))
    assert float(state.es_state.std) == pytest.approx(parent_config.evolve.sigma_init)
    assert float(state.best_eval_return) == -jnp.inf


@pytest.mark.slow
def test_rerun_skips_a_finished_iteration_and_resumes_an_unfinished_one(iterated, capsys):
    run_dir, rows = iterated
    sub = run_dir / "iterations" / "iter_1"
    results = (sub / "results.json").stat().st_mtime_ns
    capsys.readouterr()
    again = iterative.run(
        run_dir, iterations=1, episodes=2, noise=0.1, overrides=MIRROR, progress=False
    )
    assert again == rows
    assert "[iterative] iteration 1 complete, skipped" in capsys.readouterr().out
    assert (sub / "results.json").stat().st_mtime_ns == results
    with pytest.raises(config.ConfigError, match="noise"):
        iterative.run(run_dir, iterations=1, episodes=2, noise=0.2, overrides=MIRROR)

    # A kill before the report: only the report runs again, nothing is collected or copied.
    (sub / "stages" / "report.json").unlink()
    m_step = checkpoint.latest_step(sub / "checkpoints" / "mdn_rnn")
    iterative.run(run_dir, iterations=1, episodes=2, noise=0.1, overrides=MIRROR, progress=False)
    out = capsys.readouterr().out
    for stage in (
        "collect",
        "train_vae",
        "encode",
        "train_mdn_rnn",
        "train_controller",
        "evaluate",
    ):
        assert f"[{stage}] complete, skipped" in out
    assert "[report] running" in out and "[collect] running" not in out
    assert checkpoint.latest_step(sub / "checkpoints" / "mdn_rnn") == m_step
    assert len(EpisodeStore(sub / "data" / "episodes")) == rows[1]["episodes"]


def test_a_rounds_new_episodes_never_reuse_the_parents_indices():
    from wm_jax.pipeline.iterative import INDEX_OFFSET, new_block

    assert new_block(list(range(150)), iteration=1) == 1  # the first round of a run
    assert new_block([*range(150), INDEX_OFFSET + 3], iteration=2) == 2
    # iterated again from an iteration folder: its data already holds block 1
    assert new_block([*range(150), INDEX_OFFSET + 99], iteration=1) == 2
    assert new_block([], iteration=1) == 1


def test_the_summary_names_the_best_round_not_only_the_last(tmp_path):
    def row(iteration, mean):
        real = {"mean": mean, "std": 10.0, "episodes": 20}
        return {"iteration": iteration, "run_dir": f"r{iteration}", "episodes": 1, "m_steps": 1,
                "m_final_loss": None, "dream": None, "real": real}  # fmt: skip

    rows = [row(0, 176.0), row(1, 670.0), row(2, 342.0)]
    assert rounds.best_row(rows)["iteration"] == 1
    assert rounds.best_row([row(0, 5.0), row(1, 5.0)])["iteration"] == 0  # ties: the earlier
    table = rounds.write_summary(tmp_path, rows)
    assert "round 1 (670 ± 10), `r1`" in table
    assert (tmp_path / "summary.md").read_text() == table
