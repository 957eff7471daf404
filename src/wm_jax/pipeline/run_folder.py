"""A run folder's bookkeeping: the chain of stage records, its lock, and its log.

Stage records (`DIR/stages/<stage>.json`) form a chain. Each completed stage gets a fresh `id`
and records the ids of the stages before it that it was built from (`inputs`). A record whose
inputs are not the current ids of those stages is stale: the stage reruns, whatever order of
interruptions led there. A stage that starts writes `<stage>.started.json` with its inputs, so
partial outputs (checkpoints) left by an attempt on other inputs are wiped, not resumed.

One process at a time writes a run folder: `RunLock` holds an `flock` on `DIR/.lock` (the
kernel drops it when the holder dies, even by SIGKILL, so a stale lock is simply taken over),
and writes the holder's pid and host into it for the message another process gets.

`RunLog` copies everything the run prints into `DIR/run.log` (progress bars left out) and keeps
the traceback of a failure there, so the console gets one `error:` line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import traceback
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO

from wm_jax.core.checkpoint import atomic_write_json


class RunFolderError(Exception):
    """The run folder cannot be used (locked, unwritable); the message says what to do."""


# -------------------------------------------------------------------------------------------
# the chain of stage records


def record_path(run_dir: Path, stage: str, kind: str = "") -> Path:
    """`stages/<stage>.json`, or `stages/<stage>.<kind>.json` (started, partial)."""
    return Path(run_dir) / "stages" / (f"{stage}.{kind}.json" if kind else f"{stage}.json")


def read_record(run_dir: Path, stage: str) -> dict[str, Any] | None:
    """A completed stage's record, or None (missing or unreadable: the stage reruns)."""
    path = record_path(run_dir, stage)
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def record_id(record: dict[str, Any]) -> str:
    """A record's identity; records written before the chain existed use their finish time."""
    return record.get("id") or f"legacy:{record.get('stage')}:{record.get('finished')}"


def current_inputs(run_dir: Path, stages: Sequence[str]) -> dict[str, str | None]:
    """The ids of `stages` as they are recorded now (None: not complete)."""
    inputs = {}
    for stage in stages:
        record = read_record(run_dir, stage)
        inputs[stage] = None if record is None else record_id(record)
    return inputs


def is_current(run_dir: Path, stage: str, upstream: Sequence[str]) -> bool:
    """Whether `stage` is complete and was built from the current records of `upstream`.

    A record without `inputs` (written before the chain existed, or adopted from another run
    folder by `adopt_record`) is taken as it is.
    """
    record = read_record(run_dir, stage)
    if record is None:
        return False
    inputs = record.get("inputs")
    return inputs is None or inputs == current_inputs(run_dir, upstream)


