"""Checkpoints of parameter and optimizer pytrees, with the config that rebuilds the model.

Layout of a checkpoint folder::

    DIR/config.json               # how to rebuild the model (written atomically)
    DIR/step_000000100/state/     # orbax pytree
    DIR/step_000000100/meta.json  # step, config and the sha256 of every file under state/;
                                  # written last, so its presence marks completion

A save goes to a hidden temporary folder that is renamed into place only once orbax has finished
writing, so a crash or Ctrl-C mid-save never leaves a checkpoint that loads as valid-but-wrong:
the previous step stays the latest complete one. A restore checks the files against meta.json's
checksums first: orbax itself reads flipped bytes as weights (~1e34) without a word. Without a
`step`, a corrupt step is skipped with a warning for the newest one that verifies. Checkpoints
written before the checksums (no "files" in meta.json) load unchecked.

orbax's own traps are handled here: it needs absolute paths, refuses to overwrite, loses an async
save if the process exits first (we wait), restores optax states as plain lists unless given a
target (pass `target=`), and reports a full disk as a page of asyncio traceback (we say one line).

Why not orbax's `CheckpointManager` for the step folders: it finalises a step by its own rename,
and the sha256 manifest must be inside the step before that rename, so a step is either complete
and verifiable or invisible; keeping N and finding the latest are the few lines of `save` and
`all_steps`. Every earlier run's folders load with this layout.

Several processes (`wm_jax.core.distributed`): every process calls `save` (sharded leaves are
gathered, a collective), process 0 alone writes, and the others wait at a barrier until the
step is in place; every process restores on its own from the shared folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
import uuid
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

from wm_jax.core import distributed
from wm_jax.core.files import atomic_write

_STEP_DIR = re.compile(r"^step_(\d{9})$")
# tensorstore (orbax's array writer) reports OS errors as ValueError("...[os_error_code='28']").
_OS_ERROR_CODE = re.compile(r"os_error_code='?(\d+)")


class CheckpointError(Exception):
    """A checkpoint is missing, corrupt or cannot be written; the one-line message names it."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file and `os.replace`: readers see old or new."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _step_dir(directory: Path, step: int) -> Path:
    return directory / f"step_{step:09d}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digests(state_dir: Path) -> dict[str, str]:
    """sha256 of every file under `state_dir`, keyed by its POSIX path relative to it."""
    files = sorted(p for p in state_dir.rglob("*") if p.is_file())
    return {p.relative_to(state_dir).as_posix(): _sha256(p) for p in files}


def _io_cause(error: BaseException) -> str | None:
    """The OS error behind an exception from orbax / tensorstore, in words; None if not I/O."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        err = pending.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, OSError):
            return err.strerror or str(err).splitlines()[0]
        match = _OS_ERROR_CODE.search(str(err))
        if match:
            return os.strerror(int(match.group(1)))
        pending += [err.__cause__, err.__context__, *getattr(err, "exceptions", ())]
    return None


def all_steps(directory: str | os.PathLike) -> list[int]:
    """Complete checkpoint steps in `directory`, ascending (half-written ones are ignored)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    steps = []
    for child in directory.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / "meta.json").is_file() and (child / "state").is_dir():
            steps.append(int(match.group(1)))
    return sorted(steps)


def latest_step(directory: str | os.PathLike) -> int | None:
    """The newest complete step in `directory`, or None when there is none."""
    steps = all_steps(directory)
    return steps[-1] if steps else None


