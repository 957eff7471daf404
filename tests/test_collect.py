"""Parallel rollout collection: reproducible across workers, resumable, sharded, crash-tolerant."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from test_car_racing_fast import leave_playfield

from wm_jax.data import EpisodeStore
from wm_jax.data.done_records import require_done_records
from wm_jax.envs import game_spec, random_policy
from wm_jax.envs.car_racing import CarRacingEnv
from wm_jax.envs.collect import collect, episode_seeds, main, run_episode
from wm_jax.envs.doom import HeldRandomPolicy

SEED = 7


class FlakyPolicy(HeldRandomPolicy):
    """Raises in episode 1 and kills its worker process in episode 2 (picklable by reference)."""

    def __init__(self, spec, seed):
        super().__init__(spec, seed)
        self._fate = {episode_seeds(SEED, 1)[1]: "raise", episode_seeds(SEED, 2)[1]: "die"}.get(
            seed
        )

    def __call__(self, frame):
        if self._fate == "raise":
            raise RuntimeError("policy bug")
        if self._fate == "die":
            os._exit(3)
        return super().__call__(frame)


def _hashes(root):
    manifest = json.loads((root / "manifest.json").read_text())
    return {index: record["sha256"] for index, record in manifest["episodes"].items()}


@pytest.fixture(autouse=True)
def _cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # ViZDoom must not write into the repository


@pytest.mark.parametrize("game", ["doom_take_cover", "car_racing"])
def test_same_data_from_one_or_two_workers(tmp_path, game):
    kwargs = {"num_episodes": 3, "seed": SEED, "max_frames": 30, "min_frames": 0, "progress": False}
    one = collect(game, tmp_path / "one", workers=1, **kwargs)
    two = collect(game, tmp_path / "two", workers=2, **kwargs)
    assert one["stored"] == two["stored"] == 3 and two["workers"] == 2
    assert _hashes(tmp_path / "one") == _hashes(tmp_path / "two")  # byte-identical files
    episode = EpisodeStore(tmp_path / "two").read(2)
    assert episode.frames.shape[1:] == (64, 64, 3) and episode.frames.dtype == np.uint8
    assert episode.actions.shape[1] == (3 if game == "car_racing" else 1)
    assert len(episode.frames) <= 30 and np.abs(episode.actions).max() <= 1
    assert sorted(os.listdir(tmp_path)) == ["one", "two"]  # no _vizdoom files
    assert EpisodeStore(tmp_path / "one").read_meta()["records_done"] is True


class LeavesPlayfield(CarRacingEnv):
    """Real CarRacing whose car is moved off the playfield before step `at` (0-based)."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def step(self, action):
        if self._steps == self.at:
            leave_playfield(self._game)
        return super().step(action)


def test_car_racing_episodes_end_where_the_game_does():
    spec, policy = game_spec("car_racing"), random_policy("car_racing")
    env = LeavesPlayfield(at=5)
    episode = run_episode(env, policy, spec, SEED, 0, max_frames=30)
    assert len(episode.frames) == len(episode.actions) == len(episode.rewards) == 6
    np.testing.assert_array_equal(episode.dones, [False] * 5 + [True])
    assert episode.rewards[-1] == -100.0 and (episode.rewards[:-1] > -100.0).all()
    env.close()
    env = LeavesPlayfield(at=50)
    capped = run_episode(env, policy, spec, SEED, 0, max_frames=4)
    assert len(capped.actions) == 4 and not capped.dones.any()  # a cap truncates: no done
    env.close()


