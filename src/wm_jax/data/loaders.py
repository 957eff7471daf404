"""Minibatch streams over an `EpisodeStore`: frames for V, latent sequences for M."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from wm_jax.data.store import EncodedEpisode, EpisodeStore, NoEpisodesError

FRAME_BYTES = 64 * 64 * 3


def _rng(key_or_seed: Any) -> np.random.Generator:
    """A numpy generator from an int seed or a JAX key (typed or raw uint32)."""
    if isinstance(key_or_seed, int | np.integer):
        return np.random.default_rng(int(key_or_seed))
    import jax

    key = key_or_seed
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, dtype=np.uint32).ravel().tolist())


def frame_batches(
    key_or_seed: Any,
    store: EpisodeStore,
    batch_size: int,
    memory_budget_bytes: int,
    num_epochs: int | None = 1,
    start_batch: int = 0,
) -> Iterator[np.ndarray]:
    """Shuffled uint8 (B, 64, 64, 3) frame batches holding about `memory_budget_bytes` of frames.

    A pool of decoded episodes, at most budget / 12,288 frames, is filled in a seeded random
    episode order, its frames shuffled across episodes and drained in batches; the < B frames
    left over stay for the next fill, so an epoch drops at most one partial batch at the end of
    the run. Besides the pool, one episode being decoded (briefly about twice its decoded size)
    and one batch are alive at a time. Corrupt
    episodes are skipped with a warning (or raise if the store is strict).

    The stream is a function of the seed and the store: `start_batch=k` yields exactly batches
    k, k + 1, ... of the stream from 0 (a training run resumed at step k sees what it would have
    seen). Until batch k the pool holds (episode, frame) ids, not frames: the random draws depend
    only on how many frames each fill holds, so fast-forwarding reads each file once for its
    sha256 and decodes only the episodes left in the pool at batch k.

    Args:
        num_epochs: passes over the store, each in a new random order; None for endless.
        start_batch: the index of the first batch to yield.

    Raises:
        NoEpisodesError: fewer readable frames than one batch (every file corrupt, say); the
            message names the folder and counts the readable and corrupt files.
    """
    if start_batch < 0:
        raise ValueError(f"start_batch must be >= 0, got {start_batch}")
    rng = _rng(key_or_seed)
    indices = store.indices()
    if not indices:
        raise NoEpisodesError(f"{store.root} holds no episodes; collect with --stages collect")
    lengths = {index: store.num_frames(index) for index in indices}
    longest = max(lengths.values())
    needed = (longest + batch_size) * FRAME_BYTES
    if memory_budget_bytes < needed:
        raise ValueError(
            f"memory_budget_bytes={memory_budget_bytes} is too small: the longest episode "
            f"({longest} frames) plus a batch of {batch_size} needs {needed}"
        )
    # A fill starts with < B frames left over and must take any episode after them, or it would
    # spin: a pool the size of a small store is grown to longest + B - 1 (within the budget).
    total = sum(lengths.values())
    capacity = min(memory_budget_bytes // FRAME_BYTES, max(total, longest + batch_size - 1))
    pool = None if start_batch else np.empty((capacity, 64, 64, 3), dtype=np.uint8)
    # While fast-forwarding: which episode and frame each pool slot holds.
    pool_episode = np.empty(capacity, np.int64) if start_batch else None
    pool_frame = np.empty(capacity, np.int64) if start_batch else None
    readable: dict[int, bool] = {}  # fast-forward checks each file once
    held = 0
    next_batch = 0  # index in the stream of the next fill's first batch
    epochs = itertools.count() if num_epochs is None else range(num_epochs)
    for epoch in epochs:
        queue = deque(rng.permutation(indices).tolist())
        episodes_read = frames_read = 0
        while queue:
            while queue and held + lengths[queue[0]] <= capacity:
                index = queue.popleft()
                if pool is None:
                    if index not in readable:
                        readable[index] = store.readable(index)
                    length = lengths[index] if readable[index] else 0
                    pool_episode[held : held + length] = index
                    pool_frame[held : held + length] = np.arange(length)
                else:
                    episode = store.read_or_skip(index)
                    length = 0 if episode is None else len(episode.frames)
                    if length:
                        pool[held : held + length] = episode.frames
                    del episode
                held += length
                episodes_read += length > 0
                frames_read += length
            order = rng.permutation(held)
            num_batches = held // batch_size
            first = min(num_batches, max(0, start_batch - next_batch))
            if pool is None and first < num_batches:
                pool = _decode_pool(store, pool_episode[:held], pool_frame[:held], capacity)
                pool_episode = pool_frame = None
            for batch in range(first, num_batches):
                yield pool[order[batch * batch_size : (batch + 1) * batch_size]]
            next_batch += num_batches
            leftover = order[num_batches * batch_size :]
            if pool is None:
                pool_episode[: len(leftover)] = pool_episode[leftover]
                pool_frame[: len(leftover)] = pool_frame[leftover]
            else:
                pool[: len(leftover)] = pool[leftover]
            held = len(leftover)
        # Every epoch reads the same files, so one short of a batch would loop for ever.
        if epoch == 0 and frames_read < batch_size:
            corrupt = len(indices) - episodes_read
            short = f", {frames_read} frames: fewer than one batch of {batch_size}"
            raise NoEpisodesError(
                f"{store.root}: {episodes_read} of {len(indices)} episode files are readable "
                f"({corrupt} corrupt){short if episodes_read else ''}; "
                "recollect with --stages collect"
            )


def _decode_pool(
    store: EpisodeStore, episode_ids: np.ndarray, frame_ids: np.ndarray, capacity: int
) -> np.ndarray:
    """The (capacity, 64, 64, 3) pool whose slot i holds frame frame_ids[i] of episode_ids[i]."""
    pool = np.empty((capacity, 64, 64, 3), dtype=np.uint8)
    by_episode = np.argsort(episode_ids, kind="stable")
    episodes, starts = np.unique(episode_ids[by_episode], return_index=True)
    for index, slots in zip(episodes, np.split(by_episode, starts[1:]), strict=True):
        episode = store.read(int(index))  # it verified while fast-forwarding
        pool[slots] = episode.frames[frame_ids[slots]]
        del episode
    return pool


def load_encoded(encoded_store: EpisodeStore, limit: int | None = None) -> list[EncodedEpisode]:
    """Every readable encoded episode (the first `limit`, in index order, when given), checked
    for one latent and one action size. With a limit only those files are read and verified."""
    readable = (episode for _, episode in encoded_store.episodes())
    episodes = list(readable if limit is None else itertools.islice(readable, limit))
    if not episodes:
        raise ValueError(f"{encoded_store.root} holds no encoded episodes")
    if not all(isinstance(episode, EncodedEpisode) for episode in episodes):
        raise ValueError(f"{encoded_store.root} holds frames, not encoded episodes")
    sizes = {(e.mu.shape[1], e.actions.shape[1]) for e in episodes}
    if len(sizes) != 1:
        raise ValueError(f"{encoded_store.root} mixes (latent, action) sizes {sorted(sizes)}")
    return episodes


# Domain tags of the seeds below, so a stream's episode orders and a random window's draws never
# share numpy entropy.
_STREAM_TAG, _RANDOM_TAG = 0, 1
SEQUENCE_WINDOWS = ("stream", "random")


def _seed_words(key_or_seed: Any) -> list[int]:
    """An int seed or a JAX key (typed or raw uint32) as entropy words for numpy's SeedSequence."""
    if isinstance(key_or_seed, int | np.integer):
        return [int(key_or_seed)]
    import jax

    key = key_or_seed
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, dtype=np.uint32).ravel().tolist()


