"""The host loop around jitted train steps: resume after a kill, NaN errors, metrics files."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wm_jax.core import checkpoint
from wm_jax.train import training_loop

_OPTIMIZER = optax.adam(0.1)


def _init_state(key):
    params = {"w": jax.random.normal(key, (3,))}
    return {"params": params, "opt_state": _OPTIMIZER.init(params), "step": jnp.array(0)}


@jax.jit
def _train_step(key, state, batch):
    def loss_fn(params):
        noise = 0.01 * jax.random.normal(key, (3,))
        return jnp.sum((params["w"] - batch - noise) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(state["params"])
    updates, opt_state = _OPTIMIZER.update(grads, state["opt_state"])
    params = optax.apply_updates(state["params"], updates)
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, {"loss": loss}


def _batches(start, stop_at=None):
    for step in range(start, 10_000):
        if step == stop_at:
            raise KeyboardInterrupt  # a Ctrl-C in the middle of the stage
        yield jnp.full((3,), float(step % 3))


def _run(tmp_path, name, batches, num_steps=12):
    return training_loop.run(
        "probe",
        jax.random.key(0),
        _train_step,
        _init_state,
        batches,
        num_steps,
        checkpoint_dir=tmp_path / name,
        metrics_path=tmp_path / f"{name}.jsonl",
        config={"probe": True},
        checkpoint_every=5,
        log_every=2,
        progress=False,
    )


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path):
    straight, _ = _run(tmp_path, "straight", _batches)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed", lambda start: _batches(start, stop_at=7))
    assert checkpoint.latest_step(tmp_path / "killed") == 5  # at most 5 steps lost
    resumed, _ = _run(tmp_path, "killed", _batches)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    rows = training_loop.read_jsonl(tmp_path / "killed.jsonl")
    assert [row["step"] for row in rows] == list(range(1, 13))  # duplicates after resume merged
    assert checkpoint.latest_step(tmp_path / "killed") == 12
    assert checkpoint.load_config(tmp_path / "killed") == {"probe": True}


def test_completed_run_is_not_retrained(tmp_path):
    _run(tmp_path, "done", _batches)
    calls = []

    def counting(start):
        calls.append(start)
        return _batches(start)

    _run(tmp_path, "done", counting)
    assert calls == [12]  # asked for batches from the end: nothing left to do


def test_nan_loss_names_the_step(tmp_path):
    def poisoned(start):
        for step, batch in enumerate(_batches(start), start):
            yield batch * jnp.nan if step == 3 else batch

    with pytest.raises(training_loop.TrainingDivergedError, match="probe .* step 4: loss = nan"):
        _run(tmp_path, "nan", poisoned)


def test_read_jsonl_skips_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "m.jsonl"
    training_loop.append_jsonl(path, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}])
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    assert [row["step"] for row in training_loop.read_jsonl(path)] == [1, 2]


def test_resume_from_the_last_good_checkpoint_when_the_newest_is_corrupt(tmp_path):
    straight, _ = _run(tmp_path, "straight", _batches)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed", lambda start: _batches(start, stop_at=11))
    assert checkpoint.all_steps(tmp_path / "killed") == [5, 10]
    for path in (tmp_path / "killed" / "step_000000010" / "state").rglob("*"):
        if path.is_file():
            path.write_bytes(path.read_bytes()[::-1])  # bit rot
    starts = []

    def recording(start):
        starts.append(start)
        return _batches(start)

    with pytest.warns(UserWarning, match="skipping checkpoint step 10: .*step_000000010"):
        resumed, _ = _run(tmp_path, "killed", recording)
    assert starts == [5]  # the stream resumes where the restored state is, not at step 10
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert checkpoint.latest_step(tmp_path / "killed") == 12


def test_resumed_frame_stream_matches_an_uninterrupted_run(tmp_path):
    """V's data: the stream restarted at the restored step is the one an unkilled run saw."""
    from test_data import make_store

    from wm_jax.data import frame_batches
    from wm_jax.data.loaders import FRAME_BYTES

    store = make_store(tmp_path / "episodes", [9, 14, 5, 11, 8])
    seed = jax.random.key(5)

    def frames(start, stop_at=None):
        stream = frame_batches(seed, store, 4, 20 * FRAME_BYTES, None, start_batch=start)
        for step, batch in enumerate(stream, start):
            if step == stop_at:
                raise KeyboardInterrupt
            yield jnp.asarray(batch[:, 0, 0].mean(0) / 255.0)  # (3,) per-channel means

    straight, _ = _run(tmp_path, "straight", frames, num_steps=40)
    with pytest.raises(KeyboardInterrupt):
        _run(tmp_path, "killed", lambda start: frames(start, stop_at=23), num_steps=40)
    assert checkpoint.latest_step(tmp_path / "killed") == 20
    resumed, _ = _run(tmp_path, "killed", frames, num_steps=40)
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
