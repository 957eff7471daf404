"""M's batches (`sequence_batches`): coverage of every episode step, stream structure, resume."""

import jax
import numpy as np
import pytest

from wm_jax.data import EncodedEpisode, EpisodeStore, sequence_batches
from wm_jax.models import mdn_rnn
from wm_jax.train import mdn_rnn_train, training_loop


def encoded_episode(index: int, length: int) -> EncodedEpisode:
    """Step t of episode i has latent and action (i, t): every window position is traceable."""
    step = np.arange(length, dtype=np.float32)
    ids = np.stack([np.full(length, index, np.float32), step], -1)
    dones = np.zeros(length, bool)
    dones[-1] = True
    return EncodedEpisode(ids, -4.0 - ids / 1000, ids.copy(), step + 0.5, dones)


def make_store(root, lengths) -> EpisodeStore:
    store = EpisodeStore(root)
    for index, length in enumerate(lengths):
        store.write(index, encoded_episode(index + 1, length), flush=False)  # ids from 1
    store.flush()
    return store


def coverage(batches, lengths) -> list[np.ndarray]:
    """How often each step of each episode is an input step of a window (padding excluded)."""
    counts = [np.zeros(length, int) for length in lengths]
    for batch in batches:
        episode, step = batch.actions[..., 0].astype(int), batch.actions[..., 1].astype(int)
        real = episode > 0  # padding (random windows past an episode's end) is all zeros
        for index, count in enumerate(counts):
            np.add.at(count, step[real & (episode == index + 1)], 1)
    return counts


CASES = {
    # (episode lengths, seq_len, batch_size, num_batches)
    "300-step episodes, seq 100": ([300] * 6, 100, 16, 200),
    "300-step episodes, seq 500": ([300] * 6, 500, 8, 60),
    "mixed lengths, seq 100": ([1, 2, 37, 120, 300, 555, 1000], 100, 16, 300),
}


@pytest.mark.parametrize("case", CASES)
def test_stream_covers_every_step_equally_the_first_included(tmp_path, case):
    lengths, seq_len, batch_size, num_batches = CASES[case]
    store = make_store(tmp_path, lengths)
    batches = sequence_batches(0, store, batch_size, seq_len, num_batches, windows="stream")
    counts = coverage(batches, lengths)
    every = np.concatenate(counts)
    mean = every.mean()
    # Each row shows each step once per epoch of its stream; only the last, partial epoch of a
    # row makes steps differ (by one visit of that row).
    assert every.min() >= 1, "a step M never sees"
    assert every.max() / every.min() < 1.5, (every.min(), every.max())
    first = np.array([count[0] for count in counts])
    assert np.all(np.abs(first / mean - 1.0) < 0.25), (first, mean)


def test_random_windows_rarely_start_an_episode(tmp_path):
    """The bias the stream removes: step 0 is seen ~seq_len times less often than late steps."""
    lengths, seq_len, batch_size, num_batches = CASES["300-step episodes, seq 100"]
    store = make_store(tmp_path, lengths)
    batches = sequence_batches(0, store, batch_size, seq_len, num_batches, windows="random")
    counts = coverage(batches, lengths)
    first = sum(count[0] for count in counts) / len(counts)
    assert first / np.concatenate(counts).mean() < 0.05


