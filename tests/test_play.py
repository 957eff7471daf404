"""wm_jax.pipeline.play: watch a shipped agent play a real episode and write the GIF."""

import re
import shutil

import imageio.v2 as imageio
import pytest

from wm_jax.pipeline import agents, play


@pytest.fixture(scope="module")
def agent_dir(doom_smoke_run, tmp_path_factory):
    return agents.export_agent(doom_smoke_run, tmp_path_factory.mktemp("play") / "doom")


def _error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_play_an_exported_agent(agent_dir, tmp_path, capsys):
    gif = tmp_path / "doom.gif"
    argv = ["doom_take_cover", "--agent", str(agent_dir), "--episodes", "1", "--max-frames", "20"]
    assert play.main([*argv, "--out", str(gif), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"episode 1: seed 20000000, return \d+\.\d in \d+ frames", out)
    frames = imageio.mimread(gif)
    assert 2 <= len(frames) <= 10  # every second frame of at most 20
    assert frames[0].shape[:2] == (128, 3 * 128 + 2 * 8)  # real | V | M, 4 px gaps, doubled


def test_play_a_run_folder(doom_smoke_run, tmp_path, capsys):
    # 20 frames as above: the GIF's models are compiled for that length already
    argv = ["doom_take_cover", "--agent", str(doom_smoke_run), "--max-frames", "20"]
    argv += ["--episodes", "2", "--first-seed", "5", "--out", str(tmp_path / "a.gif")]
    assert play.main([*argv, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "episode 2: seed 6" in out and (tmp_path / "a.gif").is_file()


def test_missing_agent_is_one_error_line(tmp_path, capsys):
    assert play.main(["doom_take_cover", "--agent", str(tmp_path / "none")]) == 2
    assert "none: no agent here" in _error_line(capsys)


def test_bad_game_or_agent_is_one_error_line(agent_dir, tmp_path, capsys):
    assert play.main(["pong", "--agent", str(agent_dir)]) == 2
    assert "unknown game 'pong'" in _error_line(capsys)
    assert play.main(["car_racing", "--agent", str(agent_dir)]) == 2
    assert "plays doom_take_cover, not car_racing" in _error_line(capsys)
    tampered = tmp_path / "tampered"
    shutil.copytree(agent_dir, tampered)
    (tampered / "agent.json").write_text("{}")
    assert play.main(["doom_take_cover", "--agent", str(tampered)]) == 2
    assert "agent.json does not match its sha256" in _error_line(capsys)