class _EpisodeStream:
    """One batch row's endless stream: epochs of every episode, each epoch in its own order.

    Every epoch is `sum(lengths)` steps long, so stream position p lies in epoch p // total and
    is found without reading anything before it: a window is a function of (seed, row, p).
    """

    def __init__(self, words: list[int], row: int, lengths: np.ndarray):
        self._words, self._row, self._lengths = words, row, lengths
        self._total = int(lengths.sum())
        self._epochs: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def _epoch(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        if epoch not in self._epochs:
            seed = [*self._words, _STREAM_TAG, self._row, epoch]
            order = np.random.default_rng(seed).permutation(len(self._lengths))
            for old in [e for e in self._epochs if e < epoch - 1]:  # windows only move forward
                del self._epochs[old]
            self._epochs[epoch] = order, np.cumsum(self._lengths[order])
        return self._epochs[epoch]

    def locate(self, position: int) -> tuple[int, int]:
        """(episode, step) at stream position `position`."""
        epoch, offset = divmod(position, self._total)
        order, ends = self._epoch(epoch)
        slot = int(np.searchsorted(ends, offset, side="right"))
        episode = int(order[slot])
        return episode, offset - (int(ends[slot]) - int(self._lengths[episode]))


def sequence_batches(
    seed: Any,
    encoded_store: EpisodeStore,
    batch_size: int,
    seq_len: int,
    num_batches: int | None = None,
    *,
    windows: str = "random",
    start_batch: int = 0,
) -> Iterator[Any]:
    """Windows of `seq_len` steps (seq_len + 1 latents) for M, as `mdn_rnn_train.SequenceBatch`es.

    windows="stream" (what `mdn_rnn_train.MDNTrainConfig.windows` selects by default) is how the
    authors fed Doom's M (doomrnn/rnn_train.py): batch row b is an endless stream of whole
    episodes, one epoch of every episode after another, each epoch in a random order of its
    own; restart is True at each episode's first step, and batch k holds stream steps
    [k·seq_len, (k+1)·seq_len) of every row. M carries each row's LSTM state from batch k to
    k + 1 (`MDNTrainState.carry`), so every step of an episode, the first included, is trained
    exactly once per epoch of a row, from the state the dream has there: the dream starts at
    step 0 from a zero state. (Random windows start there in about 1 / seq_len of rows and show
    an episode's first steps ~seq_len times less often than its late ones.) An episode's last
    step has its done and no target (mask False), and the next step is the next episode's first;
    nothing is padded. Per-row orders rather than one order dealt over the rows (the authors')
    make every epoch the same length, so batch k is found without replaying batches 0..k-1.

    windows="random": a window starts at a uniform step of an episode drawn with probability
    proportional to its length, from a zero state; a window reaching the episode's end holds
    its last action (its done, with no next latent: mask False); steps past the end are zero,
    restart False and masked.

    Either way batch k is a function of (seed, k): `start_batch=k` yields exactly what an
    uninterrupted stream yields from its batch k on, so a resumed run sees the same batches.
    The encoded episodes are held in memory (T x 2Z float32 each).

    Args:
        num_batches: the stream ends before batch `num_batches` (None: endless).
        start_batch: index of the first batch yielded.
    Returns:
        SequenceBatch of numpy arrays: mu, logvar (B, L+1, Z); actions (B, L, A); restarts,
        dones, mask (B, L) bool; rewards (B, L) float32.
    """
    if windows not in SEQUENCE_WINDOWS:
        raise ValueError(f"windows={windows!r}: choose one of {SEQUENCE_WINDOWS}")
    if batch_size < 1 or seq_len < 1 or start_batch < 0:
        raise ValueError(
            f"need batch_size ≥ 1, seq_len ≥ 1, start_batch ≥ 0; got {batch_size}, {seq_len}, "
            f"{start_batch}"
        )
    from wm_jax.train.mdn_rnn_train import SequenceBatch

    words = _seed_words(seed)
    episodes = load_encoded(encoded_store)
    latent_dim, action_dim = episodes[0].mu.shape[1], episodes[0].actions.shape[1]
    lengths = np.array([len(episode.actions) for episode in episodes])
    streams = [_EpisodeStream(words, row, lengths) for row in range(batch_size)]
    end = itertools.count(start_batch) if num_batches is None else range(start_batch, num_batches)
    for index in end:
        mu = np.zeros((batch_size, seq_len + 1, latent_dim), np.float32)
        logvar = np.zeros_like(mu)
        actions = np.zeros((batch_size, seq_len, action_dim), np.float32)
        rewards = np.zeros((batch_size, seq_len), np.float32)
        restarts, dones, mask = (np.zeros((batch_size, seq_len), bool) for _ in range(3))
        fields = (mu, logvar, actions, rewards, restarts, dones, mask)
        if windows == "stream":
            for row, stream in enumerate(streams):
                _fill_stream_row(fields, row, stream, episodes, index * seq_len)
        else:
            rng = np.random.default_rng([*words, _RANDOM_TAG, index])
            chosen = rng.choice(len(episodes), batch_size, p=lengths / lengths.sum())
            for row, episode in enumerate(chosen):
                # Any step may start a window, so windows run past an episode's end (padded,
                # masked) as often as the episode has steps: its last steps, where Doom's deaths
                # are, are seen in about seq_len / length of its windows. Starting only where a
                # whole window fits would show the final step (the done) once in length - seq_len
                # windows, and M's done head would never learn it.
                start = int(rng.integers(0, lengths[episode]))
                _fill_segment(fields, row, 0, episodes[episode], start, seq_len + 1)
        yield SequenceBatch(mu, logvar, actions, restarts, dones, rewards, mask)


def _fill_segment(fields, row: int, at: int, episode: EncodedEpisode, step: int, room: int) -> int:
    """Copies episode steps step.. into window positions at.. (at most `room` latents).

    Returns the number of latents copied; steps (actions, ...) stop at the window's seq_len.
    """
    mu, logvar, actions, rewards, restarts, dones, mask = fields
    length = len(episode.actions)
    num_latents = min(room, length - step)
    num_steps = min(num_latents, actions.shape[1] - at)
    mu[row, at : at + num_latents] = episode.mu[step : step + num_latents]
    logvar[row, at : at + num_latents] = episode.logvar[step : step + num_latents]
    if num_steps > 0:
        actions[row, at : at + num_steps] = episode.actions[step : step + num_steps]
        rewards[row, at : at + num_steps] = episode.rewards[step : step + num_steps]
        dones[row, at : at + num_steps] = episode.dones[step : step + num_steps]
        restarts[row, at] = step == 0
        # z(t + 1) is a target inside the episode only: its last step has none.
        mask[row, at : at + num_steps] = step + np.arange(num_steps) < length - 1
    return num_latents


def _fill_stream_row(fields, row: int, stream: _EpisodeStream, episodes, position: int) -> None:
    """Window positions 0..seq_len of `row` from stream positions position.., episode by episode."""
    window = fields[0].shape[1]  # seq_len + 1 latents
    filled = 0
    while filled < window:
        episode, step = stream.locate(position + filled)
        filled += _fill_segment(fields, row, filled, episodes[episode], step, window - filled)