def test_stream_rows_are_whole_episodes_back_to_back(tmp_path):
    lengths, seq_len, batch_size = [1, 2, 37, 120, 300], 50, 4
    total = sum(lengths)
    store = make_store(tmp_path, lengths)
    num_batches = total // seq_len + 2
    batches = list(sequence_batches(3, store, batch_size, seq_len, num_batches, windows="stream"))
    for batch in batches:
        episode, step = batch.actions[..., 0].astype(int), batch.actions[..., 1].astype(int)
        length = np.array([0, *lengths])[episode]
        assert (episode > 0).all()  # nothing is padded
        np.testing.assert_array_equal(batch.restarts, step == 0)  # exactly at episode starts
        np.testing.assert_array_equal(batch.dones, step == length - 1)  # the stored done
        np.testing.assert_array_equal(batch.mask, step < length - 1)  # z(t+1) in the episode
        np.testing.assert_array_equal(batch.rewards, step + 0.5)
        np.testing.assert_array_equal(batch.mu[:, :-1], batch.actions)  # z(t) with a(t)
        np.testing.assert_allclose(batch.logvar, -4.0 - batch.mu / 1000)
    for later, earlier in zip(batches[1:], batches[:-1], strict=True):
        # The extra latent is the next window's first: windows continue where they stopped.
        np.testing.assert_array_equal(earlier.mu[:, -1], later.mu[:, 0])
    for row in range(batch_size):
        ids = np.concatenate([batch.actions[row] for batch in batches]).astype(int)
        assert ids[0, 1] == 0  # every stream starts at an episode's first step
        following = ids[1:]
        same = (following[:, 0] == ids[:-1, 0]) & (following[:, 1] == ids[:-1, 1] + 1)
        # ... and goes on step by step, or to a new episode's step 0 after a last step.
        assert np.all(same | (following[:, 1] == 0))
        first_epoch = {tuple(pair) for pair in ids[:total]}
        assert len(first_epoch) == total  # every step of every episode once per epoch
    rows = {tuple(np.concatenate([b.actions[row, :, 0] for b in batches])) for row in range(4)}
    assert len(rows) == batch_size  # each row its own episode order


@pytest.mark.parametrize("windows", ["stream", "random"])
@pytest.mark.parametrize("seed", [7, jax.random.key(7)], ids=["int", "key"])
def test_start_batch_resumes_the_same_stream(tmp_path, windows, seed):
    store = make_store(tmp_path, [23, 40, 57, 5])
    args = (store, 4, 16, 12)
    uninterrupted = list(sequence_batches(seed, *args, windows=windows))
    resumed = list(sequence_batches(seed, *args, windows=windows, start_batch=7))
    assert len(uninterrupted) == 12 and len(resumed) == 5
    for got, want in zip(resumed, uninterrupted[7:], strict=True):
        for name, a, b in zip(want._fields, got, want, strict=True):
            np.testing.assert_array_equal(a, b, err_msg=name)
    other = next(sequence_batches(8, *args, windows=windows, start_batch=7))
    assert not np.array_equal(other.actions, uninterrupted[7].actions)


def test_bad_arguments_raise(tmp_path):
    store = make_store(tmp_path, [5])
    with pytest.raises(ValueError, match="windows='sliding'"):
        next(sequence_batches(0, store, 2, 4, windows="sliding"))
    with pytest.raises(ValueError, match="start_batch"):
        next(sequence_batches(0, store, 2, 4, start_batch=-1))


def test_resumed_training_equals_uninterrupted_training_carry_included(tmp_path):
    """The runner's resume (training_loop.run) on the stream: checkpointed carry, same batches."""
    store = make_store(tmp_path / "data", [23, 40, 57, 5])
    config = mdn_rnn.MDNRNNConfig(
        latent_dim=2, action_dim=2, hidden_size=8, num_mixtures=2, use_restart=True,
        predict_done=True,
    )  # fmt: skip
    train_config = mdn_rnn_train.MDNTrainConfig(batch_size=3, seq_len=16, num_steps=6)
    assert train_config.windows == "stream"
    init_state, train_step = mdn_rnn_train.make_train(config, train_config)

    def batches(start):
        return sequence_batches(1, store, 3, 16, windows="stream", start_batch=start)

    resume_batch = next(batches(3))
    assert not resume_batch.restarts[:, 0].all()  # some row continues an episode at step 3

    def run(name, num_steps):
        return training_loop.run(
            "M", jax.random.key(2), train_step, init_state, batches, num_steps,
            checkpoint_dir=tmp_path / name, metrics_path=tmp_path / f"{name}.jsonl",
            config={}, progress=False,
        )[0]  # fmt: skip

    uninterrupted = run("whole", 6)
    run("resumed", 3)  # killed after step 3 ...
    resumed = run("resumed", 6)  # ... and restarted from its checkpoint
    assert int(resumed.step) == 6 and np.abs(np.asarray(resumed.carry.h)).max() > 0
    for got, want in zip(jax.tree.leaves(resumed), jax.tree.leaves(uninterrupted), strict=True):
        np.testing.assert_array_equal(got, want)
