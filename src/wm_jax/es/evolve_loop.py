"""The host-side loop around CMA-ES generations: log, evaluate the ES mean, checkpoint.

Shared by C's training in the dream (`wm_jax.es.evolve`) and in the real game
(`wm_jax.es.evolve_real`). brax's ppo `train.py` pattern: the jitted or worker-pool work happens in
`advance`; Python only logs (JSONL, tqdm), evaluates every `eval_every` generations and
checkpoints every `checkpoint_every`, so a Ctrl-C or a kill loses at most that many generations.

`state` is a `wm_jax.es.evolve.EvolveState` and `config` an `EvolveConfig` (duck-typed here so this
module sits below `evolve` in the import graph).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from wm_jax.core import checkpoint, distributed, kernels
from wm_jax.models import controller
from wm_jax.train import training_loop


def record_eval(state: Any, eval_returns: np.ndarray) -> tuple[Any, float]:
    """Keep the ES mean as `best_eval_params` when its evaluation beats every earlier one."""
    score = float(np.nanmean(eval_returns))
    if score > float(state.best_eval_return):
        state = state.replace(
            best_eval_return=jnp.asarray(score, jnp.float32), best_eval_params=state.es_state.mean
        )
    return state, score


class _Logger:
    """JSONL metrics + tqdm bar; on resume, drops log lines past the restored generation."""

    def __init__(self, log_path, start: int, total: int, progress: bool):
        self.path = Path(log_path) if log_path is not None else None
        self.rows: list[dict] = []  # every row of the run so far (an earlier attempt's kept ones)
        if self.path is not None:
            # read_jsonl drops a last line cut short by a kill.
            rows = training_loop.read_jsonl(self.path, key="generation")
            kept = [row for row in rows if row.get("generation", start + 1) <= start]
            if distributed.is_writer():  # one process writes (wm_jax.core.distributed)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                text = "".join(json.dumps(r) + "\n" for r in kept)
                checkpoint.atomic_write_text(self.path, text)
            self.rows = kept
        self.bar = tqdm(total=total, initial=start, disable=not progress, desc="CMA-ES", unit="gen")

    def log(self, rows: list[dict]) -> None:
        if self.path is not None and distributed.is_writer():
            training_loop.append_jsonl(self.path, rows)
        self.rows += rows
        last = rows[-1]
        self.bar.update(len(rows))
        self.bar.set_postfix(
            best=f"{last['best_return']:.1f}",
            mean=f"{last['mean_return']:.1f}",
            worst=f"{last['worst_return']:.1f}",
            sigma=f"{last['sigma']:.4f}",
            s_per_gen=f"{last['seconds_per_generation']:.2f}",
        )

    def close(self):
        self.bar.close()


def stale_evaluations(rows: list[dict]) -> int:
    """Evaluations of the ES mean since the last one that beat every earlier one (log rows)."""
    best, stale = -np.inf, 0
    for row in rows:
        if "eval_return" not in row:
            continue
        if row["eval_return"] > best:
            best, stale = row["eval_return"], 0
        else:
            stale += 1
    return stale


def stop_reason(rows: list[dict], patience: int, stop_at: float | None) -> str | None:
    """Why the loop stops after these log rows (a resumed run's included), or None."""
    stale = stale_evaluations(rows)
    if patience and stale >= patience:
        return f"{stale} evaluations without a new best"
    best = max((row["eval_return"] for row in rows if "eval_return" in row), default=None)
    if stop_at is not None and best is not None and best >= stop_at:
        return f"an evaluation of {best:.1f} reached stop_at_return={stop_at}"
    return None


def restore_or(state: Any, checkpoint_dir) -> Any:
    """The newest checkpoint in `checkpoint_dir` (into `state`'s structure), else `state`."""
    if checkpoint_dir is None or checkpoint.latest_step(checkpoint_dir) is None:
        return state
    return checkpoint.restore(checkpoint_dir, target=state)


def run_loop(
    state: Any,
    advance: Callable[[Any], tuple[Any, list[dict]]],
    evaluate_mean: Callable[[Any], np.ndarray] | None,
    config: Any,
    num_generations: int,
    checkpoint_dir,
    checkpoint_config: dict,
    log_path,
    progress: bool,
) -> Any:
    """The host loop shared by dream and real training: log, evaluate, checkpoint."""
    logger = _Logger(log_path, state.generation, num_generations, progress)
    patience = getattr(config, "stop_after_stale_evals", 0)
    stop_at = getattr(config, "stop_at_return", None)
    # Read from the logged rows (a resumed run's included), so a resumed run stops where an
    # uninterrupted one would.
    stopped = stop_reason(logger.rows, patience, stop_at)
    # CMA-ES decomposes the D x D covariance every generation (D = 1,088 for Doom). On the CPU
    # that eigh runs in OpenBLAS, whose threads fight XLA's: measured on 2 cores, 9.0 s per
    # decomposition with OpenBLAS's default 2 threads against 0.13 s with 1. On an accelerator
    # it runs on the device (wm_jax.core.kernels: es_blas_threads).
    threads = kernels.active().es_blas_threads
    blas_limit = threadpool_limits(threads or None, user_api="blas")
    try:
        while state.generation < num_generations and stopped is None:
            start = time.perf_counter()
            state, rows = advance(state)
            seconds = (time.perf_counter() - start) / len(rows)
            for row in rows:
                row["seconds_per_generation"] = seconds
            generation = state.generation
            due = config.eval_every and generation % config.eval_every == 0
            if evaluate_mean is not None and due:
                state, score = record_eval(state, distributed.to_host(evaluate_mean(state)))
                rows[-1]["eval_return"] = score
                rows[-1]["best_eval_return"] = float(state.best_eval_return)
            stopped = stop_reason(logger.rows + rows, patience, stop_at)
            stopping = stopped is not None
            if stopping:
                rows[-1]["stopped"] = stopped
            logger.log(rows)
            if (
                checkpoint_dir is not None
                and config.checkpoint_every
                and (
                    generation % config.checkpoint_every == 0
                    or generation >= num_generations
                    or stopping
                )
            ):
                checkpoint.save(
                    checkpoint_dir,
                    state,
                    step=generation,
                    config=checkpoint_config,
                    keep=config.keep_checkpoints,
                )
    finally:
        logger.close()
        blas_limit.restore_original_limits()
    return state


def checkpoint_config(kind: str, c_config, config: Any, **extra) -> dict:
    """What a controller checkpoint records beside the state: where C was trained and how."""
    return {
        "kind": kind,
        "controller": controller.config_to_dict(c_config),
        "evolve": dataclasses.asdict(config),
        **extra,
    }
