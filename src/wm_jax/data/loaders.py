"""Minibatch streams over an `EpisodeStore`: frames for V, latent sequences for M."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from typing import Any

import numpy as np

from wm_jax.data.store import EncodedEpisode, EpisodeStore

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
) -> Iterator[np.ndarray]:
    """Shuffled uint8 (B, 64, 64, 3) frame batches holding about `memory_budget_bytes` of frames.

    A pool of decoded episodes, at most budget / 12,288 frames, is filled in a seeded random
    episode order, its frames shuffled across episodes and drained in batches; the < B frames
    left over stay for the next fill, so an epoch drops at most one partial batch at the end of
    the run. Besides the pool, one episode being decoded (briefly about twice its decoded size)
    and one batch are alive at a time. Corrupt
    episodes are skipped with a warning (or raise if the store is strict).

    Args:
        num_epochs: passes over the store, each in a new random order; None for endless.
    """
    rng = _rng(key_or_seed)
    indices = store.indices()
    if not indices:
        raise ValueError(f"{store.root} holds no episodes")
    lengths = {index: store.num_frames(index) for index in indices}
    longest = max(lengths.values())
    needed = (longest + batch_size) * FRAME_BYTES
    if memory_budget_bytes < needed:
        raise ValueError(
            f"memory_budget_bytes={memory_budget_bytes} is too small: the longest episode "
            f"({longest} frames) plus a batch of {batch_size} needs {needed}"
        )
    capacity = min(memory_budget_bytes // FRAME_BYTES, sum(lengths.values()))
    pool = np.empty((capacity, 64, 64, 3), dtype=np.uint8)
    held = 0
    epochs = itertools.count() if num_epochs is None else range(num_epochs)
    for _ in epochs:
        queue = deque(rng.permutation(indices).tolist())
        while queue:
            while queue and held + lengths[queue[0]] <= capacity:
                episode = store.read_or_skip(queue.popleft())
                if episode is not None:
                    pool[held : held + len(episode.frames)] = episode.frames
                    held += len(episode.frames)
                del episode
            order = rng.permutation(held)
            num_batches = held // batch_size
            for batch in range(num_batches):
                yield pool[order[batch * batch_size : (batch + 1) * batch_size]]
            leftover = order[num_batches * batch_size :]
            pool[: len(leftover)] = pool[leftover]
            held = len(leftover)


def load_encoded(encoded_store: EpisodeStore) -> list[EncodedEpisode]:
    """Every readable encoded episode, checked for one latent and one action size."""
    episodes = [episode for _, episode in encoded_store.episodes()]
    if not episodes:
        raise ValueError(f"{encoded_store.root} holds no encoded episodes")
    if not all(isinstance(episode, EncodedEpisode) for episode in episodes):
        raise ValueError(f"{encoded_store.root} holds frames, not encoded episodes")
    sizes = {(e.mu.shape[1], e.actions.shape[1]) for e in episodes}
    if len(sizes) != 1:
        raise ValueError(f"{encoded_store.root} mixes (latent, action) sizes {sorted(sizes)}")
    return episodes


def sequence_batches(
    seed: Any,
    encoded_store: EpisodeStore,
    batch_size: int,
    seq_len: int,
    num_batches: int | None = None,
) -> Iterator[Any]:
    """Random windows of `seq_len` steps (seq_len + 1 latents) as `mdn_rnn.SequenceBatch`es.

    A window starts at a uniform step of an episode drawn with probability proportional to its
    length, so every step is about equally likely (but for the first seq_len of each episode); a
    window reaching the episode's end holds its last action (its done, with no next latent:
    mask False). Steps past the end of a shorter episode are zero,
    restart False and masked. The encoded episodes are held in memory (T x 2Z float32 each).

    Returns:
        SequenceBatch of numpy arrays: mu, logvar (B, L+1, Z); actions (B, L, A); restarts,
        dones, mask (B, L) bool; rewards (B, L) float32.
    """
    from wm_jax.mdn_rnn import SequenceBatch

    rng = _rng(seed)
    episodes = load_encoded(encoded_store)
    latent_dim, action_dim = episodes[0].mu.shape[1], episodes[0].actions.shape[1]
    lengths = np.array([len(episode.actions) for episode in episodes])
    probabilities = lengths / lengths.sum()
    batches = itertools.count() if num_batches is None else range(num_batches)
    for _ in batches:
        mu = np.zeros((batch_size, seq_len + 1, latent_dim), np.float32)
        logvar = np.zeros_like(mu)
        actions = np.zeros((batch_size, seq_len, action_dim), np.float32)
        rewards = np.zeros((batch_size, seq_len), np.float32)
        restarts, dones, mask = (np.zeros((batch_size, seq_len), bool) for _ in range(3))
        for row, chosen in enumerate(rng.choice(len(episodes), batch_size, p=probabilities)):
            episode, length = episodes[chosen], int(lengths[chosen])
            # Any step may start a window, so windows run past an episode's end (padded,
            # masked) as often as the episode has steps: its last steps, where Doom's deaths
            # are, are seen in about seq_len / length of its windows. Starting only where a
            # whole window fits would show the final step (the done) once in length - seq_len
            # windows, and M's done head would never learn it.
            start = int(rng.integers(0, length))
            num_latents = min(seq_len + 1, length - start)
            num_steps = min(seq_len, length - start)
            mu[row, :num_latents] = episode.mu[start : start + num_latents]
            logvar[row, :num_latents] = episode.logvar[start : start + num_latents]
            actions[row, :num_steps] = episode.actions[start : start + num_steps]
            rewards[row, :num_steps] = episode.rewards[start : start + num_steps]
            dones[row, :num_steps] = episode.dones[start : start + num_steps]
            restarts[row, 0] = start == 0
            mask[row, : num_latents - 1] = True  # z(t + 1) stored
        yield SequenceBatch(mu, logvar, actions, restarts, dones, rewards, mask)
