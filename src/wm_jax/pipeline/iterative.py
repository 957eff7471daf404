"""The paper's iterative training procedure: `python -m wm_jax.iterative RUN_DIR --iterations N`.

World Models §5: 1) start from a trained V, M, C; 2) collect new real rollouts with C (plus
exploration noise); 3) retrain M on all the data and C in M's dream, and evaluate in the real
game; 4) repeat. V is not retrained: the new frames are encoded with the parent's V.

Iteration k gets its own run folder `RUN_DIR/iterations/iter_k/` (like the sweep's `tau_X`):

- data: hard links to every episode of iteration k-1 (the parent for k = 1) plus E new
  episodes played by iteration k-1's controller, at indices k·1,000,000 + i. They are collected
  into `data/new_episodes` at indices i with seed `collect_seed(seed, k)` (the collector numbers
  episodes from 0) and linked in under their final indices once collection is complete;
  encoded episodes of k-1 are linked too, so only the new ones are encoded.
- V: a link to the parent's checkpoint (train_vae marked complete, like the sweep).
- M: iteration k-1's checkpoint continued for `mdn_train.num_steps` more steps (config.json has
  `mdn_train.num_steps = parent steps + k · per-iteration steps`, so `training_loop` resumes).
- C: CMA-ES in the new dream for `controller.generations`, started from iteration k-1's
  controller as the mean with a fresh covariance and σ0 (`warm_start`; see `warm_start_es`).

Each stage is recorded by `experiment.run_config`'s markers, so a killed run resumes where it
stopped and finished iterations are skipped. The table goes to `RUN_DIR/iterations/summary.md`
and `.json` (`wm_jax.pipeline.rounds`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from wm_jax.core import distributed, links, runtime
from wm_jax.core.checkpoint import atomic_write_json
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import experiment, run_folder
from wm_jax.pipeline.cli import add_common_arguments, run_command
from wm_jax.pipeline.rounds import PARENT_STAGES, round_row, write_summary

INDEX_OFFSET = 1_000_000  # iteration k's new episodes are k * INDEX_OFFSET + i
DEFAULT_NOISE = 0.1
# Settings an iteration cannot change: V is not retrained, M and C keep their shapes, and new
# episodes are collected as the parent's were.
_FROZEN_SECTIONS = {"vae", "vae_train", "mdn_rnn", "collect"}
_FROZEN = {("controller", "kind"), ("controller", "train_in")}
# Loss weights of M's heads change what M learns from the new data, not its shapes; the
# driver's share only changes who plays the new episodes (e.g. a round of driver data).
_FREE_FIELDS = {
    ("collect", "workers"),
    ("collect", "driver_fraction"),
    ("collect", "driver_stops"),
    ("mdn_rnn", "reward_over_weight"),
    ("mdn_rnn", "reward_min"),
    ("mdn_rnn", "done_pos_weight"),
}


def collect_seed(seed: int, iteration: int) -> int:
    """The collector seed of iteration k's new episodes (apart from the parent's `seed`)."""
    return int(np.random.SeedSequence([seed, INDEX_OFFSET, iteration]).generate_state(1)[0])


def load_parent(run_dir: Path) -> tuple[cfg.ExperimentConfig, int]:
    """The parent run's config and M's steps; refuses runs whose C was not trained in a dream."""
    if not (run_dir / "config.json").is_file():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    config = cfg.from_dict(json.loads((run_dir / "config.json").read_text()))
    if config.controller.train_in != "dream":
        raise cfg.ConfigError(
            f"{run_dir} trains C in the real game (controller.train_in="
            f"{config.controller.train_in}); the iterative procedure retrains C in M's dream and "
            "needs controller.train_in=dream (doom_take_cover, the MinAtar games, or car_racing "
            "with --set controller.train_in=dream --set mdn_rnn.predict_reward=true "
            "--set mdn_rnn.predict_done=true)"
        )
    for stage in PARENT_STAGES:
        if not (run_dir / "stages" / f"{stage}.json").is_file():
            raise FileNotFoundError(
                f"{run_dir} has not finished stage {stage}: run the experiment first "
                f"(python -m wm_jax.experiment {config.experiment} --run-dir {run_dir})"
            )
    return config, int(run_folder.require_record(run_dir, "train_mdn_rnn")["summary"]["steps"])


def iteration_config(
    parent: cfg.ExperimentConfig, parent_m_steps: int, iteration: int, overrides: list[str]
) -> cfg.ExperimentConfig:
    """The parent's config with `overrides`; `mdn_train.num_steps` is per iteration, cumulated."""
    config = cfg.apply_overrides(parent, overrides)
    old, new = parent.to_dict(), config.to_dict()
    for section, name in [(s, n) for s in cfg.SECTIONS for n in old[s]]:
        frozen = section in _FROZEN_SECTIONS and (section, name) not in _FREE_FIELDS
        if old[section][name] != new[section][name] and (frozen or (section, name) in _FROZEN):
            raise cfg.ConfigError(
                f"{section}.{name} cannot change in an iteration (V is not retrained, M and C "
                "keep their shapes, new episodes are collected like the parent's)"
            )
    steps = parent_m_steps + iteration * config.mdn_train.num_steps
    return dataclasses.replace(
        config, mdn_train=dataclasses.replace(config.mdn_train, num_steps=steps)
    )


