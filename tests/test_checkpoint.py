"""Checkpoint round trips, atomicity and errors."""

import errno
import json
import os
import time

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wm_jax.core import checkpoint


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
    with (
        pytest.warns(UserWarning, match="step_000000001"),
        pytest.raises(checkpoint.CheckpointError, match="step_000000001"),
    ):
        checkpoint.restore(tmp_path, target={"x": jnp.zeros(2)})


def test_atomic_write_json(tmp_path):
    path = tmp_path / "a" / "b.json"
    checkpoint.atomic_write_json(path, {"k": 1})
    assert json.loads(path.read_text()) == {"k": 1}
    assert [p.name for p in path.parent.iterdir()] == ["b.json"]


def _flip_64_bytes_in_every_file(step_dir):
    for path in sorted((step_dir / "state").rglob("*")):
        if path.is_file():
            data = bytearray(path.read_bytes())
            start = max(0, len(data) // 2 - 32)
            for i in range(start, min(len(data), start + 64)):
                data[i] ^= 0xFF
            path.write_bytes(bytes(data))


def test_flipped_bytes_are_caught_and_name_the_file(tmp_path):
    state = {"kernel": jax.random.normal(jax.random.key(0), (64, 32))}
    checkpoint.save(tmp_path, state, step=4)
    checkpoint.restore(tmp_path, target=state, step=4)  # a restore leaves the files as written
    checkpoint.verify(tmp_path, 4)
    _flip_64_bytes_in_every_file(tmp_path / "step_000000004")
    with pytest.raises(checkpoint.CheckpointError, match=r"step_000000004/state/\S+ differs"):
        checkpoint.restore(tmp_path, target=state, step=4)
    with (
        pytest.warns(UserWarning, match="skipping checkpoint step 4"),
        pytest.raises(checkpoint.CheckpointError) as error,
    ):
        checkpoint.restore(tmp_path, target=state)
    message = str(error.value)
    assert "\n" not in message and f"delete {tmp_path} and rerun the stage" in message


def test_corrupt_newest_step_falls_back_to_the_last_good_one(tmp_path):
    for step in (5, 10):
        checkpoint.save(tmp_path, {"x": jnp.full(3, float(step))}, step=step)
    _flip_64_bytes_in_every_file(tmp_path / "step_000000010")
    with pytest.warns(UserWarning, match=r"skipping checkpoint step 10: .*step_000000010/state/"):
        restored, step = checkpoint.restore_latest(tmp_path, target={"x": jnp.zeros(3)})
    assert step == 5
    np.testing.assert_array_equal(restored["x"], [5.0, 5.0, 5.0])
    with pytest.warns(UserWarning, match="step 10"):
        restored = checkpoint.restore(tmp_path, target={"x": jnp.zeros(3)})
    np.testing.assert_array_equal(restored["x"], [5.0, 5.0, 5.0])
    # A file deleted from the newest step is caught the same way.
    checkpoint.save(tmp_path, {"x": jnp.full(3, 11.0)}, step=11, keep=3)
    next(p for p in (tmp_path / "step_000000011" / "state").rglob("*") if p.is_file()).unlink()
    with pytest.raises(checkpoint.CheckpointError, match="cannot read .*step_000000011"):
        checkpoint.verify(tmp_path, 11)


def test_checkpoint_without_checksums_still_loads(tmp_path):
    checkpoint.save(tmp_path, {"x": jnp.arange(3.0)}, step=2)
    meta_path = tmp_path / "step_000000002" / "meta.json"
    meta = json.loads(meta_path.read_text())
    assert len(meta.pop("files")) >= 1  # written by this version
    meta_path.write_text(json.dumps(meta))  # as written before the checksums
    restored = checkpoint.restore(tmp_path, target={"x": jnp.zeros(3)})
    np.testing.assert_array_equal(restored["x"], [0.0, 1.0, 2.0])


def _assert_disk_full_is_one_line(tmp_path, error):
    message = str(error.value)
    assert "\n" not in message, message
    assert f"{tmp_path}/step_000000002" in message and "No space left on device" in message
    assert error.value.__suppress_context__  # no page of orbax / asyncio frames above it
    assert checkpoint.all_steps(tmp_path) == [1]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
    restored = checkpoint.restore(tmp_path, target={"x": jnp.zeros(2)})
    np.testing.assert_array_equal(restored["x"], np.ones(2))  # the previous step is intact


def test_disk_full_while_writing_meta_is_one_line(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"x": jnp.ones(2)}, step=1)

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "atomic_write", full)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.save(tmp_path, {"x": jnp.zeros(2)}, step=2)
    monkeypatch.undo()
    _assert_disk_full_is_one_line(tmp_path, error)


def test_disk_full_inside_orbax_is_one_line(tmp_path, monkeypatch):
    checkpoint.save(tmp_path, {"x": jnp.ones(2)}, step=1)

    def full(self):
        # What tensorstore raised, through orbax's background thread, on a full tmpfs.
        raise ValueError(
            'RESOURCE_EXHAUSTED: Error writing "x/0" in OCDBT database at local file "...": '
            "Failed to write 316698 bytes to file 11: No space left on device "
            "[os_error_code='28']"
        )

    monkeypatch.setattr(checkpoint.ocp.StandardCheckpointer, "wait_until_finished", full)
    with pytest.raises(checkpoint.CheckpointError) as error:
        checkpoint.save(tmp_path, {"x": jnp.zeros(2)}, step=2)
    monkeypatch.undo()
    _assert_disk_full_is_one_line(tmp_path, error)


def test_save_errors_that_are_not_io_pass_through(tmp_path):
    with pytest.raises(ValueError, match="Unsupported type"):
        checkpoint.save(tmp_path, {"x": object()}, step=1)
    assert checkpoint.all_steps(tmp_path) == []
    # orbax's writer threads may still create the hidden folder after save returned (on a
    # loaded machine, even during the next save): give them a moment, then the next save
    # sweeps whatever the unfinished save left behind.
    time.sleep(1.0)
    checkpoint.save(tmp_path, {"x": jnp.zeros(2)}, step=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [checkpoint._step_dir(tmp_path, 2).name]


def test_a_killed_save_leaves_nothing_after_the_next_save(tmp_path):
    (tmp_path / ".tmp_step_000000001_dead" / "state").mkdir(parents=True)
    (tmp_path / ".trash_step_000000001_dead").mkdir()
    checkpoint.save(tmp_path, {"x": jnp.zeros(2)}, step=1)
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint._step_dir(tmp_path, 1).name]
