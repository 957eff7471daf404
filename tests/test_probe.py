"""The fixed-action probe: dream returns with known answers, the real game, the table."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_dream import car_racing_done_model, make

from wm_jax import dream
from wm_jax.pipeline import probe, run_models, stages
from wm_jax.pipeline.config import from_dict
from wm_jax.pipeline.presets import preset


def test_dream_returns_follow_the_done_head():
    # done logit +30 on every step: each episode ends at its first step (+1, the step that ends
    # it included); -30: no episode ends before the cap.
    env, params = make(max_steps=25, done_bias=30.0)
    returns = probe.dream_returns(jax.random.key(0), env, params, [1.0], episodes=6)
    np.testing.assert_array_equal(returns, np.ones(6))
    env, params = make(max_steps=25, done_bias=-30.0)
    returns = probe.dream_returns(jax.random.key(0), env, params, [-1.0], episodes=6)
    np.testing.assert_array_equal(returns, np.full(6, 25.0))


def test_markdown_marks_the_ratio():
    rows = [
        {
            "action": "left",
            "output": [-1.0],
            "dream": {"mean": 1888.0, "std": 593.0},
            "real": {"mean": 205.0, "std": 50.0},
            "episodes": 20,
        }
    ]
    table = probe.markdown(rows)
    assert "| left | [-1.0] | 1888 ± 593 | 205 ± 50 | 9.2× |" in table


def test_probe_on_a_doom_run(doom_smoke_run):
    config = from_dict(json.loads((doom_smoke_run / "config.json").read_text()))
    rows = probe.probe(config, stages.RunPaths(doom_smoke_run), episodes=2, max_steps=30)
    assert [row["action"] for row in rows] == ["left", "stay", "right"]
    for row in rows:
        # Real Take Cover pays +1 per frame: no episode ends before ~100 frames, the cap is 30.
        assert row["real"] == {"mean": 30.0, "std": 0.0}
        assert 1.0 <= row["dream"]["mean"] <= 30.0
    report = (doom_smoke_run / "report" / "report.md").read_text()
    assert "## Fixed actions: the dream against the real game" in report


def test_probe_on_car_racing_plays_both_worlds(monkeypatch):
    # The dream: an M that predicts done at step 3 and pays -0.1, then -100 there (the penalty
    # for leaving the playfield); the game: real CarRacing for 6 frames, ended by neither.
    m_config, m_params = car_racing_done_model(done_at=3)
    env, _ = dream.make_dream("car_racing", m_config)
    env_params = env.make_params(m_params, jnp.zeros((2, 2)), jnp.full((2, 2), -4.0), max_steps=40)
    monkeypatch.setattr(run_models, "make_dream", lambda config, paths: (env, env_params))
    rows = probe.probe(preset("car_racing", "smoke"), None, episodes=2, max_steps=6)
    assert [row["action"] for row in rows] == list(probe.FIXED_ACTIONS["car_racing"])
    assert {"straight, full gas", "left, half gas", "right, half gas", "idle"} <= set(
        probe.FIXED_ACTIONS["car_racing"]
    )
    for row in rows:
        assert row["dream"]["mean"] == pytest.approx(-100.2, abs=1e-3)
        assert row["dream_length"] == {"mean": 3.0, "min": 3, "max": 3}
        assert row["real_length"] == {"mean": 6.0, "min": 6, "max": 6}
        assert -1.0 < row["real"]["mean"] < 50.0  # -0.1 a frame, a few tiles at most
        assert row["max_steps"] == 6
    table = probe.markdown(rows)
    assert "| idle | [0.0, -1.0, 0.0] | -100 ± 0 |" in table
    assert table.count(" 3 / 6 |") == len(rows)
