"""The one pool of game worker processes: each holds one real game, driven through pipes.

Every real-game stage runs on it: random and §5 collection (`wm_jax.envs.collect`, whole
episodes played and written inside a worker), evaluation and real-game CMA-ES
(`wm_jax.envs.real_rollout`, one step at a time, the networks batched for all workers).

Kept free of JAX so that spawning a worker imports only the game (`wm_jax.envs`), not the
accelerator stack. A worker that raises, dies or hangs is replaced by `restart(slot)`; what its
game left behind (ViZDoom's engine process and folder, `RealEnv.leftovers`) is removed.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import os
import shutil
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from multiprocessing.connection import wait as wait_for
from pathlib import Path
from typing import Any

from wm_jax import envs


class WorkerError(RuntimeError):
    """A worker process failed (crashed, hung or raised); its episode is lost."""


def _worker(conn, env_fn: Callable[[], Any]) -> None:
    """Worker process main: one game, commands over a pipe.

    Commands: ("reset", seed) -> frame; ("step", action) -> (frame, reward, terminated,
    truncated); ("call", (fn, args)) -> fn(env, state, *args), where `state` is a dict that
    lives as long as the worker (collection keeps its policy there, sent once).
    """
    try:
        env = env_fn()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    leftovers = env.leftovers() if hasattr(env, "leftovers") else ([], [])
    conn.send(("ready", (env.name, int(env.action_dim), int(env.max_steps), leftovers)))
    state: dict[str, Any] = {}
    try:
        while True:
            try:
                command, arg = conn.recv()
            except (EOFError, KeyboardInterrupt):
                break
            if command == "close":
                break
            try:
                if command == "reset":
                    result = env.reset(int(arg))
                elif command == "step":
                    frame, reward, terminated, truncated = env.step(arg)
                    result = (frame, float(reward), bool(terminated), bool(truncated))
                elif command == "call":
                    fn, args = arg
                    result = fn(env, state, *args)
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send(("ok", result))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        env.close()


def _remove_leftovers(leftovers: tuple[list[int], list[str]]) -> None:
    """Kills a dead worker's game processes (found by the env) and removes its folders."""
    pids, paths = leftovers
    for pid in pids:
        with contextlib.suppress(OSError):  # gone already, or not ours any more
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if any(path.encode() in cmdline for path in paths):
                os.kill(pid, signal.SIGKILL)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


class EnvPool:
    """`num_workers` processes, one game each, driven slot by slot through pipes."""

    def __init__(
        self,
        env_fn: Callable[[], Any],
        num_workers: int,
        *,
        timeout_s: float = 120.0,
        start_method: str = "spawn",  # fork is unsafe once JAX's threads are running
    ):
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        self.env_fn = env_fn
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self._context = mp.get_context(start_method)
        self._procs: list[Any] = [None] * num_workers
        self._conns: list[Any] = [None] * num_workers
        self._leftovers: list[tuple[list[int], list[str]]] = [([], [])] * num_workers
        self.name, self.action_dim, self.max_steps = "", 0, 0
        try:
            for slot in range(num_workers):
                self._launch(slot)
            for slot in range(num_workers):
                self._handshake(slot)
        except BaseException:
            self.close(graceful=False)
            raise

    @classmethod
    def for_game(cls, game: str, num_workers: int, **env_kwargs) -> EnvPool:
        """A pool of `wm_jax.envs.make_env(game, **env_kwargs)`.

        Workers get the game's whole `GameSpec` (registered there), not its name, so a game
        registered only in this process plays in them too.
        """
        spec = envs.game_spec(game)
        return cls(functools.partial(envs.make_env, spec, **env_kwargs), num_workers)

    def _launch(self, slot: int) -> None:
        parent, child = self._context.Pipe()
        proc = self._context.Process(target=_worker, args=(child, self.env_fn), daemon=True)
        proc.start()
        child.close()
        self._procs[slot], self._conns[slot] = proc, parent

    def _handshake(self, slot: int) -> None:
        status, info = self._receive(slot)
        if status != "ready":
            raise WorkerError(f"worker {slot} could not create its game:\n{info}")
        self.name, self.action_dim, self.max_steps, self._leftovers[slot] = info

    def dead(self, slot: int) -> bool:
        return self._procs[slot] is None or self._procs[slot].exitcode is not None

    def _receive(self, slot: int, timeout_s: float | None = None):
        conn = self._conns[slot]
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        deadline = time.monotonic() + timeout_s
        try:
            # Poll the exit code too: a dead worker's pipe need not close, because ViZDoom's
            # engine process inherits it and can outlive the worker.
            while not conn.poll(min(1.0, max(0.0, deadline - time.monotonic()))):
                if self.dead(slot):
                    code = self._procs[slot].exitcode
                    raise WorkerError(f"worker {slot} died (exit code {code})")
                if time.monotonic() >= deadline:
                    raise WorkerError(f"worker {slot} did not answer within {timeout_s} s")
            return conn.recv()
        except (EOFError, OSError) as err:
            raise WorkerError(f"worker {slot} died ({type(err).__name__})") from err

    def send(self, slot: int, command: str, arg: Any = None) -> None:
        try:
            self._conns[slot].send((command, arg))
        except (BrokenPipeError, OSError) as err:
            raise WorkerError(f"worker {slot} died ({type(err).__name__})") from err

    def recv(self, slot: int, timeout_s: float | None = None) -> Any:
        """The answer to the slot's last command; WorkerError if it raised, died or hung."""
        status, result = self._receive(slot, timeout_s)
        if status != "ok":
            raise WorkerError(f"worker {slot} failed:\n{result}")
        return result

    def wait(self, slots: Sequence[int], timeout_s: float) -> list[int]:
        """The slots among `slots` with an answer to read, or dead (then `recv` raises)."""
        ready = set(wait_for([self._conns[slot] for slot in slots], timeout=timeout_s))
        return [slot for slot in slots if self._conns[slot] in ready or self.dead(slot)]

    def restart(self, slot: int) -> None:
        """Replace a failed worker with a fresh process."""
        self._stop(slot, graceful=False)
        self._launch(slot)
        self._handshake(slot)

    def _stop(self, slot: int, graceful: bool) -> None:
        proc, conn = self._procs[slot], self._conns[slot]
        if conn is not None:
            if graceful:
                with contextlib.suppress(OSError):
                    conn.send(("close", None))
            conn.close()
        if proc is not None:
            proc.join(timeout=5 if graceful else 0.1)
            clean = proc.exitcode == 0
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
            if not clean:  # it did not close its game: remove what the game left behind
                _remove_leftovers(self._leftovers[slot])
        self._procs[slot], self._conns[slot] = None, None
        self._leftovers[slot] = ([], [])

    def close(self, graceful: bool = True) -> None:
        """Stops every worker: after its current command if `graceful`, else at once."""
        for slot in range(self.num_workers):
            self._stop(slot, graceful)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(graceful=exc_type is None)
