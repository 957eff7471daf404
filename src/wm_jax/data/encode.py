"""V over a whole store: every episode's frames -> (mu, logvar) sequences in an encoded store."""

from __future__ import annotations

import hashlib
import time
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
    go through a jitted `vae.encode` in chunks of at most `batch_size`. Corrupt source episodes
    are skipped with a warning (or raise if `store.strict`). With a `mesh`
    (`wm_jax.core.devices.data_mesh`) each chunk is split over its devices, V replicated.
    `share=(i, N)`: only every N-th episode still to encode, from the i-th (one process of N).

    Returns:
        counts: encoded (this call, this share), already_done (before it), skipped_corrupt,
        frames, seconds.
    """
    import jax
    from tqdm.auto import tqdm

    from wm_jax.core import devices
    from wm_jax.models import vae

    fingerprint = params_fingerprint(vae_params)
    meta = {"source": str(store.root.resolve()), "vae_params_sha256": fingerprint}
    previous = out_store.read_meta()
    if previous.get("vae_params_sha256", fingerprint) != fingerprint:
        raise ValueError(f"{out_store.root} was encoded by other VAE parameters; use a new folder")
    out_store.write_meta(meta | {"latent_dim": vae.latent_dim_of(vae_params)})

    vae_params = devices.replicate(vae_params, mesh)
    parts = devices.device_count(mesh)

    @jax.jit
    def encode(params, frames):  # (N, 64, 64, 3) uint8 -> (N, Z), (N, Z)
        return vae.encode(params, vae.frames_to_float(frames))

    def missing(index: int) -> bool:
        mirror_missing = mirror_signs is not None and not out_store.has(MIRROR_OFFSET + index)
        return not out_store.has(index) or mirror_missing

    def codes(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mus, logvars = [], []
        for begin in range(0, len(frames), batch_size):
            chunk = frames[begin : begin + batch_size]
            size = -(-_bucket(len(chunk), batch_size) // parts) * parts  # splits evenly
            padded = np.zeros((size, *chunk.shape[1:]), np.uint8)
            padded[: len(chunk)] = chunk
            mu, logvar = encode(vae_params, devices.shard_batch(padded, mesh))
            mus.append(np.asarray(mu[: len(chunk)], np.float32))
            logvars.append(np.asarray(logvar[: len(chunk)], np.float32))
        return np.concatenate(mus), np.concatenate(logvars)

    signs = None if mirror_signs is None else np.asarray(mirror_signs, np.float32)
    todo = [index for index in store.indices() if missing(index)]
    summary = {"encoded": 0, "already_done": len(store) - len(todo), "skipped_corrupt": 0}
    todo = todo[share[0] :: share[1]]  # this process's share (wm_jax.core.distributed)
    summary["frames"] = 0
    start = last_flush = time.perf_counter()
    for index in tqdm(todo, unit="ep", disable=not progress, desc="encode"):
        episode = store.read_or_skip(index)
        if episode is None:
            summary["skipped_corrupt"] += 1
            continue
        if not isinstance(episode, Episode):
            raise ValueError(f"{store.path(index)} is already encoded")
        if not out_store.has(index):
            encoded = EncodedEpisode(*codes(episode.frames), *episode[1:])
            out_store.write(index, encoded, flush=False)
        if signs is not None:
            mirrored = EncodedEpisode(
                *codes(np.ascontiguousarray(episode.frames[:, :, ::-1])),  # flip the width axis
                (episode.actions * signs).astype(np.float32),
                *episode[2:],
            )
            out_store.write(MIRROR_OFFSET + index, mirrored, flush=False)
        summary["encoded"] += 1
        summary["frames"] += len(episode.frames)
        if time.perf_counter() - last_flush > _FLUSH_SECONDS:
            out_store.flush()
            last_flush = time.perf_counter()
    out_store.flush()
    return summary | {"seconds": time.perf_counter() - start}
