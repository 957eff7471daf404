"""What splitting over several devices costs when they share the same cores (issue 16's target:
4 forced host devices no more than 10 % slower than 1).

    .venv/bin/python -m benchmarks.device_overhead [--devices 4] [--rounds 2] [--tiny]

On a CPU, `--xla_force_host_platform_device_count=N` makes N XLA devices out of the same cores,
so the split buys no speed: what it measures is the overhead of the sharded programs (the
gradient all-reduce, the population gather, the extra copies). Each measurement runs the
library's own multi-device path, as the stages do: V's and M's train steps with the state
replicated and the batch split (`wm_jax.core.devices`), and one dream CMA-ES generation with
the population split (`evolve.shard_population`, on by default with several devices).

Each device count runs in its own process (the flag must be set before JAX starts), and the
processes alternate (1, N, 1, N, ...) so that a change in the machine's load moves both. The
ratio per measurement is N devices' rate / 1 device's, from the medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

GOAL = 0.9  # N devices at ≥ 90 % of one device's rate


def measure(tiny: bool) -> dict[str, float]:
    """Rates on this process's devices (rates/s; higher is better)."""
    import dataclasses

    import jax
    import jax.numpy as jnp
    import numpy as np

    from benchmarks import dream_speed, harness, training_speed
    from wm_jax.core import devices, runtime
    from wm_jax.models import mdn_rnn, vae
    from wm_jax.train import mdn_rnn_train, vae_train

    runtime.tune_malloc()
    settings = harness.TINY if tiny else harness.QUICK
    repeats, min_time = (1, 0.0) if tiny else (3, 0.5)
    out: dict[str, float] = {}

    batch = 4 if tiny else 100
    mesh = devices.data_mesh(0, batch)
    init, step = vae_train.make_train(vae.DOOM, vae_train.VAETrainConfig(batch_size=batch))
    frames = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    holder = {"state": devices.place_state(jax.jit(init)(jax.random.key(0)), mesh)}
    frames = devices.shard_batch(jnp.asarray(frames), mesh)

    def v_call():
        holder["state"], metrics = step(jax.random.key(1), holder["state"], frames)
        jax.block_until_ready(metrics)

    out["V train images/s"] = batch / harness.time_calls(v_call, repeats, min_time)["median_s"]

    seq = 4 if tiny else 100
    init, step = mdn_rnn_train.make_train(
        mdn_rnn.DOOM, mdn_rnn_train.MDNTrainConfig(batch_size=batch, seq_len=seq)
    )
    data = devices.shard_batch(
        jax.tree.map(jnp.asarray, training_speed.sequence_batch(mdn_rnn.DOOM, batch, seq)), mesh
    )
    holder = {"state": devices.place_state(init(jax.random.key(0)), mesh)}

    def m_call():
        holder["state"], metrics = step(jax.random.key(1), holder["state"], data)
        jax.block_until_ready(metrics)

    out["M train timesteps/s"] = (
        batch * seq / harness.time_calls(m_call, repeats, min_time)["median_s"]
    )

    cma = dream_speed.bench_cma(
        dataclasses.replace(settings, cma_steps=3 if tiny else 100, cma_generations=repeats)
    )
    out["CMA-ES dream steps/s"] = cma["dream_steps_per_s"]
    out["devices"] = len(jax.devices())
    return out


def _worker(count: int, tiny: bool) -> dict[str, float]:
    from benchmarks import harness

    flags = os.environ.get("XLA_FLAGS", "")
    env = {
        "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={count}".strip(),
        "JAX_PLATFORMS": "cpu",
    }
    return harness.run_worker("benchmarks.device_overhead", env, ("--tiny",) if tiny else ())


def run(devices: int = 4, rounds: int = 2, tiny: bool = False) -> dict[str, Any]:
    """The rates for 1 and `devices` devices, alternating, and their ratios."""
    runs: dict[int, list[dict[str, float]]] = {1: [], devices: []}
    for _ in range(rounds):
        for count in (1, devices):
            runs[count].append(_worker(count, tiny))
            print(f"  {count} device(s): {runs[count][-1]}", file=sys.stderr, flush=True)
    names = [k for k in runs[1][0] if k != "devices"]
    median = {c: {k: statistics.median(r[k] for r in rs) for k in names} for c, rs in runs.items()}
    ratios = {k: median[devices][k] / median[1][k] for k in names}
    return {
        "devices": devices,
        "rounds": rounds,
        "tiny": tiny,
        "runs": {str(c): rs for c, rs in runs.items()},
        "median": {str(c): m for c, m in median.items()},
        "ratio": ratios,
        "goal": GOAL,
        "pass": all(r >= GOAL for r in ratios.values()),
    }


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.device_overhead")
    parser.add_argument("--devices", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tiny", action="store_true", help="toy sizes: checks the harness")
    parser.add_argument("--out", type=Path, default=None, help="write the record here (JSON)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.tiny)))
        return None
    record = run(args.devices, args.rounds, args.tiny)
    for name, ratio in record["ratio"].items():
        print(f"{name}: {args.devices} devices / 1 = {ratio:.3f} (goal ≥ {GOAL})")
    if args.out:
        from wm_jax.core import checkpoint

        checkpoint.atomic_write_json(args.out, record)
    return record


if __name__ == "__main__":
    main()
