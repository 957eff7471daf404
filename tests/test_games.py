"""One game spec: `wm_jax.register_game` is all a game takes, in this process and in workers."""

import json

import numpy as np
import pytest
from fake_games import CountingGame

import wm_jax
from wm_jax import dream
from wm_jax.data import EpisodeStore
from wm_jax.envs import registry
from wm_jax.envs.collect import collect, episode_seeds
from wm_jax.envs.env_pool import EnvPool
from wm_jax.pipeline import config, presets, probe, run_models

COUNTING = wm_jax.GameSpec(
    name="counting",
    env="fake_games:CountingGame",  # importable in workers: they inherit this sys.path
    random_policy="wm_jax.envs.base:UniformRandomPolicy",
    action_dim=1,
    max_steps=50,
    fixed_actions={"back": (-1.0,), "on": (1.0,)},
    preset_overrides={"smoke": ("collect.episodes=3",)},
)


@pytest.fixture
def fresh_registry(monkeypatch):
    """Games registered in a test are gone after it."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_one_call_registers_a_game_everywhere(fresh_registry):
    assert wm_jax.register_game(COUNTING) is COUNTING
    assert "counting" in config.EXPERIMENTS and config.GAME_OF["counting"] == "counting"
    assert dream.GAMES["counting"] == ("model", ("z", "h"))
    assert probe.FIXED_ACTIONS["counting"] == {"back": (-1.0,), "on": (1.0,)}
    smoke = presets.preset("counting", "smoke")
    assert smoke.game == "counting" and smoke.collect.episodes == 3  # the spec's override
    assert smoke.mdn_rnn.action_dim == 1 and smoke.mdn_rnn.predict_reward
    assert config.from_dict(json.loads(json.dumps(smoke.to_dict()))) == smoke
    c_config = run_models.controller_config(smoke)
    assert c_config.inputs == ("z", "h") and c_config.use_bias
    env, max_steps = dream.make_dream("counting", smoke.mdn_rnn)
    assert env.inputs == ("z", "h") and max_steps == 50

    wm_jax.register_game(COUNTING)  # the same spec again: nothing happens
    with pytest.raises(ValueError, match="registered already"):
        wm_jax.register_game(COUNTING.replace(max_steps=10))
    wm_jax.register_game(COUNTING.replace(max_steps=10), replace=True)
    assert registry.game_spec("counting").max_steps == 10


@pytest.mark.parametrize(
    "change, message",
    [
        ({"env": "fake_games.CountingGame"}, "module:attribute"),
        ({"dream_reward": "score"}, "dream_reward"),
        ({"controller_inputs": ("h", "z")}, "controller_inputs"),
        ({"fixed_actions": {"both": (1.0, 1.0)}}, "fixed action 'both'"),
        ({"mirror_signs": (1.0, -1.0)}, "mirror_signs"),
        ({"preset_overrides": {"tiny": ()}}, "per scale"),
    ],
)
def test_a_bad_spec_stops_at_registration_naming_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        COUNTING.replace(**change)


def test_specs_pickle_hash_and_read_back_as_dicts():
    import pickle

    assert pickle.loads(pickle.dumps(COUNTING)) == COUNTING
    assert hash(COUNTING) == hash(COUNTING.replace())
    spec = registry.game_spec("minatar_asterix")
    assert dict(spec.env_kwargs) == {"game": "minatar_asterix", "env_id": "Asterix-MinAtar"}
    assert [name for name, _ in spec.fixed_actions] == ["noop", "left", "up", "right", "down"]


def _counting_frames(game_seed):
    game = CountingGame()
    frames = [game.reset(game_seed)]
    while len(frames) < game_seed % 4 + 3:  # the game's episode length, frames before each step
        frames.append(game.step(np.zeros(1))[0])
    return np.stack(frames)


def test_workers_play_a_game_registered_only_in_this_process(fresh_registry, tmp_path):
    # Workers used to get the game's name only and look it up in their own registry, which
    # lacks a game registered here: now they get the whole spec.
    wm_jax.register_game(COUNTING)
    summary = collect("counting", tmp_path, 2, workers=2, seed=3, progress=False)
    assert (summary["stored"], summary["workers"]) == (2, 2)
    store = EpisodeStore(tmp_path)
    for index in (0, 1):
        game_seed, _ = episode_seeds(3, index)
        np.testing.assert_array_equal(store.read(index).frames, _counting_frames(game_seed))

    with EnvPool.for_game("counting", 2) as pool:
        assert (pool.name, pool.action_dim) == ("counting", 1)
        for slot in (0, 1):
            pool.send(slot, "reset", 5 + slot)
            np.testing.assert_array_equal(pool.recv(slot), CountingGame().reset(5 + slot))


def test_a_gymnax_minatar_game_is_one_registration(fresh_registry, tmp_path):
    wm_jax.register_game(
        wm_jax.minatar_spec("minatar_freeway", "Freeway-MinAtar", ("noop", "up", "down"))
    )
    smoke = presets.preset("minatar_freeway", "smoke")
    assert smoke.game == "minatar_freeway" and smoke.controller.train_in == "dream"
    summary = collect("minatar_freeway", tmp_path, 1, workers=1, max_frames=5, progress=False)
    assert summary["stored"] == 1
    # Freeway's 7 channels draw colours Breakout's 4 never do (its cars' speed marks).
    from wm_jax.envs.minatar import PALETTE

    frames = EpisodeStore(tmp_path).read(0).frames
    colours = {tuple(c) for c in frames.reshape(-1, 3).tolist()}
    assert colours & {tuple(c) for c in PALETTE[5:8].tolist()}


@pytest.mark.slow
def test_minatar_asterix_smoke_end_to_end(tmp_path):
    from test_experiment import _check_run_folder

    from wm_jax.pipeline import experiment

    experiment.run("minatar_asterix", "smoke", tmp_path / "r", progress=False)
    results = _check_run_folder(tmp_path / "r", "minatar_asterix", episodes=2)
    assert results["controller"]["trained_in"] == "dream"
    report = (tmp_path / "r" / "report" / "report.md").read_text()
    for action in ("noop", "left", "up", "right", "down"):  # the probe's fixed actions
        assert f"| {action} |" in report
