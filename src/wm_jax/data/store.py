"""Episode store: one compressed .npz per episode, written atomically, listed in manifest.json.

The files are the truth. `manifest.json` (counts, frames and sha256 per file) is a cache that
opening a store reconciles with the folder, so a crash between an episode's write and the next
manifest flush, or a lost manifest, costs a re-scan and never an episode. One process writes the
manifest; collection workers write episode files only (`write_episode_file`) and report them.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from wm_jax.core.files import atomic_write

MANIFEST = "manifest.json"
META = "meta.json"
_EPISODE_FILE = re.compile(r"^episode_(\d+)\.(npz|skip)$")
_STALE_TEMP_SECONDS = 3600  # temp files older than this are leftovers of a killed writer


class Episode(NamedTuple):
    frames: np.ndarray  # (T, 64, 64, 3) uint8, frames[t] is what action t was chosen on
    actions: np.ndarray  # (T, A) float32 controller outputs in [-1, 1]
    rewards: np.ndarray  # (T,) float32 reward for action t
    dones: np.ndarray  # (T,) bool, the game ended after action t (not set when cut at a cap)


class EncodedEpisode(NamedTuple):
    mu: np.ndarray  # (T, Z) float32 V's posterior means of frames[t]
    logvar: np.ndarray  # (T, Z) float32 V's posterior log-variances
    actions: np.ndarray  # (T, A) float32
    rewards: np.ndarray  # (T,) float32
    dones: np.ndarray  # (T,) bool


class CorruptEpisodeError(Exception):
    """An episode file that cannot be trusted; `path` names it."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = Path(path)
        super().__init__(f"corrupt episode file {self.path}: {reason}")


class NoEpisodesError(ValueError):
    """Too little of a store is readable to train on; the message names the folder and counts."""


def episode_path(root: str | os.PathLike, index: int) -> Path:
    return Path(root) / f"episode_{index:06d}.npz"


def _skip_path(root: str | os.PathLike, index: int) -> Path:
    return Path(root) / f"episode_{index:06d}.skip"


def _check(episode: Any) -> Episode | EncodedEpisode:
    """Validates fields, dtypes and lengths; raises ValueError saying what is wrong."""
    if not isinstance(episode, Episode | EncodedEpisode):
        raise ValueError(f"expected an Episode or EncodedEpisode, got {type(episode).__name__}")
    length = len(episode.actions)
    for name, value in episode._asdict().items():
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{name} is a {type(value).__name__}, not a numpy array")
        if value.shape[:1] != (length,):
            raise ValueError(f"{name} has shape {value.shape}, expected length {length}")
    if length == 0:
        raise ValueError("an episode needs at least one step")
    expected = {"actions": (np.float32, 2), "rewards": (np.float32, 1), "dones": (np.bool_, 1)}
    if isinstance(episode, Episode):
        expected["frames"] = (np.uint8, 4)
        if episode.frames.shape[1:] != (64, 64, 3):
            raise ValueError(f"frames have shape {episode.frames.shape}, expected (T, 64, 64, 3)")
    else:
        expected["mu"] = expected["logvar"] = (np.float32, 2)
        if episode.mu.shape != episode.logvar.shape:
            raise ValueError(f"mu {episode.mu.shape} and logvar {episode.logvar.shape} differ")
    for name, (dtype, ndim) in expected.items():
        value = getattr(episode, name)
        if value.dtype != dtype or value.ndim != ndim:
            raise ValueError(f"{name} is {value.dtype} {value.ndim}-d, expected {dtype} {ndim}-d")
    return episode


def _npz_bytes(arrays: dict[str, np.ndarray], compresslevel: int) -> bytes:
    """A compressed .npz that np.load reads, byte-identical for identical arrays.

    np.savez_compressed stamps the current time into the zip, so equal episodes would hash
    differently; a fixed stamp lets the manifest's sha256 show reproducibility.
    """
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=compresslevel) as zf:
        for name, value in arrays.items():
            array_bytes = io.BytesIO()
            np.lib.format.write_array(array_bytes, np.ascontiguousarray(value), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, array_bytes.getvalue(), compresslevel=compresslevel)
    return buffer.getvalue()


def write_episode_file(
    root: str | os.PathLike, index: int, episode: Episode | EncodedEpisode, compresslevel: int = 6
) -> dict[str, Any]:
    """Writes one episode file atomically (no manifest update); returns its manifest record."""
    data = _npz_bytes(_check(episode)._asdict(), compresslevel)
    path = episode_path(root, index)
    atomic_write(path, data)
    record = {"file": path.name, "frames": len(episode.actions), "bytes": len(data)}
    return record | {"sha256": hashlib.sha256(data).hexdigest()}


