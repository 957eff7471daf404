"""Checkpoint round trips, atomicity and errors."""

import json
import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wm_jax import checkpoint


class _State(flax.struct.PyTreeNode):
    params: dict
    opt_state: optax.OptState
    step: jax.Array


def _make_state(seed: int = 0) -> _State:
    key_w, key_b = jax.random.split(jax.random.key(seed))
    params = {"w": jax.random.normal(key_w, (4, 3)), "b": jax.random.normal(key_b, (3,))}
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))
    opt_state = optimizer.init(params)
    grads = jax.tree.map(jnp.ones_like, params)
    _, opt_state = optimizer.update(grads, opt_state, params)
    return _State(params=params, opt_state=opt_state, step=jnp.asarray(7))


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_with_optax_state_and_config(tmp_path):
    state = _make_state()
    config = {"latent_dim": 32, "name": "vae"}
    checkpoint.save(tmp_path / "ckpt", state, step=3, config=config)
    restored = checkpoint.restore(tmp_path / "ckpt", target=_make_state(seed=1))
    _assert_trees_equal(state, restored)
    assert isinstance(restored.opt_state[1][0], optax.ScaleByAdamState)
    assert checkpoint.load_config(tmp_path / "ckpt") == config
    assert checkpoint.latest_step(tmp_path / "ckpt") == 3


def test_relative_path_and_overwrite_same_step(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    checkpoint.save("rel", {"x": jnp.zeros(3)}, step=1)
    checkpoint.save("rel", {"x": jnp.ones(3)}, step=1)  # orbax alone would refuse
    restored = checkpoint.restore("rel", target={"x": jnp.zeros(3)})
    np.testing.assert_array_equal(restored["x"], np.ones(3))


def test_keep_prunes_old_steps(tmp_path):
    for step in range(5):
        checkpoint.save(tmp_path, {"x": jnp.full(2, step)}, step=step, keep=2)
    assert checkpoint.all_steps(tmp_path) == [3, 4]
    old = checkpoint.restore(tmp_path, target={"x": jnp.zeros(2)}, step=3)
    np.testing.assert_array_equal(old["x"], [3, 3])


def test_half_written_save_is_ignored(tmp_path):
    checkpoint.save(tmp_path, {"x": jnp.ones(2)}, step=1)
    # A crash mid-save: orbax wrote the state but the rename and meta never happened, and a
    # step folder without its completion marker.
    checkpoint.save(tmp_path / "scratch", {"x": jnp.zeros(2)}, step=2)
    os.replace(tmp_path / "scratch" / "step_000000002", tmp_path / ".tmp_step_000000002_dead")
    broken = tmp_path / "step_000000005"
    (broken / "state").mkdir(parents=True)
    assert checkpoint.latest_step(tmp_path) == 1
    restored = checkpoint.restore(tmp_path, target={"x": jnp.zeros(2)})
    np.testing.assert_array_equal(restored["x"], np.ones(2))


def test_missing_checkpoint_names_the_folder(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="no complete checkpoint in .*nothing"):
        checkpoint.restore(tmp_path / "nothing")
    checkpoint.save(tmp_path, {"x": jnp.ones(2)}, step=1)
    with pytest.raises(checkpoint.CheckpointError, match="step 9"):
        checkpoint.restore(tmp_path, step=9)
    with pytest.raises(checkpoint.CheckpointError, match="config.json"):
        checkpoint.load_config(tmp_path / "nothing")


def test_corrupt_state_names_the_file(tmp_path):
    checkpoint.save(tmp_path, {"x": jnp.ones(2)}, step=1)
    state_dir = tmp_path / "step_000000001" / "state"
    for path in state_dir.rglob("*"):
        if path.is_file():
            path.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="step_000000001"):
        checkpoint.restore(tmp_path, target={"x": jnp.zeros(2)})


def test_atomic_write_json(tmp_path):
    path = tmp_path / "a" / "b.json"
    checkpoint.atomic_write_json(path, {"k": 1})
    assert json.loads(path.read_text()) == {"k": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]
