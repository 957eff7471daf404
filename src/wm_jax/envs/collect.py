"""Parallel rollouts into an `EpisodeStore`: reproducible, resumable, sharded, crash-tolerant.

    python -m wm_jax.envs.collect doom_take_cover --episodes 200 --workers 2 --out runs/doom

Episode i's game seed and policy seed derive from (seed, i) only, so the data does not depend on
the number of workers or shards. Each worker of the one game pool (`wm_jax.envs.env_pool`)
plays whole episodes and writes their files; a worker that raises loses its episode (logged,
retried on the next run) and is replaced by a fresh process, as is one that dies.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import time
from collections import deque
from typing import Any

import numpy as np

from wm_jax.envs.base import DriverMix, PolicyFactory, play_episode
from wm_jax.envs.env_pool import EnvPool, WorkerError
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
_MAX_FAILURES_PER_WORKER = 3  # this many failures per worker in a row, no episode between: give up


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


def _set_policy(env, state: dict, policy_factory: PolicyFactory) -> None:
    """Worker side, once per worker: the collection's policy factory, kept for every episode
    the worker plays (a policy with state worth keeping, such as a compiled step, keeps it)."""
    del env
    state["policy"] = policy_factory


def _store_episode(env, state, index, spec, seed, max_frames, min_frames, out_dir, level):
    """Worker side: plays episode `index` and writes its file; returns (kind, record)."""
    episode = run_episode(env, state["policy"], spec, seed, index, max_frames)
    return stored_or_skipped(episode, index, min_frames, out_dir, level)


def stored_or_skipped(episode, index: int, min_frames: int, out_dir: str, level: int):
    """(kind, record): an episode under `min_frames` is only recorded as skipped."""
    from wm_jax.data.store import write_episode_file

    if len(episode.actions) < min_frames:
        return "skipped", {"frames": len(episode.actions), "min_frames": min_frames}
    return "stored", write_episode_file(out_dir, index, episode, level)


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
    if not todo:
        run.bar.close()
        return run.finish()
    run.policy = policy
    run.episode_args = (spec, seed, max_frames, min_frames, str(store.root), spec.compresslevel)
    # A controller (§5) plays its episodes batched, the networks on the accelerator for all
    # workers at once; every other policy (random, the driver) plays inside the workers.
    player, batched = _batched_share(policy, seed, todo)
    try:
        # Workers get the game's whole spec (registered there), so a game registered only in
        # this process plays in them too.
        run.pool = EnvPool(functools.partial(make_env, spec, **env_kwargs), num_workers)
        if batched:
            run.play_batched(player, batched)
        for slot in range(num_workers if run.todo else 0):
            run.start(slot)
        while run.busy:
            for slot in run.pool.wait(list(run.busy), timeout_s=1.0):
                run.receive(slot)
            run.flush()
        run.pool.close()
    finally:
        if run.pool is not None:  # only after an exception: stop the rest at once
            run.pool.close(graceful=False)
        store.flush()
        run.bar.close()
    return run.finish()


def _batched_share(policy: PolicyFactory, seed: int, todo: deque) -> tuple[Any, list[int]]:
    """The policy that plays batched (one with `play_batched`, alone or as a `DriverMix`'s
    base) and the episodes it plays, taken out of `todo`; (None, []) for other policies."""
    if hasattr(policy, "play_batched"):
        player, mine = policy, list(todo)
    elif isinstance(policy, DriverMix) and hasattr(policy.base, "play_batched"):
        player = policy.base
        mine = [i for i in todo if not policy.picks_driver(episode_seeds(seed, i)[1])]
    else:
        return None, []
    taken = set(mine)
    rest = [index for index in todo if index not in taken]
    todo.clear()
    todo.extend(rest)
    return player, mine


class _Run:
    """The main process's side of a collection: the pool, the store's manifest, the counts."""

    def __init__(self, game, store, todo: deque, progress: bool):
        from tqdm.auto import tqdm

        self.game, self.store, self.todo = game, store, todo
        self.pool: EnvPool | None = None
        self.busy: dict[int, int] = {}  # slot -> the episode it is playing
        self.failures = 0  # episodes or worker starts in a row that failed
        self.policy: PolicyFactory | None = None
        # _store_episode's arguments after the index: spec, seed, max_frames, min_frames,
        # out_dir, compresslevel
        self.episode_args: tuple = ()
        self.summary = {"game": game, "out_dir": str(store.root), "stored": 0, "skipped": 0}
        self.summary |= {"failed": [], "frames": 0}
        self.bar = tqdm(total=len(todo), unit="ep", disable=not progress, desc=game)
        self.start_time = self.last_flush = time.perf_counter()

    def flush(self) -> None:
        if time.perf_counter() - self.last_flush > _MANIFEST_FLUSH_SECONDS:
            self.store.flush()
            self.last_flush = time.perf_counter()

    def play_batched(self, player, indices: list[int]) -> None:
        """Episodes `indices` played by `player` over the whole pool, each written by this
        process as it ends."""
        from wm_jax.data.store import Episode

        _, seed, max_frames, *kept = self.episode_args  # kept: min_frames, out_dir, level
        seeds = np.array([episode_seeds(seed, index) for index in indices]).reshape(-1, 2)

        def on_record(i, played) -> None:
            episode = Episode(played.frames, played.actions, played.rewards, played.dones)
            self.record(indices[i], *stored_or_skipped(episode, indices[i], *kept))
            self.flush()

        returns = player.play_batched(self.pool, seeds[:, 0], seeds[:, 1], on_record, max_frames)
        for i in np.flatnonzero(np.isnan(returns)):
            log.error("episode %s lost to a worker failure", indices[i])
            self.summary["failed"].append(indices[i])
            self.advance()

    def record(self, index: int, kind: str, payload: dict) -> None:
        summary = self.summary
        if kind == "stored":
            self.store.add_record(index, payload, flush=False)
            summary["stored"] += 1
            summary["frames"] += payload["frames"]
        else:
            self.store.mark_skipped(index, "too short", flush=False, **payload)
            summary["skipped"] += 1
        self.failures = 0
        self.advance()

    def start(self, slot: int) -> None:
        """A fresh worker: the policy once, then its first episode."""
        try:
            self.pool.send(slot, "call", (_set_policy, (self.policy,)))
            self.pool.recv(slot)
        except WorkerError as err:
            self.replace(slot, None, err)
            return
        self.dispatch(slot)

    def receive(self, slot: int) -> None:
        index = self.busy.pop(slot)
        try:
            kind, payload = self.pool.recv(slot)
        except WorkerError as err:
            self.replace(slot, index, err)
            return
        self.record(index, kind, payload)
        self.dispatch(slot)

    def replace(self, slot: int, index: int | None, err: WorkerError) -> None:
        """A worker raised or died: its episode is lost (retried on the next run), and a fresh
        worker (the game may be broken after an exception) takes the slot."""
        log.error("episode %s failed: %s", index, err)
        if index is not None:
            self.summary["failed"].append(index)
            self.advance()
        self.failures += 1
        if self.failures >= _MAX_FAILURES_PER_WORKER * self.pool.num_workers:
            raise RuntimeError(f"{self.game} workers keep failing; last: {err}") from err
        if self.todo:
            self.pool.restart(slot)
            self.start(slot)

    def dispatch(self, slot: int) -> None:
        """Sends the slot its next episode, if any is left."""
        if not self.todo:
            return
        index = self.todo.popleft()
        # A worker that died since its last answer: wait() reports it, then recv() raises.
        with contextlib.suppress(WorkerError):
            self.pool.send(slot, "call", (_store_episode, (index, *self.episode_args)))
        self.busy[slot] = index

    def advance(self) -> None:
        self.bar.update()
        seconds = time.perf_counter() - self.start_time
        self.bar.set_postfix(fps=f"{self.summary['frames'] / seconds:.0f}",
                             skipped=self.summary["skipped"],
                             failed=len(self.summary["failed"]))  # fmt: skip

    def finish(self) -> dict[str, Any]:
        summary, store = self.summary, self.store
        seconds = time.perf_counter() - self.start_time
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
