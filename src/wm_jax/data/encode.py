"""V over a whole store: every episode's frames -> (mu, logvar) sequences in an encoded store."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from wm_jax.data.store import EncodedEpisode, Episode, EpisodeStore

_FLUSH_SECONDS = 10.0
# Episode i mirrored left-right is stored at index MIRROR_OFFSET + i (collection indices, §5
# iterations included, stay far below it).
MIRROR_OFFSET = 1_000_000_000


def params_fingerprint(params: Any) -> str:
    """sha256 of a parameter pytree's leaves: which V made an encoded store."""
    import jax

    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves(params):
        leaf = np.asarray(leaf)
        digest.update(f"{leaf.dtype}{leaf.shape}".encode())
        digest.update(np.ascontiguousarray(leaf).tobytes())
    return digest.hexdigest()


def _bucket(num_frames: int, batch_size: int) -> int:
    """Padded chunk size: a power of two up to batch_size, so jit compiles a few shapes only."""
    return min(batch_size, 1 << max(num_frames - 1, 0).bit_length())


class _Packer:
    """Frames of consecutive episodes through V in full batches (no padding but the last).

    Episodes are a few hundred frames long: one padded batch per episode wasted up to half of
    V's work. Codes come back per episode, in the order added, once its last frame is through.
    """

    def __init__(self, run: Callable[[np.ndarray], tuple[Any, Any]], batch_size: int):
        self.run, self.batch_size = run, batch_size
        self.waiting: list[tuple[Any, int]] = []  # (tag, frames) not yet handed back, in order
        self.frames: list[np.ndarray] = []  # frames not yet through V
        self.num_frames = 0
        self.codes: list[tuple[Any, Any]] = []  # (mu, logvar) chunks not yet handed back
        self.num_codes = 0

    def add(self, tag: Any, frames: np.ndarray) -> None:
        self.waiting.append((tag, len(frames)))
        self.frames.append(frames)
        self.num_frames += len(frames)
        while self.num_frames >= self.batch_size:
            self._encode(self.batch_size)

    def _encode(self, count: int) -> None:
        frames = self.frames[0] if len(self.frames) == 1 else np.concatenate(self.frames)
        self.frames = [frames[count:]]
        self.num_frames -= count
        self.codes.append(self.run(frames[:count]))  # dispatched; read back in ready()
        self.num_codes += count

    def ready(self) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        """(tag, mu (T, Z), logvar (T, Z)) of every episode whose frames are all encoded."""
        if not self.waiting or self.waiting[0][1] > self.num_codes:
            return []
        # One read-back of every chunk through V so far, then one slice per finished episode.
        mu, logvar = (
            np.concatenate([np.asarray(c[i], np.float32) for c in self.codes]) for i in (0, 1)
        )
        out, begin = [], 0
        while self.waiting and self.waiting[0][1] <= self.num_codes - begin:
            tag, length = self.waiting.pop(0)
            out.append((tag, mu[begin : begin + length], logvar[begin : begin + length]))
            begin += length
        self.codes = [(mu[begin:], logvar[begin:])]
        self.num_codes -= begin
        return out

    def finish(self) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        if self.num_frames:
            self._encode(self.num_frames)
        return self.ready()


