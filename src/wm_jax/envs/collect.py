"""Parallel rollouts into an `EpisodeStore`: reproducible, resumable, sharded, crash-tolerant.

    python -m wm_jax.envs.collect doom_take_cover --episodes 200 --workers 2 --out runs/doom

Episode i's game seed and policy seed derive from (seed, i) only, so the data does not depend on
the number of workers or shards. Each worker process owns one game; a worker that raises loses
its episode (logged, retried on the next run) and is replaced by a fresh process, as is one
that dies.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import time
import traceback
from collections import deque
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from wm_jax.envs.base import PolicyFactory, play_episode
from wm_jax.envs.registry import game_spec, games, make_env, random_policy

log = logging.getLogger(__name__)

# Per-game collection settings live in the game's `GameSpec` (min_frames, compresslevel). Doom
# drops random episodes shorter than 100 frames (World Models code). CarRacing deliberately
# deviates from the World Models code, which ran every episode for the full 1,000 frames
# ignoring the game's done: an M trained on that data never sees an episode end, so the dream
# keeps paying the -100 of leaving the playfield on every later step (a dream-trained C then
# scored -45 ± 16 in the game). Episodes end where the game ends them (left the playfield: -100
# and done; every tile visited: done), as in evaluation; `max_frames` only truncates.
_MANIFEST_FLUSH_SECONDS = 5.0
_MAX_FAILED_STARTS = 3  # a worker that dies this many times in a row before any result: give up


def episode_seeds(seed: int, index: int) -> tuple[int, int]:
    """(game seed, policy seed) of episode `index`; independent of workers and shards."""
    game_seed, policy_seed = np.random.SeedSequence([seed, index]).generate_state(2)
    return int(game_seed), int(policy_seed)


def run_episode(env, policy_factory: PolicyFactory, spec, seed: int, index: int, max_frames: int):
    """Plays episode `index` of a collection; returns an `Episode` (frames[t] is the frame
    action t was chosen on)."""
    from wm_jax.data.store import Episode

    game_seed, policy_seed = episode_seeds(seed, index)
    played = play_episode(env, policy_factory(spec, policy_seed), game_seed, max_frames, True)
    return Episode(played.frames, played.actions, played.rewards, played.dones)


def _worker(
    conn, spec, env_kwargs, policy_factory, seed, out_dir, max_frames, min_frames, compresslevel
):
    """Worker process: receives episode indices, writes episode files, reports each one.

    `spec` comes whole from the main process (and is registered here), so a game registered
    only there plays here too.
    """
    from wm_jax.data.store import write_episode_file

    spec = game_spec(spec)
    env = make_env(spec, **env_kwargs)
    conn.send(("ready", None, env.leftovers() if hasattr(env, "leftovers") else ([], [])))
    try:
        while (index := conn.recv()) is not None:
            try:
                episode = run_episode(env, policy_factory, spec, seed, index, max_frames)
                length = len(episode.actions)
                if length < min_frames:
                    conn.send(("skipped", index, {"frames": length, "min_frames": min_frames}))
                else:
                    conn.send(
                        (
                            "stored",
                            index,
                            write_episode_file(out_dir, index, episode, compresslevel),
                        )
                    )
            except Exception:  # the game may be broken now: exit and be replaced by a fresh one
                conn.send(("error", index, traceback.format_exc()))
                break
    finally:
        env.close()


class _Worker:
    """A spawned worker process and the main process's end of its pipe."""

    def __init__(self, args):
        context = mp.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=_worker, args=(child_conn, *args), daemon=True)
        self.process.start()
        child_conn.close()
        self.index: int | None = None  # the episode it is playing
        self.results = 0
        self.leftovers: tuple[list[int], list[str]] = ([], [])  # the env's, if the worker dies

    def clean_up(self) -> None:
        """Kills the dead worker's game processes (found by the env) and removes its folders."""
        pids, paths = self.leftovers
        for pid in pids:
            with contextlib.suppress(OSError):  # gone already, or not ours any more
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if any(path.encode() in cmdline for path in paths):
                    os.kill(pid, signal.SIGKILL)
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def collect(
    game: str,
    out_dir: str | os.PathLike,
    num_episodes: int,
    workers: int | None = None,
    seed: int = 0,
    shard: tuple[int, int] = (0, 1),
    max_frames: int | None = None,
    progress: bool = True,
    policy: PolicyFactory | None = None,
    min_frames: int | None = None,
    env_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Collects episodes shard[0], shard[0] + shard[1], ... below `num_episodes` into out_dir.

    Args:
        policy: a picklable factory (spec, seed) -> policy(frame) -> action; default the game's
            random policy (`wm_jax.envs.random_policy`).
        max_frames: episode cap (default the game's max_steps).
        min_frames: shorter episodes are recorded as skipped, not stored, and stay skipped on a
            rerun (their seeds are fixed, so rerunning them would give the same length): the
            store then holds fewer than num_episodes, as the World Models code's data did.
        env_kwargs: for `make_env`, beside the spec's own `env_kwargs`.

    Returns:
        a summary: counts (requested, already_done, stored, skipped, failed), frames stored,
        seconds, frames_per_s, episodes_per_s, and the store's totals.
    """
    from wm_jax.data.done_records import RECORDS_DONE, records_done
    from wm_jax.data.store import EpisodeStore

    spec = game_spec(game)
    shard_index, num_shards = shard
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard must be (i, N) with 0 <= i < N, got {shard}")
    env_kwargs = {} if env_kwargs is None else env_kwargs
    min_frames = spec.min_frames if min_frames is None else min_frames
    max_frames = spec.max_steps if max_frames is None else max_frames
    policy = random_policy(game) if policy is None else policy

    store = EpisodeStore(out_dir)
    meta = {"game": game, "seed": seed, "max_frames": max_frames, "min_frames": min_frames}
    # The format marker an M that predicts done requires (`done_records.require_done_records`):
    # CarRacingEnv's full_episode=True ignores the game's done, every other setting records it.
    meta[RECORDS_DONE] = not (dict(spec.env_kwargs) | env_kwargs).get("full_episode", False)
    previous = store.read_meta()
    if previous:
        previous = previous | {RECORDS_DONE: records_done(previous)}  # unmarked: the old rule
        if any(previous.get(k) != v for k, v in meta.items()):
            raise ValueError(
                f"{out_dir} holds episodes collected with {previous}, not {meta}; "
                "collect into a new folder"
            )
    policy_name = getattr(policy, "__qualname__", repr(policy))
    store.write_meta(meta | {"env_kwargs": env_kwargs, "policy": policy_name})

    requested = list(range(shard_index, num_episodes, num_shards))
    # A stored episode whose file no longer matches its sha256 is collected again (the same
    # episode: collection is seeded per episode), so `--stages collect` repairs a store.
    todo = deque(
        i for i in requested if not store.finished(i) or (store.has(i) and not store.readable(i))
    )
    run = _Run(game, store, todo, progress)
    run.summary |= {"requested": len(requested), "already_done": len(requested) - len(todo)}
    num_workers = min(workers or os.cpu_count() or 1, len(todo))
    run.summary["workers"] = num_workers
    args = (spec, env_kwargs, policy, seed, str(store.root), max_frames, min_frames)
    args += (spec.compresslevel,)
    try:
        run.pool = [_Worker(args) for _ in range(num_workers)]
        last_flush = time.perf_counter()
        while run.pool:
            # Poll exit codes too: a dead worker's pipe need not close, because ViZDoom's
            # engine process inherits it and can outlive the worker.
            ready = wait([w.conn for w in run.pool], timeout=1.0)
            for worker in list(run.pool):
                dead = worker.process.exitcode is not None
                if worker.conn in ready or (dead and worker.conn.poll()):
                    run.receive(worker, args)
                elif dead:
                    run.replace(worker, args)
            if time.perf_counter() - last_flush > _MANIFEST_FLUSH_SECONDS:
                store.flush()
                last_flush = time.perf_counter()
    finally:
        for worker in run.pool:  # only after an exception: stop the rest
            worker.process.kill()
            worker.process.join()
            worker.clean_up()
        store.flush()
        run.bar.close()
    return run.finish()


class _Run:
    """The main process's side of a collection: the pool, the store's manifest, the counts."""

    def __init__(self, game, store, todo: deque, progress: bool):
        from tqdm.auto import tqdm

        self.game, self.store, self.todo = game, store, todo
        self.pool: list[_Worker] = []
        self.failed_starts = 0
        self.summary = {"game": game, "out_dir": str(store.root), "stored": 0, "skipped": 0}
        self.summary |= {"failed": [], "frames": 0}
        self.bar = tqdm(total=len(todo), unit="ep", disable=not progress, desc=game)
        self.start = time.perf_counter()

    def receive(self, worker: _Worker, args) -> None:
        try:
            kind, index, payload = worker.conn.recv()
        except (EOFError, OSError):
            self.replace(worker, args)
            return
        summary = self.summary
        if kind == "stored":
            self.store.add_record(index, payload, flush=False)
            summary["stored"] += 1
            summary["frames"] += payload["frames"]
        elif kind == "skipped":
            self.store.mark_skipped(index, "too short", flush=False, **payload)
            summary["skipped"] += 1
        elif kind == "ready":
            worker.leftovers = payload
        elif kind == "error":
            summary["failed"].append(index)
            log.error("episode %d failed:\n%s", index, payload)
            worker.index = None  # it exits now; replace() starts another
        if kind != "ready":
            worker.results += 1
            self.failed_starts = 0
            self.advance()
        if kind != "error":
            self.dispatch(worker)

    def replace(self, worker: _Worker, args) -> None:
        """A worker died: its episode is lost (retried on the next run); start another."""
        self.pool.remove(worker)
        worker.process.join()
        worker.clean_up()
        log.error("worker died (exit code %s) playing episode %s",
                  worker.process.exitcode, worker.index)  # fmt: skip
        if worker.index is not None:
            self.summary["failed"].append(worker.index)
            self.advance()
        self.failed_starts = 0 if worker.results else self.failed_starts + 1
        if self.failed_starts >= _MAX_FAILED_STARTS:
            raise RuntimeError(f"{self.game} workers die before their first episode; see the log")
        if self.todo:
            self.pool.append(_Worker(args))

    def dispatch(self, worker: _Worker) -> None:
        """Sends the worker its next episode, or None (then it exits and leaves the pool)."""
        index = self.todo.popleft() if self.todo else None
        try:
            worker.conn.send(index)
        except OSError:  # died since its last message: replace() comes next
            if index is not None:
                self.todo.appendleft(index)
            worker.index = None
            return
        worker.index = index
        if index is None:
            self.pool.remove(worker)
            worker.process.join()

    def advance(self) -> None:
        self.bar.update()
        seconds = time.perf_counter() - self.start
        self.bar.set_postfix(fps=f"{self.summary['frames'] / seconds:.0f}",
                             skipped=self.summary["skipped"],
                             failed=len(self.summary["failed"]))  # fmt: skip

    def finish(self) -> dict[str, Any]:
        summary, store = self.summary, self.store
        seconds = time.perf_counter() - self.start
        summary |= {"seconds": seconds, "frames_per_s": summary["frames"] / max(seconds, 1e-9)}
        episodes = summary["stored"] + summary["skipped"]
        summary |= {"episodes_per_s": episodes / max(seconds, 1e-9)}
        summary |= {"stored_episodes": len(store), "stored_frames": store.total_frames}
        return summary | {"stored_bytes": store.total_bytes}


def _shard(text: str) -> tuple[int, int]:
    index, count = (int(part) for part in text.split("/"))
    return index, count


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m wm_jax.envs.collect", description=__doc__.split("\n")[0]
    )
    parser.add_argument("game", help=f"one of: {', '.join(games())}")
    parser.add_argument("--episodes", type=int, required=True, help="episode indices 0..N-1")
    parser.add_argument("--out", required=True, help="store folder (resumes if it exists)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard", type=_shard, default=(0, 1), help="i/N: indices i, i+N, ...")
    parser.add_argument("--max-frames", type=int, default=None, help="episode cap")
    parser.add_argument("--min-frames", type=int, default=None, help="drop shorter episodes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    summary = collect(
        args.game,
        args.out,
        args.episodes,
        workers=args.workers,
        seed=args.seed,
        shard=args.shard,
        max_frames=args.max_frames,
        min_frames=args.min_frames,
    )
    print({k: v for k, v in summary.items() if k != "failed"} | {"failed": summary["failed"]})
    return summary


if __name__ == "__main__":
    # Run the importable module so that spawned workers unpickle wm_jax.envs.collect._worker.
    from wm_jax.envs.collect import main as _main

    _main()
