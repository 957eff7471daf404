"""Every agent committed under agents/: its manifest checks out, it loads without pickle, and it
plays a short real episode (the published score itself is re-measured with
wm_jax.pipeline.evaluate)."""

import json
import math
from pathlib import Path

import pytest

from wm_jax.pipeline import agents, play

AGENTS = Path(__file__).resolve().parents[1] / "agents"
SHIPPED = sorted(p.parent for p in AGENTS.glob("*/manifest.json"))


@pytest.mark.skipif(not SHIPPED, reason="no agent is committed under agents/")
@pytest.mark.parametrize("agent_dir", SHIPPED, ids=lambda p: p.name)
def test_a_shipped_agent_loads_and_plays(agent_dir, tmp_path):
    described = json.loads((agent_dir / "agent.json").read_text())
    agents.verify(agent_dir)  # sha256 and size of every file
    agent = agents.load_agent(agent_dir)
    assert agent.config.experiment == described["experiment"]
    result = play.play(agent, [20_000_000], tmp_path / "a.gif", max_frames=30, progress=False)
    assert len(result.returns) == 1 and math.isfinite(float(result.returns[0]))
    assert (tmp_path / "a.gif").is_file()
