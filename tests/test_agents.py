"""wm_jax.pipeline.agents: a finished run exported into a small folder, loaded back, no pickle."""

import json
import pickle
import shutil

import jax
import numpy as np
import pytest

import wm_jax
from wm_jax.data import EpisodeStore
from wm_jax.envs import game_spec
from wm_jax.pipeline import agents, run_models, stages
from wm_jax.pipeline.config import from_dict

NOTES = {"score": "133 ± 18 over 2 episodes", "episodes": 2}


@pytest.fixture(scope="module")
def exported(doom_smoke_run, tmp_path_factory):
    return agents.export_agent(
        doom_smoke_run, tmp_path_factory.mktemp("agent") / "doom", notes=NOTES
    )


def _run_models(run_dir):
    """The run's own config, V, M and C, as the stages load them."""
    config = from_dict(json.loads((run_dir / "config.json").read_text()))
    paths = stages.RunPaths(run_dir)
    vae_params, m_params = (
        run_models.load_vae(config, paths),
        run_models.load_mdn_rnn(config, paths),
    )
    return config, vae_params, m_params, run_models.load_controller(paths)


def _assert_trees_equal(ours, theirs, cast=np.float32):
    assert jax.tree.structure(ours) == jax.tree.structure(theirs)
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, np.asarray(b).astype(cast).astype(np.float32))


def test_export_writes_a_small_described_folder(exported, doom_smoke_run):
    names = sorted(path.name for path in exported.iterdir())
    assert names == ["agent.json", "config.json", "manifest.json", "weights.npz"]
    manifest = json.loads((exported / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["agent.json", "config.json", "weights.npz"]
    for name, entry in manifest["files"].items():
        assert entry["bytes"] == (exported / name).stat().st_size
        assert len(entry["sha256"]) == 64
    info = json.loads((exported / "agent.json").read_text())
    assert info["experiment"] == info["game"] == "doom_take_cover"
    assert info["dtype"] == "float16" and info["notes"] == NOTES
    assert info["wm_jax_version"] == wm_jax.__version__
    assert info["source_run"] == str(doom_smoke_run.resolve())
    assert info["run_evaluation"]["seed_set"] == "selection"
    counts = info["parameters"]
    # float16: two bytes a parameter of V and M (C's few stay float32), plus the zip's headers
    assert manifest["files"]["weights.npz"]["bytes"] < 2 * (counts["vae"] + counts["mdn_rnn"]) + (
        4 * counts["controller"] + 10_000
    )


def test_weights_round_trip_as_float16(exported, doom_smoke_run):
    config, vae_params, m_params, c_flat = _run_models(doom_smoke_run)
    agent = agents.load_agent(exported)
    assert agent.config == config
    assert agent.c_config == run_models.controller_config(config)
    _assert_trees_equal(agent.vae_params, vae_params, cast=np.float16)
    _assert_trees_equal(agent.m_params, m_params, cast=np.float16)
    assert agent.c_flat.dtype == np.float32
    np.testing.assert_array_equal(agent.c_flat, c_flat)  # C is stored exactly


def test_controller_plays_the_runs_actions(exported, doom_smoke_run):
    config, *_ = _run_models(doom_smoke_run)
    paths = stages.RunPaths(doom_smoke_run)
    store = EpisodeStore(paths.episodes)
    frames = store.read(store.indices()[0]).frames[:30]
    spec = game_spec(config.game)
    run_policy = run_models.controller_policy(config, paths)(spec, 7)
    agent_policy = agents.load_agent(exported).policy()(spec, 7)  # same seed: same z samples
    theirs = np.stack([run_policy(frame) for frame in frames])
    ours = np.stack([agent_policy(frame) for frame in frames])
    np.testing.assert_allclose(ours, theirs, atol=5e-3)  # V and M rounded to float16


def test_float32_export_from_the_command_line_is_exact(doom_smoke_run, tmp_path, capsys):
    out = tmp_path / "agent"
    argv = [str(doom_smoke_run), str(out), "--dtype", "float32", "--notes", "mean=133", "seeds=x"]
    assert agents.main(argv) == 0
    assert "exported" in capsys.readouterr().out
    info = json.loads((out / "agent.json").read_text())
    assert info["notes"] == {"mean": 133, "seeds": "x"} and info["dtype"] == "float32"
    config, vae_params, m_params, c_flat = _run_models(doom_smoke_run)
    for agent in (agents.load(out), agents.load(doom_smoke_run)):  # agent or run folder
        _assert_trees_equal(agent.vae_params, vae_params)
        _assert_trees_equal(agent.m_params, m_params)
        np.testing.assert_array_equal(agent.c_flat, c_flat)


@pytest.mark.parametrize("name", ["weights.npz", "config.json", "agent.json"])
def test_a_changed_or_missing_file_is_named(exported, tmp_path, name):
    changed, missing = tmp_path / "changed", tmp_path / "missing"
    shutil.copytree(exported, changed)
    shutil.copytree(exported, missing)
    data = bytearray((changed / name).read_bytes())
    data[len(data) // 2] ^= 1  # one bit, same size
    (changed / name).write_bytes(bytes(data))
    with pytest.raises(agents.AgentError, match=f"{name} does not match its sha256"):
        agents.load_agent(changed)
    (missing / name).unlink()
    with pytest.raises(agents.AgentError, match=f"{name} is missing"):
        agents.load(missing)


def test_no_manifest_no_agent(exported, tmp_path):
    shutil.copytree(exported, tmp_path / "agent")
    (tmp_path / "agent" / "manifest.json").unlink()
    with pytest.raises(agents.AgentError, match="manifest.json is missing"):
        agents.load_agent(tmp_path / "agent")
    with pytest.raises(agents.AgentError, match="no agent here"):
        agents.load(tmp_path / "agent")
    with pytest.raises(agents.AgentError, match="no agent here"):
        agents.load(tmp_path / "nowhere")


def test_loads_without_pickle(exported, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("pickle was used")

    with monkeypatch.context() as patch:
        for name in ("load", "loads", "Unpickler"):
            patch.setattr(pickle, name, refuse)
        agent = agents.load_agent(exported)
    assert agent.c_flat.size == agent.info["parameters"]["controller"]
    with np.load(exported / "weights.npz", allow_pickle=False) as npz:
        assert {npz[name].dtype for name in npz.files} == {np.dtype("float16"), np.dtype("float32")}
    # A folder whose manifest agrees with a pickled array in weights.npz is still refused.
    folder = tmp_path / "pickled"
    shutil.copytree(exported, folder)
    np.savez(folder / "weights.npz", evil=np.array([{}], dtype=object))
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"]["weights.npz"] = agents._file_entry(folder / "weights.npz")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(agents.AgentError, match="not a plain-array"):
        agents.load_agent(folder)


def test_bad_exports_are_refused(doom_smoke_run, tmp_path):
    with pytest.raises(ValueError, match="dtype"):
        agents.export_agent(doom_smoke_run, tmp_path / "agent", dtype="int8")
    with pytest.raises(agents.AgentError, match="is a run folder"):
        agents.export_agent(doom_smoke_run, doom_smoke_run)
    assert agents.main([str(tmp_path / "nowhere"), str(tmp_path / "agent")]) == 2
