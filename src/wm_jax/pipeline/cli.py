"""What a command-line tool of wm_jax does with errors and signals (`run_command`).

A bad setting, a missing or corrupt file, a full disk or a locked run folder is one `error:`
line naming the path and what to do, exit 2; the traceback goes to the run folder's `run.log`
(`run_folder.RunLog`). Ctrl-C and SIGTERM stop the running stage the same way (it records its
wall time; finished work is saved) and say how to resume.
"""

from __future__ import annotations

import errno
import signal
import sys
import warnings
from collections.abc import Callable
from typing import Any

from wm_jax.core.devices import DeviceSplitError
from wm_jax.data.store import NoEpisodesError
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import run_folder

# Errors of the data the user can fix: no readable episodes, a store without done records.
USER_ERRORS: tuple[type[Exception], ...] = (NoEpisodesError, DeviceSplitError)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as a Ctrl-C: the running stage records its time and stops."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated()


# What to do about an operating-system error, by errno.
_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and rerun the same command to resume",
    errno.EDQUOT: "the disk quota is exceeded: free some space and rerun to resume",
    errno.EACCES: "permission denied: choose a --run-dir you can write",
    errno.EPERM: "permission denied: choose a --run-dir you can write",
    errno.EROFS: "the file system is read-only: choose a --run-dir on a writable disk",
    errno.ENOTDIR: "a path of the run folder is a file, not a folder: choose another --run-dir",
    errno.EEXIST: "a path of the run folder exists and is not a folder: choose another --run-dir",
}


def user_error(err: BaseException) -> str | None:
    """One line for an error the user can act on, or None for a bug (keep its traceback).

    orbax and asyncio wrap I/O errors in their own; the chain of causes is searched for them.
    """
    from wm_jax.core.checkpoint import CheckpointError
    from wm_jax.train.training_loop import TrainingDivergedError

    seen = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _OS_ADVICE:
            where = cause.filename or "the run folder"
            return f"{where}: {cause.strerror or cause}; {_OS_ADVICE[cause.errno]}"
        cause = cause.__cause__ or cause.__context__
    known = (cfg.ConfigError, CheckpointError, run_folder.RunFolderError, TrainingDivergedError)
    if isinstance(err, known + USER_ERRORS):
        return str(err)
    return None


def run_command(
    call: Callable[[], Any],
    errors: tuple[type[Exception], ...] = (),
    resume_hint: str = "rerun the same command to resume",
) -> Any:
    """Run a command line tool's work: a bad setting, a missing or corrupt file, a full disk,
    a locked run folder (and `errors`) print one `error:` line and exit 2 (the traceback is in
    the run folder's run.log); Ctrl-C or SIGTERM says how to resume and exits 130 / 143
    (finished work is already saved)."""
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    # A warning (a corrupt episode skipped, a checkpoint step passed over) is one line too.
    formatwarning = warnings.formatwarning
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    try:
        return call()
    except KeyboardInterrupt as err:
        print(f"\ninterrupted: finished work is saved; {resume_hint}", file=sys.stderr)
        raise SystemExit(143 if isinstance(err, Terminated) else 130) from None
    except Exception as err:
        message = str(err) if isinstance(err, errors) else user_error(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
        warnings.formatwarning = formatwarning


def exit_code(call: Callable[[], Any], **kwargs: Any) -> int:
    """`run_command(call)` for a `main()`: 0 when it finished, else the exit code it chose."""
    try:
        run_command(call, **kwargs)
    except SystemExit as exit_:
        return int(exit_.code)
    return 0


def add_common_arguments(parser: Any, overrides_help: str | None = None) -> None:
    """`--set SECTION.FIELD=VALUE` (repeatable) and `--no-progress`, the same in every command."""
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help=overrides_help or "change one setting of the config (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
