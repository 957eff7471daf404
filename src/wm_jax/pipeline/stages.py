"""The stages of an experiment, each resumable, each reading and writing the run folder.

collect → train_vae → encode → train_mdn_rnn → train_controller → evaluate (→ report, in
`wm_jax.pipeline.report`). A stage returns a JSON summary that `wm_jax.pipeline.experiment`
records; its outputs live in the run folder (`RunPaths`), so a rerun skips or resumes it.
"""

from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.core import checkpoint, devices, distributed
from wm_jax.data import EpisodeStore, encode_store, frame_batches, sequence_batches
from wm_jax.data.done_records import require_done_records
from wm_jax.data.store import NoEpisodesError
from wm_jax.envs import DriverMix, game_spec, random_policy
from wm_jax.envs.collect import collect as collect_episodes
from wm_jax.es import evolve, evolve_real
from wm_jax.models import controller
from wm_jax.pipeline import run_models
from wm_jax.pipeline.config import ExperimentConfig
from wm_jax.pipeline.run_folder import RunPaths
from wm_jax.train import mdn_rnn_train, training_loop, vae_train


def _workers(requested: int) -> int:
    return requested or os.cpu_count() or 1


def _stage_key(config: ExperimentConfig, stage: str) -> jax.Array:
    """One independent key per stage, from the experiment seed (the same in every process:
    `hash(str)` is salted per process, crc32 is not)."""
    return jax.random.fold_in(jax.random.key(config.seed), zlib.crc32(stage.encode()) % 2**31)


# -------------------------------------------------------------------------------------------
# collect


def collection_policy(config: ExperimentConfig, base: Any) -> Any:
    """`base` (a PolicyFactory), or a mix with the game's driver (`collect.driver_fraction`)."""
    if config.collect.driver_fraction == 0:
        return base
    stops = config.collect.driver_stops
    options = {"stop_rate": stops} if stops > 0 else {}
    return DriverMix(base, game_spec(config.game).driver, config.collect.driver_fraction, options)


def collect(config: ExperimentConfig, paths: RunPaths, progress: bool = True) -> dict[str, Any]:
    """Random rollouts in the real game (resumable: stored episodes are skipped)."""
    summary = collect_episodes(
        config.game,
        paths.episodes,
        num_episodes=config.collect.episodes,
        workers=_workers(config.collect.workers),
        seed=config.seed,
        max_frames=config.collect.max_frames,
        min_frames=config.collect.min_frames,
        progress=progress,
        policy=collection_policy(config, random_policy(config.game)),
        # Several processes: each plays its own share of the episode ids into the one store.
        shard=(distributed.process_index(), distributed.process_count()),
    )
    distributed.barrier("collected")
    store = EpisodeStore(paths.episodes)  # every process's episodes (the files are the truth)
    if distributed.is_writer():
        store.flush()
    if len(store) == 0:
        raise RuntimeError(f"collection stored no episodes in {paths.episodes}: {summary}")
    return {"episodes": len(store), "frames": store.total_frames, "bytes": store.total_bytes}


# -------------------------------------------------------------------------------------------
# V