def _decode(path: Path, data: bytes) -> Episode | EncodedEpisode:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except Exception as error:  # a bad zip, a truncated member, a bad header: all corrupt
        raise CorruptEpisodeError(path, f"cannot be read ({type(error).__name__}: {error})")
    kind = EncodedEpisode if "mu" in arrays else Episode
    if set(arrays) != set(kind._fields):
        raise CorruptEpisodeError(path, f"holds {sorted(arrays)}, expected {list(kind._fields)}")
    try:
        return _check(kind(**arrays))
    except ValueError as error:
        raise CorruptEpisodeError(path, str(error)) from None


class EpisodeStore:
    """A folder of episodes `episode_000123.npz` (+ `episode_000123.skip` for dropped ones).

    Args:
        root: the folder (created if missing).
        strict: loaders raise `CorruptEpisodeError` on a bad file instead of skipping it with a
            warning naming it. `read` always raises.
    """

    def __init__(self, root: str | os.PathLike, strict: bool = False):
        self.root = Path(root)
        self.strict = strict
        self.root.mkdir(parents=True, exist_ok=True)
        self._episodes: dict[int, dict[str, Any]] = {}
        self._skipped: dict[int, dict[str, Any]] = {}
        self._warned: set[int] = set()
        self._load_manifest()
        self.refresh()

    # Manifest
    def _load_manifest(self) -> None:
        try:
            manifest = json.loads((self.root / MANIFEST).read_text())
            self._episodes = {int(i): r for i, r in manifest["episodes"].items()}
            self._skipped = {int(i): r for i, r in manifest["skipped"].items()}
        except FileNotFoundError:
            pass
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            warnings.warn(f"rebuilding unreadable {self.root / MANIFEST}: {error}", stacklevel=3)

    def refresh(self) -> None:
        """Reconciles the manifest with the files in the folder (new, removed, skip markers)."""
        on_disk: dict[str, set[int]] = {"npz": set(), "skip": set()}
        now = time.time()
        for entry in os.scandir(self.root):
            match = _EPISODE_FILE.match(entry.name)
            if match:
                on_disk[match.group(2)].add(int(match.group(1)))
            elif entry.name.endswith(".tmp") and now - entry.stat().st_mtime > _STALE_TEMP_SECONDS:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        changed = bool(set(self._episodes) - on_disk["npz"] or set(self._skipped) - on_disk["skip"])
        self._episodes = {i: r for i, r in self._episodes.items() if i in on_disk["npz"]}
        self._skipped = {i: r for i, r in self._skipped.items() if i in on_disk["skip"]}
        for index in sorted(on_disk["npz"] - set(self._episodes)):
            path = episode_path(self.root, index)
            try:
                data = path.read_bytes()
                episode = _decode(path, data)
            except (CorruptEpisodeError, OSError) as error:
                self._corrupt(index, error)
                continue
            self._episodes[index] = {
                "file": path.name,
                "frames": len(episode.actions),
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
            }
            changed = True
        for index in sorted(on_disk["skip"] - set(self._skipped)):
            with contextlib.suppress(OSError, ValueError):
                self._skipped[index] = json.loads(_skip_path(self.root, index).read_text())
                changed = True
        if changed:
            self.flush()

    def flush(self) -> None:
        """Writes manifest.json atomically."""
        manifest = {
            "version": 1,
            "num_episodes": len(self._episodes),
            "num_frames": self.total_frames,
            "num_skipped": len(self._skipped),
            "bytes": sum(r["bytes"] for r in self._episodes.values()),
            "episodes": {str(i): self._episodes[i] for i in sorted(self._episodes)},
            "skipped": {str(i): self._skipped[i] for i in sorted(self._skipped)},
        }
        atomic_write(self.root / MANIFEST, json.dumps(manifest, indent=1).encode())

    def read_meta(self) -> dict[str, Any]:
        """meta.json (what wrote the store: game, seed, ...); {} when absent."""
        try:
            return json.loads((self.root / META).read_text())
        except FileNotFoundError:
            return {}

    def write_meta(self, meta: dict[str, Any]) -> None:
        atomic_write(self.root / META, json.dumps(meta, indent=1).encode())

    # Writing
    def write(
        self, index: int, episode: Episode | EncodedEpisode, *, flush: bool = True
    ) -> dict[str, Any]:
        """Writes an episode file atomically and records it; returns its manifest record."""
        record = write_episode_file(self.root, index, episode)
        self.add_record(index, record, flush=flush)
        return record

    def add_record(self, index: int, record: dict[str, Any], *, flush: bool = True) -> None:
        """Records a file another process wrote with `write_episode_file`."""
        self._episodes[index] = record
        self._skipped.pop(index, None)
        self._warned.discard(index)
        with contextlib.suppress(FileNotFoundError):
            _skip_path(self.root, index).unlink()
        if flush:
            self.flush()

    def mark_skipped(self, index: int, reason: str, *, flush: bool = True, **info: Any) -> None:
        """Records that episode `index` was dropped (e.g. too short) so resuming skips it."""
        record = {"reason": reason} | info
        atomic_write(_skip_path(self.root, index), json.dumps(record).encode())
        self._skipped[index] = record
        if flush:
            self.flush()

    # Reading
    def indices(self) -> list[int]:
        return sorted(self._episodes)

    def has(self, index: int) -> bool:
        return index in self._episodes

    def __contains__(self, index: object) -> bool:
        return index in self._episodes

    def __len__(self) -> int:
        return len(self._episodes)

    def skipped(self) -> dict[int, dict[str, Any]]:
        return dict(self._skipped)

    def finished(self, index: int) -> bool:
        """Stored or deliberately skipped: collection need not run it again."""
        return index in self._episodes or index in self._skipped

    def num_frames(self, index: int) -> int:
        return int(self._episodes[index]["frames"])

    @property
    def total_frames(self) -> int:
        return sum(int(r["frames"]) for r in self._episodes.values())

    @property
    def total_bytes(self) -> int:
        return sum(int(r["bytes"]) for r in self._episodes.values())

    def path(self, index: int) -> Path:
        return episode_path(self.root, index)

    def read(self, index: int) -> Episode | EncodedEpisode:
        """Loads and verifies (sha256, shapes, dtypes, lengths) one episode.

        Raises:
            KeyError: the store has no episode `index`.
            CorruptEpisodeError: the file is missing, truncated, altered or inconsistent.
        """
        data = self._verified_bytes(index)
        episode = _decode(self.path(index), data)
        if len(episode.actions) != self._episodes[index]["frames"]:
            raise CorruptEpisodeError(self.path(index), "length differs from the manifest")
        return episode

    def _verified_bytes(self, index: int) -> bytes:
        """The file of episode `index`, checked against its manifest sha256."""
        record = self._episodes[index]  # KeyError for an episode the store does not hold
        path = self.path(index)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise CorruptEpisodeError(path, f"cannot be opened ({error})") from None
        if hashlib.sha256(data).hexdigest() != record["sha256"]:
            raise CorruptEpisodeError(path, "sha256 differs from the manifest")
        return data

    def readable(self, index: int) -> bool:
        """Whether `read(index)` would succeed, from the file's sha256 alone (no decoding).

        The manifest's sha256 was taken of a file that decoded and checked, so a match means the
        same. A corrupt file gives False and a warning (raises if `strict`), as `read_or_skip`.
        """
        try:
            self._verified_bytes(index)
        except CorruptEpisodeError as error:
            self._corrupt(index, error)
            return False
        return True

    def readable_summary(self) -> dict[str, Any]:
        """Checks every file once (`readable`): what a loader will use and what it will skip.

        Returns:
            {"episodes": readable episodes, "frames": their frames, "corrupt": [file names]}.
        """
        corrupt = [index for index in self.indices() if not self.readable(index)]
        good = sorted(set(self.indices()) - set(corrupt))
        return {
            "episodes": len(good),
            "frames": sum(self.num_frames(index) for index in good),
            "corrupt": [self.path(index).name for index in corrupt],
        }

    def _corrupt(self, index: int, error: Exception) -> None:
        if self.strict:
            raise (
                error
                if isinstance(error, CorruptEpisodeError)
                else CorruptEpisodeError(self.path(index), str(error))
            )
        if index not in self._warned:
            self._warned.add(index)
            warnings.warn(f"skipping {error}", stacklevel=3)

    def read_or_skip(self, index: int) -> Episode | EncodedEpisode | None:
        """`read`, except that a corrupt file gives None and a warning unless `strict`."""
        try:
            return self.read(index)
        except CorruptEpisodeError as error:
            self._corrupt(index, error)
            return None

    def episodes(self, indices: list[int] | None = None) -> Iterator[tuple[int, Any]]:
        """Yields (index, episode) in order, skipping corrupt files as `read_or_skip` does."""
        for index in self.indices() if indices is None else indices:
            episode = self.read_or_skip(index)
            if episode is not None:
                yield index, episode

    def verify(self) -> list[int]:
        """Reads every episode; returns the indices of corrupt ones (warning or raising)."""
        return [index for index in self.indices() if self.read_or_skip(index) is None]
