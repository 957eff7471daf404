"""Episode store and loaders: the data path from collected rollouts to V's and M's batches.

`EpisodeStore` keeps one compressed .npz per episode (frames or, after `encode_store`, V's
latents); `frame_batches` streams shuffled frames for V within a memory budget and
`sequence_batches` samples latent windows for M. Importing this package does not import JAX.
"""

from wm_jax.data.encode import encode_store, params_fingerprint
from wm_jax.data.loaders import frame_batches, load_encoded, sequence_batches
from wm_jax.data.store import (
    CorruptEpisodeError,
    EncodedEpisode,
    Episode,
    EpisodeStore,
    NoEpisodesError,
    atomic_write,
    episode_path,
    write_episode_file,
)

__all__ = [
    "CorruptEpisodeError",
    "EncodedEpisode",
    "Episode",
    "EpisodeStore",
    "NoEpisodesError",
    "atomic_write",
    "encode_store",
    "episode_path",
    "frame_batches",
    "load_encoded",
    "params_fingerprint",
    "sequence_batches",
    "write_episode_file",
]
