"""The host-side loop around a jitted train step: logging, NaN checks, checkpoints, resume.

brax's ppo `train.py` pattern: Python only logs, draws the progress bar and checkpoints between
jitted steps. The loop resumes from the newest checkpoint in `checkpoint_dir`, so a Ctrl-C or a
kill loses at most `checkpoint_every` steps; a final checkpoint is always written.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from wm_jax.core import checkpoint, devices, distributed


class TrainingDivergedError(FloatingPointError):
    """A loss became NaN or inf; the message names the stage, step and metric."""


def append_jsonl(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Append rows to a JSON-lines metrics file (flushed, so a crash keeps what was logged)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, key: str = "step") -> list[dict[str, Any]]:
    """Rows of a metrics file; where a resumed run logged a step twice, the last one wins."""
    path = Path(path)
    if not path.is_file():
        return []
    rows: dict[Any, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        rows[row.get(key, len(rows))] = row
    return [rows[k] for k in sorted(rows)]


def _to_host(metrics: list[dict[str, jax.Array]]) -> list[dict[str, float]]:
    host = distributed.tree_to_host(metrics)  # replicated scalars; several processes too
    return [{name: float(np.asarray(value)) for name, value in row.items()} for row in host]


def run(
    name: str,
    key: jax.Array,
    train_step: Callable[[jax.Array, Any, Any], tuple[Any, dict[str, jax.Array]]],
    init_state: Callable[[jax.Array], Any],
    batches: Callable[[int], Iterable[Any]],
    num_steps: int | None,
    *,
    checkpoint_dir: str | os.PathLike | None = None,
    metrics_path: str | os.PathLike | None = None,
    config: dict[str, Any] | None = None,
    state: Any = None,
    on_step: Callable[[int, dict[str, jax.Array]], None] | None = None,
    checkpoint_every: int = 500,
    log_every: int = 25,
    progress: bool = True,
    mesh: Mesh | None = None,
    batch_setting: str = "batch_size",
) -> tuple[Any, dict[str, float]]:
    """Train for `num_steps` steps, resuming from `checkpoint_dir` when it holds a checkpoint.

    The one training loop: the stages train V and M through it with checkpoints and a metrics
    file; `vae_train.train` and `mdn_rnn_train.train` call it without either.

    Args:
      name: shown on the progress bar and in errors ("V", "M").
      key: step t uses `fold_in(key, t)`, so a resumed run sees the same keys.
      train_step: jitted `(key, state, batch) -> (state, metrics)`.
      init_state: `key -> state`; also the restore target (optax states keep their types).
      batches: `start_step -> iterable of batches` for steps start_step, start_step + 1, ...
      num_steps: total steps of the stage; None: until the batches run out.
      checkpoint_dir, metrics_path: where the state and the per-step metrics (JSON lines) go;
        None: neither is written (nor restored).
      config: JSON description saved beside the checkpoints.
      state: start from this state (its `step` field counts on) instead of a fresh or restored one.
      on_step: called as `on_step(step, metrics)` after each step, `step` counted from 1 and the
        metrics still on the device (no host sync).
      log_every: steps between the host syncs that check for NaN and write the metrics.
      mesh: data parallelism (`wm_jax.core.devices.data_mesh`): the state replicated over its
        devices and every batch split along its first axis; None: one device.
      batch_setting: the config field named when a batch does not split over the devices.

    Returns:
      (final state, the last logged metrics).

    Raises:
      TrainingDivergedError: naming the step (counted from 1) and metric that became NaN or inf.
    """
    key_init, key_steps = jax.random.split(key)
    start = 0
    if state is not None:
        start = int(state.step)
    else:
        state = init_state(key_init)
        if checkpoint_dir is not None and checkpoint.latest_step(checkpoint_dir) is not None:
            # The newest step that verifies: a corrupt newer one is skipped with a warning, and
            # the stream and keys resume from the step actually restored.
            state, start = checkpoint.restore_latest(checkpoint_dir, target=state)
    state = devices.place_state(state, mesh, batch_setting)
    pending: list[dict[str, jax.Array]] = []
    last: dict[str, float] = {}
    where = f"; the last good checkpoint is in {checkpoint_dir}" if checkpoint_dir else ""

    def flush(step: int) -> None:
        nonlocal last
        rows = _to_host(pending)
        for offset, row in enumerate(rows):
            # the total loss first: it is what a reader looks for
            bad = sorted(
                (m for m, v in row.items() if not np.isfinite(v)), key=lambda m: m != "loss"
            )
            if bad:
                at = step - len(rows) + offset + 1
                raise TrainingDivergedError(
                    f"{name} training diverged at step {at}: {bad[0]} = {row[bad[0]]}{where}"
                )
        first = step - len(rows) + 1
        if metrics_path is not None and distributed.is_writer():
            append_jsonl(metrics_path, [{"step": first + i, **row} for i, row in enumerate(rows)])
        last = rows[-1]
        pending.clear()

    def save(step: int) -> None:
        if checkpoint_dir is not None:
            checkpoint.save(checkpoint_dir, state, step=step, config=config or {})

    step = start
    with tqdm(total=num_steps, initial=start, desc=name, disable=not progress) as bar:
        for batch in batches(start):
            if num_steps is not None and step >= num_steps:
                break
            batch = devices.shard_batch(batch, mesh, batch_setting)
            state, metrics = train_step(jax.random.fold_in(key_steps, step), state, batch)
            pending.append(metrics)
            step += 1
            bar.update(1)
            if on_step is not None:
                on_step(step, metrics)
            if len(pending) >= log_every or step == num_steps:
                flush(step)
                bar.set_postfix({k: f"{v:.4g}" for k, v in list(last.items())[:3]})
            if step % checkpoint_every == 0 and (num_steps is None or step < num_steps):
                save(step)
        if pending:
            flush(step)
    if checkpoint_dir is not None and (
        step != start or checkpoint.latest_step(checkpoint_dir) != step
    ):
        save(step)
    return state, last