def write_record(
    run_dir: Path,
    stage: str,
    summary: dict[str, Any],
    seconds: float,
    inputs: dict[str, str | None] | None,
    peak_memory_mb: dict[str, float | None] | None = None,
) -> dict[str, Any]:
    """Record `stage` complete, with a new id and the ids it was built from."""
    record = {
        "stage": stage,
        "id": uuid.uuid4().hex,
        "inputs": inputs,
        "seconds": seconds,
        "peak_memory_mb": peak_memory_mb,
        "summary": summary,
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_json(record_path(run_dir, stage), record)
    return record


def require_record(run_dir: Path, stage: str) -> dict[str, Any]:
    """`read_record`, for a stage that must be complete: a missing record names its file."""
    record = read_record(run_dir, stage)
    if record is None:
        raise FileNotFoundError(f"{record_path(run_dir, stage)} is missing")
    return record


def adopt_record(source_run: Path, run_dir: Path, stage: str) -> None:
    """Take `stage` as complete from another run folder (a sweep's or an iteration's parent):
    its id is kept, its inputs dropped (they name the parent's stages, not ours)."""
    record = require_record(source_run, stage)
    record = {**record, "id": record_id(record), "inputs": None, "adopted_from": str(source_run)}
    atomic_write_json(record_path(run_dir, stage), record)


def started_inputs(run_dir: Path, stage: str) -> dict[str, str | None] | None:
    """The inputs an unfinished attempt at `stage` started from (None: no attempt recorded)."""
    path = record_path(run_dir, stage, "started")
    try:
        return json.loads(path.read_text())["inputs"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError):
        return None


def mark_started(run_dir: Path, stage: str, inputs: dict[str, str | None]) -> None:
    atomic_write_json(record_path(run_dir, stage, "started"), {"inputs": inputs})


def forget(run_dir: Path, stage: str) -> None:
    """Remove every record of `stage` (complete, started, partial wall time)."""
    for kind in ("", "started", "partial"):
        record_path(run_dir, stage, kind).unlink(missing_ok=True)


# -------------------------------------------------------------------------------------------
# the folders of a run


class RunPaths(NamedTuple):
    root: Path

    @property
    def episodes(self) -> Path:
        return self.root / "data" / "episodes"

    @property
    def encoded(self) -> Path:
        return self.root / "data" / "encoded"

    def checkpoints(self, stage: str) -> Path:
        return self.root / "checkpoints" / stage

    def metrics(self, stage: str) -> Path:
        return self.root / "metrics" / f"{stage}.jsonl"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def evaluation_episodes(self) -> Path:
        """Every real evaluation episode, appended as it finishes (evaluation resumes)."""
        return self.root / "evaluation" / "episodes.jsonl"


def stage_outputs(stage: str, paths: RunPaths) -> list[Path]:
    """What `stage` writes besides its records (deleted when it reruns from scratch)."""
    return {
        "collect": [],  # rerunning collection resumes it: episodes are never thrown away
        "train_vae": [paths.checkpoints("vae"), paths.metrics("train_vae")],
        "encode": [paths.encoded],
        "train_mdn_rnn": [paths.checkpoints("mdn_rnn"), paths.metrics("train_mdn_rnn")],
        "train_controller": [
            paths.checkpoints("controller"),
            paths.checkpoints("controller_final"),
            paths.metrics("train_controller"),
        ],
        "evaluate": [paths.evaluation_episodes],
        "report": [paths.report],
    }[stage]


def invalidate(run_dir: Path, stages: Sequence[str]) -> None:
    """Forget `stages` and delete their outputs (before anything runs, so an interrupted
    `--stages X` never leaves the old records of the stages after X in place)."""
    paths = RunPaths(run_dir)
    for stage in stages:
        forget(run_dir, stage)
        for output in stage_outputs(stage, paths):
            if output.is_dir() and not output.is_symlink():
                shutil.rmtree(output)
            elif output.exists() or output.is_symlink():
                output.unlink()


# Which stage writes each checkpoint folder (to say how to rebuild a missing or corrupt one).
_CHECKPOINT_WRITERS = {
    "controller_final": "train_controller",
    "controller": "train_controller",
    "mdn_rnn": "train_mdn_rnn",
    "vae": "train_vae",
}


def rebuild_hint(message: str) -> str:
    """How to rebuild the checkpoint a `CheckpointError` message names."""
    for folder, writer in _CHECKPOINT_WRITERS.items():
        if f"checkpoints/{folder}" in message:
            return f"rebuild it with --stages {writer}"
    return "rerun the stages before this one with --stages"


# -------------------------------------------------------------------------------------------
# one process per run folder


class RunLock:
    """`with RunLock(run_dir):` holds the run folder; a second process gets `RunFolderError`."""

    def __init__(self, run_dir: Path, create: bool = True):
        self.path = Path(run_dir) / ".lock"
        self.create = create
        self._file: TextIO | None = None

    def __enter__(self) -> RunLock:
        if not self.create and not self.path.parent.is_dir():
            raise RunFolderError(
                f"{self.path.parent} is not a run folder: run the experiment first "
                "(python -m wm_jax.experiment EXPERIMENT --run-dir DIR)"
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")  # noqa: SIM115 (held open for the lock's lifetime)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise RunFolderError(
                f"{self.path.parent} is in use by {holder} (lock {self.path}); wait for it to "
                "finish, stop it, or choose another --run-dir"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        self._file = handle
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


# -------------------------------------------------------------------------------------------
# the run's log


class _Tee:
    """A text stream writing to the console and to the log (the log without progress bars)."""

    def __init__(self, console: TextIO, log: TextIO):
        self.console, self.log = console, log

    def write(self, text: str) -> int:
        self.console.write(text)
        if "\r" not in text and "\x1b" not in text:  # tqdm redraws: console only
            self.log.write(text)
        return len(text)

    def flush(self) -> None:
        self.console.flush()
        self.log.flush()

    def isatty(self) -> bool:
        return self.console.isatty()

    def fileno(self) -> int:
        return self.console.fileno()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.console, name)


class RunLog:
    """`with RunLog(run_dir, argv):` appends the console output of this run to `DIR/run.log`."""

    def __init__(self, run_dir: Path, argv: Sequence[str] | None = None):
        self.path = Path(run_dir) / "run.log"
        self.argv = list(sys.argv if argv is None else argv)
        self._log: TextIO | None = None
        self._saved: tuple[TextIO, TextIO] | None = None

    def __enter__(self) -> RunLog:
        self._log = open(self.path, "a", buffering=1)  # noqa: SIM115
        started = datetime.now(UTC).isoformat(timespec="seconds")
        self._log.write(f"\n=== {started} pid {os.getpid()}: {' '.join(self.argv)}\n")
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _Tee(sys.stdout, self._log)
        sys.stderr = _Tee(sys.stderr, self._log)
        return self

    def log_exception(self, err: BaseException) -> None:
        """The full traceback, for the log only."""
        if self._log is not None:
            self._log.write("".join(traceback.format_exception(err)))

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._saved is not None:
            sys.stdout, sys.stderr = self._saved
        if self._log is not None:
            if exc is not None:
                self.log_exception(exc)
            self._log.close()
            self._log = None


@contextlib.contextmanager
def held(run_dir: Path, argv: Sequence[str] | None = None, create: bool = True) -> Iterator[None]:
    """Lock `run_dir` and log this run's output into it, for the duration of the block
    (`create=False`: the folder must exist already, e.g. a finished run to sweep)."""
    with RunLock(run_dir, create), RunLog(run_dir, argv):
        yield
