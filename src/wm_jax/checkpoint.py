"""Checkpoints of parameter and optimizer pytrees, with the config that rebuilds the model.

Layout of a checkpoint folder::

    DIR/config.json               # how to rebuild the model (written atomically)
    DIR/step_000000100/state/     # orbax pytree
    DIR/step_000000100/meta.json  # step + config; written last, so its presence marks completion

A save goes to a hidden temporary folder that is renamed into place only once orbax has finished
writing, so a crash or Ctrl-C mid-save never leaves a checkpoint that loads as valid-but-wrong:
the previous step stays the latest complete one. orbax's own traps are handled here: it needs
absolute paths, refuses to overwrite, loses an async save if the process exits first (we wait),
and restores optax states as plain lists unless given a target (pass `target=`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orbax.checkpoint as ocp

from wm_jax.data.store import atomic_write

_STEP_DIR = re.compile(r"^step_(\d{9})$")


class CheckpointError(Exception):
    """A checkpoint is missing or unreadable; the message names the path."""


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` via a temporary file and `os.replace`: readers see old or new."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def _step_dir(directory: Path, step: int) -> Path:
    return directory / f"step_{step:09d}"


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
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / f".tmp_step_{step:09d}_{uuid.uuid4().hex}"
    final = _step_dir(directory, step)
    try:
        checkpointer = ocp.StandardCheckpointer()
        checkpointer.save(tmp / "state", pytree)
        checkpointer.wait_until_finished()  # an async save is lost if the process exits first
        checkpointer.close()
        meta = {"step": int(step), "config": dict(config) if config is not None else None}
        atomic_write_json(tmp / "meta.json", meta)
        if final.exists():  # replace an existing step without a window where neither exists
            trash = directory / f".trash_{final.name}_{uuid.uuid4().hex}"
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    if config is not None:
        atomic_write_json(directory / "config.json", dict(config))
    for old in all_steps(directory)[:-keep]:
        shutil.rmtree(_step_dir(directory, old), ignore_errors=True)
    return final


def restore(directory: str | os.PathLike, target: Any = None, *, step: int | None = None) -> Any:
    """Restore a checkpoint of `directory` (its latest complete step unless `step` is given).

    Args:
      directory: the checkpoint folder given to `save`.
      target: a pytree of the same structure (concrete or `jax.ShapeDtypeStruct` leaves); needed
        to get optax states and flax structs back as their own types rather than plain lists.
      step: which step; defaults to the latest complete one.

    Raises:
      CheckpointError: naming the folder, when there is no such checkpoint or it cannot be read.
    """
    directory = Path(directory).absolute()
    if step is None:
        step = latest_step(directory)
        if step is None:
            raise CheckpointError(f"no complete checkpoint in {directory}")
    path = _step_dir(directory, step) / "state"
    if not path.is_dir() or not (path.parent / "meta.json").is_file():
        available = all_steps(directory)
        raise CheckpointError(f"no checkpoint for step {step} in {directory} (steps: {available})")
    checkpointer = ocp.StandardCheckpointer()
    try:
        if target is None:
            return checkpointer.restore(path)
        return checkpointer.restore(path, target)
    except Exception as err:  # orbax raises many types; name the file for the user
        raise CheckpointError(f"cannot restore {path}: {type(err).__name__}: {err}") from err
    finally:
        checkpointer.close()


def load_config(directory: str | os.PathLike) -> dict:
    """The `config.json` saved beside the checkpoints of `directory`."""
    path = Path(directory) / "config.json"
    if not path.is_file():
        raise CheckpointError(f"missing {path}: the model cannot be rebuilt without it")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"corrupt {path}: {err}") from err
