"""The fixed-action probe: dream returns with known answers, the real game, the table."""

import json

import jax
import numpy as np
from test_dream import make

from wm_jax import probe, stages
from wm_jax.config import from_dict


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