def save(
    directory: str | os.PathLike,
    pytree: Any,
    *,
    step: int,
    config: Mapping[str, Any] | None = None,
    keep: int = 2,
) -> Path:
    """Save `pytree` as checkpoint `step` of `directory`, keeping the newest `keep` steps.

    Args:
      directory: the checkpoint folder (created if missing; relative paths are fine).
      pytree: arrays / flax structs / optax states to save.
      step: a non-negative integer; saving an existing step replaces it atomically.
      config: JSON-serialisable description that rebuilds the model; also written to
        `directory/config.json`.
      keep: how many complete steps to keep (older ones are deleted after the save).

    Returns:
      The folder of the new checkpoint.
    """
    if step < 0:
        raise ValueError(f"checkpoint step must be >= 0, got {step}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    directory = Path(directory).absolute()  # orbax refuses relative paths
    final = _step_dir(directory, step)
    if jax.process_count() > 1:
        pytree = distributed.tree_to_host(pytree)  # every process: gathers sharded leaves
        try:
            if distributed.is_writer():
                _save_and_prune(directory, final, pytree, step, config, keep)
        finally:
            distributed.barrier(f"checkpoint {final}")  # the others wait for the files
        return final
    _save_and_prune(directory, final, pytree, step, config, keep)
    return final


def _checkpointer() -> ocp.StandardCheckpointer:
    """orbax's checkpointer for this process alone: with several processes orbax would
    otherwise wait for all of them at every save and restore (`save` writes on process 0)."""
    if jax.process_count() == 1:
        return ocp.StandardCheckpointer()
    only_me = ocp.options.MultiprocessingOptions(
        primary_host=jax.process_index(), active_processes={jax.process_index()}
    )
    return ocp.StandardCheckpointer(multiprocessing_options=only_me)


def _save_and_prune(
    directory: Path,
    final: Path,
    pytree: Any,
    step: int,
    config: Mapping[str, Any] | None,
    keep: int,
) -> None:
    try:
        _save_step(directory, final, pytree, step, config)
        if config is not None:
            atomic_write_json(directory / "config.json", dict(config))
    except Exception as err:
        cause = _io_cause(err)
        if cause is None:
            raise
        # One line instead of orbax's page of asyncio traceback; the folder says where.
        raise CheckpointError(f"cannot save checkpoint {final}: {cause}") from None
    for old in all_steps(directory)[:-keep]:
        shutil.rmtree(_step_dir(directory, old), ignore_errors=True)
    # Hidden folders of unfinished saves: a killed process's, or one orbax's writers created
    # after a failed save's cleanup (they can be late); swept once the new step is in place.
    _sweep_leftovers(directory)


def _save_step(
    directory: Path, final: Path, pytree: Any, step: int, config: Mapping[str, Any] | None
) -> None:
    """orbax writes a hidden folder; meta.json (with the checksums) goes last; then a rename."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp_step_{step:09d}_{uuid.uuid4().hex}"
    try:
        checkpointer = _checkpointer()
        try:
            checkpointer.save(tmp / "state", pytree)
            checkpointer.wait_until_finished()  # an async save is lost if the process exits first
        finally:
            checkpointer.close()
        meta = {
            "step": int(step),
            "config": dict(config) if config is not None else None,
            "files": _file_digests(tmp / "state"),
        }
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():  # replace an existing step without a window where neither exists
            trash = directory / f".trash_{final.name}_{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        _remove(tmp)


def _sweep_leftovers(directory: Path) -> None:
    """Delete hidden folders of earlier saves that never finished: a killed process leaves
    them, and after a failed save orbax's writer threads can create one after our cleanup."""
    for leftover in [*directory.glob(".tmp_step_*"), *directory.glob(".trash_*")]:
        _remove(leftover)


def _remove(folder: Path, attempts: int = 50) -> None:
    """Delete a temporary folder; orbax's writer threads may still be adding files to it
    just after a failed save, so retry briefly until it is gone."""
    for _ in range(attempts):
        if not folder.exists():
            return
        shutil.rmtree(folder, ignore_errors=True)
        if folder.exists():
            time.sleep(0.02)


def verify(directory: str | os.PathLike, step: int) -> None:
    """Check step `step`'s files against the sha256 sums in its meta.json.

    A checkpoint written before the sums were recorded passes unchecked.

    Raises:
      CheckpointError: naming the first file that is missing, unreadable or altered.
    """
    step_dir = _step_dir(Path(directory).absolute(), step)
    meta_path = step_dir / "meta.json"
    try:
        meta = json.loads(meta_path.read_text())
        files = meta.get("files")
        if files is not None and not isinstance(files, dict):
            raise ValueError(f"'files' is a {type(files).__name__}, not a mapping")
    except (OSError, ValueError, AttributeError) as err:
        raise CheckpointError(f"corrupt checkpoint {meta_path}: {err}") from None
    if files is None:
        return
    state_dir = step_dir / "state"
    for name, expected in files.items():
        path = state_dir / name
        try:
            actual = _sha256(path)
        except OSError as err:
            message = f"corrupt checkpoint: cannot read {path}: {err.strerror}"
            raise CheckpointError(message) from None
        if actual != expected:
            raise CheckpointError(
                f"corrupt checkpoint: {path} differs from its sha256 in {meta_path}"
            )


def _restore_step(directory: Path, step: int, target: Any) -> Any:
    path = _step_dir(directory, step) / "state"
    checkpointer = _checkpointer()
    try:
        if target is None:
            return checkpointer.restore(path)
        return checkpointer.restore(path, target)
    except Exception as err:  # orbax raises many types; name the file for the user
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(f"cannot restore {path}: {type(err).__name__}: {first_line}") from err
    finally:
        checkpointer.close()


def restore_latest(directory: str | os.PathLike, target: Any = None) -> tuple[Any, int]:
    """Restore the newest step of `directory` that verifies; returns (pytree, step).

    A newer step that fails `verify` is skipped with a warning naming its corrupt file.

    Raises:
      CheckpointError: when there is no complete step or none verifies; the message names the
        folder and how to rebuild it.
    """
    directory = Path(directory).absolute()
    steps = all_steps(directory)
    if not steps:
        raise CheckpointError(f"no complete checkpoint in {directory}")
    problems = []
    for step in reversed(steps):
        try:
            verify(directory, step)
        except CheckpointError as err:
            problems.append(str(err))
            warnings.warn(f"skipping checkpoint step {step}: {err}", stacklevel=2)
            continue
        return _restore_step(directory, step, target), step
    raise CheckpointError(
        f"no checkpoint in {directory} verifies ({'; '.join(problems)}); "
        f"delete {directory} and rerun the stage that wrote it"
    )


def restore(directory: str | os.PathLike, target: Any = None, *, step: int | None = None) -> Any:
    """Restore a checkpoint of `directory`, verified (its newest good step unless `step` is given).

    Args:
      directory: the checkpoint folder given to `save`.
      target: a pytree of the same structure (concrete or `jax.ShapeDtypeStruct` leaves); needed
        to get optax states and flax structs back as their own types rather than plain lists.
      step: which step; defaults to the newest one that verifies (see `restore_latest`).

    Raises:
      CheckpointError: naming the folder or file, when there is no such checkpoint, it is
        corrupt or it cannot be read.
    """
    directory = Path(directory).absolute()
    if step is None:
        return restore_latest(directory, target)[0]
    step_dir = _step_dir(directory, step)
    if not (step_dir / "state").is_dir() or not (step_dir / "meta.json").is_file():
        available = all_steps(directory)
        raise CheckpointError(f"no checkpoint for step {step} in {directory} (steps: {available})")
    verify(directory, step)
    return _restore_step(directory, step, target)


def load_config(directory: str | os.PathLike) -> dict:
    """The `config.json` saved beside the checkpoints of `directory`."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"missing {path}: the model cannot be rebuilt without it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt {path}: {err}") from err