def encode_store(
    vae_params: Any,
    store: EpisodeStore,
    out_store: EpisodeStore,
    batch_size: int = 1024,
    progress: bool = True,
    mirror_signs: tuple[float, ...] | None = None,
    mesh: Any = None,
    share: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """Writes `EncodedEpisode(mu, logvar, actions, rewards, dones)` for every stored episode.

    With `mirror_signs`, each episode is also written mirrored at `MIRROR_OFFSET + index`: V's
    codes of the left-right flipped frames, actions multiplied by `mirror_signs` (A,).

    Resumable: episodes already in `out_store` are kept, provided it was made by the same V
    (checked by a fingerprint of the parameters in its meta.json; a different V raises). Frames
    go through a jitted `vae.encode` in full batches of `batch_size`, across episodes. Corrupt
    source episodes are skipped with a warning (or raise if `store.strict`). With a `mesh`
    (`wm_jax.core.devices.data_mesh`) each chunk is split over its devices, V replicated.
    `share=(i, N)`: only every N-th episode still to encode, from the i-th (one process of N).

    Returns:
        counts: encoded (this call, this share), already_done (before it), skipped_corrupt,
        frames, seconds.
    """
    from tqdm.auto import tqdm

    from wm_jax.core import devices, kernels
    from wm_jax.models import vae

    fingerprint = params_fingerprint(vae_params)
    meta = {"source": str(store.root.resolve()), "vae_params_sha256": fingerprint}
    previous = out_store.read_meta()
    if previous.get("vae_params_sha256", fingerprint) != fingerprint:
        raise ValueError(f"{out_store.root} was encoded by other VAE parameters; use a new folder")
    out_store.write_meta(meta | {"latent_dim": vae.latent_dim_of(vae_params)})

    vae_params = devices.replicate(vae_params, mesh)
    parts = devices.device_count(mesh)

    @kernels.jit_vae  # XLA:CPU's Eigen convolutions: 5x YNNPACK's here (wm_jax.core.kernels)
    def encode(params, frames):  # (N, 64, 64, 3) uint8 -> (N, Z), (N, Z)
        return vae.encode(params, vae.frames_to_float(frames))

    def missing(index: int) -> bool:
        mirror_missing = mirror_signs is not None and not out_store.has(MIRROR_OFFSET + index)
        return not out_store.has(index) or mirror_missing

    def run(frames: np.ndarray) -> tuple[Any, Any]:  # (n <= batch_size, 64, 64, 3) -> codes
        size = -(-_bucket(len(frames), batch_size) // parts) * parts  # splits evenly
        padded = np.zeros((size, *frames.shape[1:]), np.uint8)
        padded[: len(frames)] = frames
        mu, logvar = encode(vae_params, devices.shard_batch(padded, mesh))
        return mu[: len(frames)], logvar[: len(frames)]

    packer = _Packer(run, batch_size)
    signs = None if mirror_signs is None else np.asarray(mirror_signs, np.float32)
    todo = [index for index in store.indices() if missing(index)]
    summary = {"encoded": 0, "already_done": len(store) - len(todo), "skipped_corrupt": 0}
    todo = todo[share[0] :: share[1]]  # this process's share (wm_jax.core.distributed)
    summary["frames"] = 0
    start = last_flush = time.perf_counter()

    def write(tag: tuple[int, bool, Episode], mu: np.ndarray, logvar: np.ndarray) -> None:
        index, mirrored, episode = tag
        if mirrored:
            actions = (episode.actions * signs).astype(np.float32)
            out_store.write(
                MIRROR_OFFSET + index,
                EncodedEpisode(mu, logvar, actions, *episode[2:]),
                flush=False,
            )
        else:
            out_store.write(index, EncodedEpisode(mu, logvar, *episode[1:]), flush=False)

    for index in tqdm(todo, unit="ep", disable=not progress, desc="encode"):
        episode = store.read_or_skip(index)
        if episode is None:
            summary["skipped_corrupt"] += 1
            continue
        if not isinstance(episode, Episode):
            raise ValueError(f"{store.path(index)} is already encoded")
        if not out_store.has(index):
            packer.add((index, False, episode), episode.frames)
        if signs is not None and not out_store.has(MIRROR_OFFSET + index):  # flip the width
            packer.add((index, True, episode), np.ascontiguousarray(episode.frames[:, :, ::-1]))
        for done in packer.ready():
            write(*done)
        summary["encoded"] += 1
        summary["frames"] += len(episode.frames)
        if time.perf_counter() - last_flush > _FLUSH_SECONDS:
            out_store.flush()
            last_flush = time.perf_counter()
    for done in packer.finish():
        write(*done)
    out_store.flush()
    return summary | {"seconds": time.perf_counter() - start}