def test_format_marker_and_done_check(tmp_path):
    # num_episodes=0 writes meta.json and plays nothing.
    quiet = {"workers": 1, "max_frames": 3, "progress": False}
    collect("car_racing", tmp_path / "new", 0, **quiet)
    new = EpisodeStore(tmp_path / "new")
    assert new.read_meta()["records_done"] is True
    require_done_records(new, "car_racing")
    collect("car_racing", tmp_path / "full", 0, env_kwargs={"full_episode": True}, **quiet)
    full = EpisodeStore(tmp_path / "full")
    assert full.read_meta()["records_done"] is False
    # A CarRacing store collected before the marker: the World Models code's full episodes.
    old = EpisodeStore(tmp_path / "old")
    old_meta = {"game": "car_racing", "seed": 0, "max_frames": 3, "min_frames": 0}
    old.write_meta(old_meta | {"env_kwargs": {"full_episode": True}, "policy": "RandomWalk"})
    for store in (full, old):
        message = rf"^{re.escape(str(store.root))} holds car_racing .* --stages collect$"
        with pytest.raises(ValueError, match=message):
            require_done_records(store, "car_racing")
    with pytest.raises(ValueError, match="collected with .* new folder"):
        collect("car_racing", old.root, 0, **quiet)  # no resuming it under the new rule
    # An encoded store answers for the store it was encoded from.
    for source in (new, old):
        encoded = EpisodeStore(tmp_path / f"encoded_{source.root.name}")
        encoded.write_meta({"source": str(source.root.resolve()), "latent_dim": 32})
        if source is new:
            require_done_records(encoded, "car_racing")
        else:
            with pytest.raises(ValueError, match=f"^{re.escape(str(source.root.resolve()))}"):
                require_done_records(encoded, "car_racing")
    moved = EpisodeStore(tmp_path / "encoded_moved")
    moved.write_meta({"source": str(tmp_path / "gone"), "latent_dim": 32})
    with pytest.raises(ValueError, match="gone holds car_racing episodes not marked"):
        require_done_records(moved, "car_racing")
    # Doom always recorded done: an unmarked Doom store passes and still resumes.
    doom = EpisodeStore(tmp_path / "doom")
    doom.write_meta({"game": "doom_take_cover", "seed": 0, "max_frames": 2100, "min_frames": 100})
    require_done_records(doom, "doom_take_cover")
    collect("doom_take_cover", doom.root, 0, workers=1, progress=False)
    assert doom.read_meta()["records_done"] is True


def test_resume_shards_and_skips(tmp_path):
    kwargs = {"seed": SEED, "workers": 2, "max_frames": 40, "progress": False}
    first = collect("doom_take_cover", tmp_path, 6, shard=(1, 3), min_frames=0, **kwargs)
    assert first["requested"] == 2 and EpisodeStore(tmp_path).indices() == [1, 4]
    again = collect("doom_take_cover", tmp_path, 6, min_frames=0, **kwargs)
    assert (again["already_done"], again["stored"]) == (2, 4)
    assert EpisodeStore(tmp_path).indices() == list(range(6))
    done = collect("doom_take_cover", tmp_path, 6, min_frames=0, **kwargs)
    assert (done["already_done"], done["stored"], done["workers"]) == (6, 0, 0)
    with pytest.raises(ValueError, match="collected with"):
        collect("doom_take_cover", tmp_path, 6, min_frames=0, **(kwargs | {"seed": 8}))


def test_collecting_again_repairs_corrupt_episode_files(tmp_path):
    kwargs = {"seed": SEED, "workers": 1, "max_frames": 30, "progress": False}
    collect("minatar_breakout", tmp_path, 2, **kwargs)
    before = _hashes(tmp_path)
    path = EpisodeStore(tmp_path).path(1)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.warns(UserWarning, match="corrupt"):
        again = collect("minatar_breakout", tmp_path, 2, **kwargs)
    assert (again["already_done"], again["stored"]) == (1, 1)
    assert _hashes(tmp_path) == before  # the same episode, seeded per episode
    assert EpisodeStore(tmp_path).readable(1)


def test_short_episodes_recorded_as_skipped(tmp_path):
    kwargs = {"seed": SEED, "workers": 1, "max_frames": 20, "min_frames": 25, "progress": False}
    summary = collect("doom_take_cover", tmp_path, 2, **kwargs)
    assert (summary["stored"], summary["skipped"]) == (0, 2)
    store = EpisodeStore(tmp_path)
    assert len(store) == 0 and sorted(store.skipped()) == [0, 1]
    assert collect("doom_take_cover", tmp_path, 2, **kwargs)["already_done"] == 2


def test_failing_and_dying_workers_lose_one_episode_each(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # where workers' ViZDoom folders go
    (tmp_path / "tmp").mkdir()
    summary = collect(
        "doom_take_cover",
        tmp_path / "store",
        5,
        workers=2,
        seed=SEED,
        max_frames=20,
        min_frames=0,
        progress=False,
        policy=FlakyPolicy,
    )
    assert sorted(summary["failed"]) == [1, 2]
    assert EpisodeStore(tmp_path / "store").indices() == [0, 3, 4]
    assert os.listdir(tmp_path / "tmp") == []  # the dead worker's ViZDoom engine was removed


def test_cli(tmp_path, capsys):
    help_text = subprocess.run(
        [sys.executable, "-m", "wm_jax.envs.collect", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "--shard" in help_text and "--max-frames" in help_text
    argv = ["doom_take_cover", "--episodes", "2", "--workers", "1", "--out", str(tmp_path / "d")]
    summary = main(argv + ["--seed", "3", "--shard", "1/2", "--max-frames", "15"])
    assert summary["requested"] == 1 and summary["skipped"] == 1  # 15 frames < 100
    assert "'stored_episodes': 0" in capsys.readouterr().out