def warm_start_es(config: cfg.ExperimentConfig, paths, previous, iteration: int) -> None:
    """CMA-ES generation 0 centred on the previous controller, saved for `train_in_dream`.

    The mean carries over (C already plays this game well, and M changed only by more training
    on more data); the covariance and σ start afresh at σ0 = `evolve.sigma_init`, because the
    previous run's have shrunk around the old dream's optimum and could not follow the new one.
    """
    import jax
    import jax.numpy as jnp

    from wm_jax.core import checkpoint
    from wm_jax.es import evolve
    from wm_jax.pipeline import run_models

    c_config = run_models.controller_config(config)
    key = jax.random.fold_in(jax.random.key(config.seed), iteration)
    state = evolve.init_state(key, c_config, config.evolve)
    mean = jnp.asarray(run_models.load_controller(previous), jnp.float32)
    state = state.replace(es_state=state.es_state.replace(mean=mean))
    source = str(previous.checkpoints("controller_final"))
    checkpoint.save(paths.checkpoints("controller"), state, step=0, config={"warm_start": source})


def new_block(parent_indices: list[int], iteration: int) -> int:
    """The block of a round's new episodes (indices block * INDEX_OFFSET + i, and its collection
    seed): the first after every episode of the parent's store, so a round iterated from an
    iteration folder, or from a run whose data already holds rounds, never reuses an index or
    a seed. For iteration k of one run this is block k."""
    return max(iteration, max(parent_indices, default=-1) // INDEX_OFFSET + 1)


def collect_new(config, paths, previous, iteration: int, episodes: int, noise: float, progress):
    """Iteration k's data: k-1's episodes linked, plus `episodes` played by k-1's controller."""
    from wm_jax.data import EpisodeStore, episode_path
    from wm_jax.envs.collect import collect
    from wm_jax.pipeline import run_models, stages

    block = new_block(EpisodeStore(previous.episodes).indices(), iteration)
    staging = paths.root / "data" / "new_episodes"
    policy = stages.collection_policy(
        config, run_models.controller_policy(config, previous, noise=noise)
    )
    summary = collect(
        config.game,
        staging,
        num_episodes=episodes,
        workers=config.collect.workers or os.cpu_count() or 1,
        seed=collect_seed(config.seed, block),
        max_frames=config.collect.max_frames,
        min_frames=config.collect.min_frames,
        progress=progress,
        policy=policy,
        # Several processes: each plays its own share of the episode ids into the one folder.
        shard=(distributed.process_index(), distributed.process_count()),
    )
    distributed.barrier("round collected")
    new = EpisodeStore(staging)  # every process's episodes (the files are the truth)
    if len(new) == 0:
        raise RuntimeError(
            f"the controller's collection stored no episodes in {staging}: {summary}"
        )
    first = block * INDEX_OFFSET
    if distributed.is_writer():
        links.link_store(previous.episodes, paths.episodes)
        for index in new.indices():
            links.link_file(new.path(index), episode_path(paths.episodes, first + index))
        store = EpisodeStore(paths.episodes)  # opening it records the new files in its manifest
        info = {"iteration": iteration, "first_index": first, "policy": repr(policy)}
        info |= {"collect_seed": collect_seed(config.seed, block)}
        meta = store.read_meta()
        earlier = [i for i in meta.get("iterations", []) if i["iteration"] != iteration]
        store.write_meta(meta | {"iterations": [*earlier, info]})
    distributed.barrier("round linked")
    store = EpisodeStore(paths.episodes)
    linked = len(list(Path(previous.episodes).glob("episode_*.npz")))
    return {
        "episodes": len(store),
        "frames": store.total_frames,
        "bytes": store.total_bytes,
        "linked_episodes": linked,
        "new_episodes": len(new),
        "new_frames": new.total_frames,
        "new_skipped": len(new.skipped()),
        "failed": summary["failed"],
        "policy": repr(policy),
        "noise": noise,
        "first_index": first,
    }


def _check_settings(sub: Path, settings: dict[str, Any]) -> None:
    """Write `iteration.json`, or refuse to resume an iteration under other settings."""
    path = sub / "iteration.json"
    if path.is_file():
        old = json.loads(path.read_text())
        changes = [f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v]
        if changes:
            raise cfg.ConfigError(
                f"{path} was written with other settings ({'; '.join(changes)}); resume with "
                "the same settings or remove the iterations folder"
            )
    distributed.barrier(f"read {path}")  # every process compared before process 0 writes
    if distributed.is_writer():
        atomic_write_json(path, settings)


def prepare_iteration(
    run_dir: Path,
    iteration: int,
    config: cfg.ExperimentConfig,
    settings: dict[str, Any],
    progress: bool = True,
) -> Path:
    """Iteration k's run folder, ready for `experiment.run_config` (collection is done here).

    Every step is skipped once done, so a killed iteration resumes where it stopped. Several
    processes (`wm_jax.core.distributed`): each collects its share of the new episodes, process
    0 alone links and copies files, and the others wait for it.
    """
    from wm_jax.core import checkpoint
    from wm_jax.pipeline.stages import RunPaths

    sub = run_dir / "iterations" / f"iter_{iteration}"
    experiment.prepare_run_dir(sub, config)
    _check_settings(sub, settings)
    paths = RunPaths(sub)
    previous = RunPaths(
        run_dir / "iterations" / f"iter_{iteration - 1}" if iteration > 1 else run_dir
    )
    done = {stage for stage in cfg.STAGES if (sub / "stages" / f"{stage}.json").is_file()}
    writer = distributed.is_writer()
    distributed.barrier(f"decided {sub}")  # every process read `done` before any change
    if writer:
        for name in ("checkpoints/vae", "metrics/train_vae.jsonl"):  # V is the parent's
            if (run_dir / name).exists():
                links.symlink(run_dir / name, sub / name)
        if "train_vae" not in done:
            run_folder.adopt_record(run_dir, sub, "train_vae")
    if "collect" not in done:
        share = config.collect.driver_fraction
        by = "C" if share == 0 else f"C, {share:.0%} of them by the game's driver instead"
        print(f"[collect] running ({settings['episodes']} episodes played by {by})", flush=True)
        start = time.perf_counter()
        summary = collect_new(
            config, paths, previous, iteration, settings["episodes"], settings["noise"], progress
        )
        if writer:
            run_folder.write_record(sub, "collect", summary, time.perf_counter() - start, {})
    m_dir = paths.checkpoints("mdn_rnn")
    if writer:
        shutil.rmtree(sub / "data" / "new_episodes", ignore_errors=True)  # linked into the store
        if "encode" not in done:  # same V: only new episodes get encoded
            links.link_store(previous.encoded, paths.encoded)
        if "train_mdn_rnn" not in done and checkpoint.latest_step(m_dir) is None:
            paths.metrics("train_mdn_rnn").parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(previous.metrics("train_mdn_rnn"), paths.metrics("train_mdn_rnn"))
            links.copy_tree(previous.checkpoints("mdn_rnn"), m_dir)
    distributed.barrier(f"prepared {sub}")
    es_started = checkpoint.latest_step(paths.checkpoints("controller")) is not None
    if settings["warm_start"] and "train_controller" not in done and not es_started:
        warm_start_es(config, paths, previous, iteration)
    return sub


def run(
    run_dir: str | Path,
    iterations: int,
    episodes: int | None = None,
    noise: float = DEFAULT_NOISE,
    overrides: list[str] | None = None,
    warm_start: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) `iterations` rounds of collect → encode → M → C → evaluate.

    Args:
      run_dir: a finished run whose C was trained in the dream.
      episodes: new real episodes per iteration (default the parent's `collect.episodes`).
      noise: std of the Gaussian noise on C's output while collecting (clipped to [-1, 1]).
      overrides: `section.field=value` for every iteration; `mdn_train.num_steps` is M's steps
        per iteration (default the parent's), `controller.generations` C's.
      warm_start: start CMA-ES from the previous controller (else from zeros, as the parent).

    Returns:
      The summary rows: the parent (iteration 0), then each iteration.
    """
    run_dir = Path(run_dir)
    if iterations < 1:
        raise cfg.ConfigError(f"--iterations {iterations}: must be >= 1")
    if noise < 0:
        raise cfg.ConfigError(f"--noise {noise}: must be >= 0")
    parent, parent_m_steps = load_parent(run_dir)
    episodes = parent.collect.episodes if episodes is None else episodes
    if episodes < 1:
        raise cfg.ConfigError(f"--episodes {episodes}: must be >= 1")
    settings = {"episodes": episodes, "noise": float(noise), "warm_start": warm_start}
    rows = [round_row(run_dir, 0)]
    out_dir = run_dir / "iterations"
    for k in range(1, iterations + 1):
        config = iteration_config(parent, parent_m_steps, k, overrides or [])
        sub = out_dir / f"iter_{k}"
        if (sub / "stages" / f"{cfg.STAGES[-1]}.json").is_file():
            experiment.prepare_run_dir(sub, config)  # still refuse other settings
            _check_settings(sub, settings | {"iteration": k})
            print(f"[iterative] iteration {k} complete, skipped ({sub})", flush=True)
        else:
            print(f"[iterative] iteration {k} in {sub}", flush=True)
            sub = prepare_iteration(run_dir, k, config, settings | {"iteration": k}, progress)
            experiment.run_config(config, sub, progress=progress)
        rows.append(round_row(sub, k))
        if distributed.is_writer():
            write_summary(out_dir, rows)
    return rows


def main(argv: list[str] | None = None) -> int:
    runtime.tune_malloc()  # before XLA's first allocations
    parser = argparse.ArgumentParser(
        prog="python -m wm_jax.iterative",
        description="World Models §5: collect with C, retrain M on all data and C in the dream, "
        "evaluate; repeat.",
    )
    parser.add_argument("run_dir", type=Path, help="a finished run whose C was trained in a dream")
    parser.add_argument("--iterations", type=int, required=True)
    parser.add_argument(
        "--episodes", type=int, default=None, help="new episodes per iteration (default: the run's)"
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=DEFAULT_NOISE,
        help=f"std of Gaussian noise on C's output while collecting (default {DEFAULT_NOISE})",
    )
    parser.add_argument(
        "--fresh-controller",
        action="store_true",
        help="start CMA-ES from zeros each iteration instead of from the previous controller",
    )
    add_common_arguments(
        parser, "e.g. mdn_train.num_steps (M's steps per iteration), controller.generations"
    )
    args = parser.parse_args(argv)

    def work() -> list[dict[str, Any]]:
        with run_folder.held(args.run_dir, create=False):
            return run(
                args.run_dir,
                args.iterations,
                args.episodes,
                args.noise,
                args.overrides,
                warm_start=not args.fresh_controller,
                progress=not args.no_progress,
            )

    rows = run_command(work, errors=(FileNotFoundError,))
    print(write_summary(args.run_dir / "iterations", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
