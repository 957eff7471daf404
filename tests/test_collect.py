"""Parallel rollout collection: reproducible across workers, resumable, sharded, crash-tolerant."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from wm_jax.data import EpisodeStore
from wm_jax.envs.collect import collect, episode_seeds, main
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
