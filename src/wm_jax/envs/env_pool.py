"""Worker processes that each hold one real game, driven through pipes with arrays only.

Kept free of JAX so that spawning a worker imports only the game (`wm_jax.envs`), not the
accelerator stack; `wm_jax.envs.real_rollout` batches the networks for all workers.
"""

from __future__ import annotations

import contextlib
import functools
import multiprocessing as mp
import traceback
from collections.abc import Callable
from typing import Any

from wm_jax import envs


class WorkerError(RuntimeError):
    """A worker process failed (crashed, hung or raised); its episode is lost."""


def _worker(conn, env_fn: Callable[[], Any]) -> None:
    """Worker process main: one game, commands over a pipe, arrays only."""
    try:
        env = env_fn()
    except BaseException:
        conn.send(("error", traceback.format_exc()))
        return
    conn.send(("ready", (env.name, int(env.action_dim), int(env.max_steps))))
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
                else:
                    raise ValueError(f"unknown command {command!r}")
                conn.send(("ok", result))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        env.close()


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
        self.name, self.action_dim, self.max_steps = "", 0, 0
        try:
            for slot in range(num_workers):
                self._launch(slot)
            for slot in range(num_workers):
                self._handshake(slot)
        except BaseException:
            self.close()
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
        self.name, self.action_dim, self.max_steps = info

    def _receive(self, slot: int):
        conn = self._conns[slot]
        try:
            if not conn.poll(self.timeout_s):
                raise WorkerError(f"worker {slot} did not answer within {self.timeout_s} s")
            return conn.recv()
        except (EOFError, OSError) as err:
            raise WorkerError(f"worker {slot} died ({type(err).__name__})") from err

    def send(self, slot: int, command: str, arg: Any = None) -> None:
        try:
            self._conns[slot].send((command, arg))
        except (BrokenPipeError, OSError) as err:
            raise WorkerError(f"worker {slot} died ({type(err).__name__})") from err

    def recv(self, slot: int) -> Any:
        status, result = self._receive(slot)
        if status != "ok":
            raise WorkerError(f"worker {slot} failed:\n{result}")
        return result

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
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
        self._procs[slot], self._conns[slot] = None, None

    def close(self) -> None:
        for slot in range(self.num_workers):
            self._stop(slot, graceful=True)

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