def vae_num_steps(config: ExperimentConfig, frames: int) -> int:
    """V's steps: `vae_train.num_epochs` passes over `frames` readable frames."""
    steps_per_epoch = max(1, frames // config.vae_train.batch_size)
    return config.vae_train.num_epochs * steps_per_epoch


def train_vae(config: ExperimentConfig, paths: RunPaths, progress: bool = True) -> dict[str, Any]:
    """V on shuffled frames streamed from the store (bounded memory), resumable."""
    store = EpisodeStore(paths.episodes)
    init_state, train_step = vae_train.make_train(config.vae, config.vae_train)
    budget = config.data.memory_budget_mb * 2**20

    def batches(start: int):
        # One stream from one seed; a resumed run fast-forwards to the batch it reached.
        seed = _stage_key(config, "vae_data")
        batch = config.vae_train.batch_size
        return frame_batches(seed, store, batch, budget, num_epochs=None, start_batch=start)

    usable = store.readable_summary()  # corrupt files are skipped: count what V really sees
    if usable["frames"] < config.vae_train.batch_size:
        raise NoEpisodesError(
            f"{paths.episodes}: {usable['episodes']} of {len(store)} episode files are readable "
            f"({len(usable['corrupt'])} corrupt), {usable['frames']} frames, fewer than one "
            f"batch of {config.vae_train.batch_size}; recollect with --stages collect"
        )
    num_steps = vae_num_steps(config, usable["frames"])
    state, last = training_loop.run(
        "V",
        _stage_key(config, "train_vae"),
        train_step,
        init_state,
        batches,
        num_steps,
        checkpoint_dir=paths.checkpoints("vae"),
        metrics_path=paths.metrics("train_vae"),
        config={"vae": dataclasses.asdict(config.vae)},
        checkpoint_every=max(1, min(500, num_steps // 4)),
        progress=progress,
        mesh=devices.data_mesh(config.data.devices, config.vae_train.batch_size),
        batch_setting="vae_train.batch_size",
    )
    return {
        "steps": int(state.step),
        "final_loss": last,
        "frames": usable["frames"],
        "episodes": usable["episodes"],
        "skipped_episodes": usable["corrupt"],
    }


def encode(config: ExperimentConfig, paths: RunPaths, progress: bool = True) -> dict[str, Any]:
    """Every stored episode → (μ, log σ²) sequences, resumable."""
    summary = encode_store(
        run_models.load_vae(config, paths),
        EpisodeStore(paths.episodes),
        EpisodeStore(paths.encoded),
        batch_size=config.data.encode_batch_size,
        progress=progress,
        mirror_signs=game_spec(config.game).mirror_signs if config.data.mirror else None,
        # Several processes: each encodes its own share of the episodes on its own devices.
        mesh=devices.data_mesh(config.data.devices, config.data.encode_batch_size, local=True),
        share=(distributed.process_index(), distributed.process_count()),
    )
    distributed.barrier("encoded")
    if distributed.is_writer():
        EpisodeStore(paths.encoded).flush()  # the manifest of every process's episodes
    return {k: v for k, v in summary.items() if isinstance(v, int | float | str)}


# -------------------------------------------------------------------------------------------
# M


def train_mdn_rnn(
    config: ExperimentConfig, paths: RunPaths, progress: bool = True
) -> dict[str, Any]:
    """M with teacher forcing over random windows of the encoded episodes, resumable."""
    if config.mdn_rnn.predict_done:  # old CarRacing stores ran past the game's end
        require_done_records(EpisodeStore(paths.episodes), config.game)
    encoded = EpisodeStore(paths.encoded)
    init_state, train_step = mdn_rnn_train.make_train(config.mdn_rnn, config.mdn_train)
    train = config.mdn_train

    def batches(start: int):
        # Batch k is a function of (seed, k): a resumed run sees the batches it would have.
        return sequence_batches(
            _stage_key(config, "mdn_data"),
            encoded,
            train.batch_size,
            train.seq_len,
            windows=train.windows,
            start_batch=start,
        )

    state, last = training_loop.run(
        "M",
        _stage_key(config, "train_mdn_rnn"),
        train_step,
        init_state,
        batches,
        train.num_steps,
        checkpoint_dir=paths.checkpoints("mdn_rnn"),
        metrics_path=paths.metrics("train_mdn_rnn"),
        config={"mdn_rnn": dataclasses.asdict(config.mdn_rnn)},
        checkpoint_every=max(1, min(500, train.num_steps // 4)),
        progress=progress,
        mesh=devices.data_mesh(config.data.devices, train.batch_size),
        batch_setting="mdn_train.batch_size",
    )
    return {"steps": int(state.step), "final_loss": last}


# -------------------------------------------------------------------------------------------
# C


class ControllerResult(NamedTuple):
    params: np.ndarray  # (D,) flat parameters of the chosen controller
    summary: dict[str, Any]


def train_controller(
    config: ExperimentConfig, paths: RunPaths, progress: bool = True
) -> dict[str, Any]:
    """CMA-ES on C, in the dream or in the real game (resumes from its ES checkpoint)."""
    c_config = run_models.controller_config(config)
    key = _stage_key(config, "train_controller")
    common = dict(
        checkpoint_dir=paths.checkpoints("controller"),
        log_path=paths.metrics("train_controller"),
        progress=progress,
    )
    if config.controller.train_in == "dream":
        env, env_params = run_models.make_dream(config, paths)
        state = evolve.train_in_dream(
            key, env, env_params, c_config, config.evolve, config.controller.generations, **common
        )
    else:
        from wm_jax.envs import real_rollout  # host processes: only when training in the real game

        pool = real_rollout.EnvPool.for_game(config.game, _workers(config.evaluate.workers))
        try:
            evaluate_fn = real_rollout.population_evaluator(
                pool,
                run_models.real_models(config, paths, c_config),
                c_config,
                max_steps=config.evolve.max_steps,
                progress=False,
            )
            state = evolve_real.train_in_real(
                key, evaluate_fn, c_config, config.evolve, config.controller.generations, **common
            )
        finally:
            pool.close()
    chosen = final_controller(state)
    checkpoint.save(
        paths.checkpoints("controller_final"),
        {"flat_params": jnp.asarray(chosen.params)},
        step=state.generation,
        config={"controller": controller.config_to_dict(c_config), **chosen.summary},
    )
    return {
        "generations": state.generation,
        "trained_in": config.controller.train_in,
        **chosen.summary,
    }


def final_controller(state: evolve.EvolveState) -> ControllerResult:
    """The ES mean that scored best at an evaluation, else the final ES mean."""
    best_eval = float(state.best_eval_return)
    if np.isfinite(best_eval):
        return ControllerResult(
            np.asarray(state.best_eval_params),
            {
                "choice": "best_evaluated_mean",
                "best_eval_return": best_eval,
                "best_fitness": float(-state.es_state.best_fitness),
            },
        )
    return ControllerResult(
        np.asarray(state.mean),
        {"choice": "final_mean", "best_fitness": float(-state.es_state.best_fitness)},
    )


# -------------------------------------------------------------------------------------------
# evaluation


def evaluate(config: ExperimentConfig, paths: RunPaths, progress: bool = True) -> dict[str, Any]:
    """The trained C in the real game on unseen seeds (and in the dream, for the Doom table)."""
    from wm_jax.pipeline import evaluate as evaluation

    c_config = run_models.controller_config(config)
    flat = run_models.load_controller(paths)
    key = _stage_key(config, "evaluate")
    result = evaluation.evaluate_controller(
        key,
        config.game,
        run_models.real_models(config, paths, c_config),
        c_config,
        flat,
        config.evaluate.episodes,
        num_workers=_workers(config.evaluate.workers),
        max_steps=config.evaluate.max_steps or None,
        progress=progress,
        record_path=paths.evaluation_episodes,
    )
    summary = {
        "episodes": int(np.isfinite(result.returns).sum()),
        "lost_episodes": int(np.isnan(result.returns).sum()),
        "mean": result.mean,
        "std": result.std,
        "returns": [float(r) for r in result.returns],
        "lengths": [int(n) for n in result.lengths],
        "seeds": [int(s) for s in result.seeds],
    }
    # The baseline beside it, on the first of the same seeds (tracks / levels).
    baseline = evaluation.evaluate_random_policy(
        config.game, min(20, config.evaluate.episodes), max_steps=config.evaluate.max_steps or None
    )
    summary["random_policy"] = {
        "episodes": len(baseline.returns),
        "mean": baseline.mean,
        "std": baseline.std,
        "returns": [float(r) for r in baseline.returns],
    }
    if config.mdn_rnn.predict_done or config.mdn_rnn.predict_reward:
        # World Models, Table 2: the score in the dream beside the score in the real game.
        env, env_params = run_models.make_dream(config, paths)
        in_dream = evaluation.evaluate_in_dream(
            jax.random.fold_in(key, 1),
            env,
            env_params,
            c_config,
            jnp.asarray(flat),
            config.evaluate.episodes,
            max_steps=int(env_params.max_steps_in_episode),
        )
        summary["dream"] = {
            "mean": in_dream.mean,
            "std": in_dream.std,
            "temperature": config.controller.temperature,
        }
    return summary
