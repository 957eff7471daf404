"""XLA:CPU's library back ends against its own code, on V's and M's training steps and the dream.

    .venv/bin/python -m benchmarks.xla_flags [--tiny] [--rounds 3] [--out PATH]

Each flag set runs in its own process (XLA reads `XLA_FLAGS` once, at start-up), the sets in
alternating rounds, medians over the rounds. Each process times V's training step (batch 100),
M's (CarRacing and Doom, 100 × 100) and the Doom dream at 1,024 rollouts, as `benchmarks.run`
times them (medians after a warm-up, compile apart). The
record (JSON) gives each rate and its ratio to the default flags measured in the same run. A flag
set that fails to compile a step is recorded with its error: some library fusions refuse layouts
that XLA produces. None of these is a wm_jax default: see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks import harness, peak

FLAG_SETS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "xnn dot+conv": "--xla_cpu_experimental_xnn_fusion_type=individual_dot,individual_convolution",
    "ynn dot+conv": "--xla_cpu_experimental_ynn_fusion_type=individual_dot,individual_convolution",
}


def measure(tiny: bool) -> dict[str, Any]:
    """This process's rates under its XLA_FLAGS (run in a fresh process per flag set)."""
    from benchmarks import dream_speed, training_speed
    from wm_jax.core import runtime

    runtime.tune_malloc()
    import jax

    settings = harness.TINY if tiny else harness.QUICK
    settings = dataclasses.replace(
        settings, mdn_seq_len={"car_racing": 4 if tiny else 100, "doom": 4 if tiny else 100}
    )
    batch, steps = (2, 3) if tiny else (1024, 20)
    out: dict[str, Any] = {}
    try:
        out["vae_images_per_s"] = training_speed.bench_vae(settings, None)["wm_jax"]["images_per_s"]
    except Exception as error:  # a library fusion that refuses a layout: recorded
        out["vae_error"] = f"{type(error).__name__}: {error}"[:300]
    try:
        for game, record in training_speed.bench_mdn(settings, None).items():
            out[f"mdn_{game}_timesteps_per_s"] = record["wm_jax"]["timesteps_per_s"]
    except Exception as error:
        out["mdn_error"] = f"{type(error).__name__}: {error}"[:300]
    game = dream_speed.DREAM_GAMES["doom"]
    try:
        model, policy, initial_mu = dream_speed.dream_weights(game)
        args = (jax.random.key(1), model, policy, initial_mu)
        fn = dream_speed.jax_dream_fn(game, batch, steps, "dream")
        compiled, _ = harness.compile_jit(fn, *args)
        timing = harness.time_calls(
            lambda: harness.block(compiled(*args)), settings.repeats, settings.min_time_s
        )
        out["dream_doom_steps_per_s"] = batch * steps / timing["median_s"]
    except Exception as error:
        out["dream_error"] = f"{type(error).__name__}: {error}"[:300]
    return out


def run(tiny: bool = False, flag_sets: dict[str, str] = FLAG_SETS, rounds: int = 3) -> dict:
    """Every flag set in its own process, `rounds` times in alternating order (a, b, ..., a, b,
    ...: a change of the machine's load moves every set); the median of each rate and its
    ratio to "default"."""
    samples: dict[str, list[dict[str, Any]]] = {name: [] for name in flag_sets}
    errors: dict[str, str] = {}
    for _ in range(rounds):
        for name, flags in flag_sets.items():
            args = ("--tiny",) if tiny else ()
            try:
                env = {"XLA_FLAGS": flags}
                sample = harness.run_worker("benchmarks.xla_flags", env, args, timeout=900)
            except subprocess.CalledProcessError as error:  # e.g. a flag XLA refuses
                errors[name] = error.stderr[-300:]
                continue
            samples[name].append(sample)
            print(f"  {name}: {samples[name][-1]}", file=sys.stderr, flush=True)
    rows: dict[str, Any] = {}
    for name, flags in flag_sets.items():
        row: dict[str, Any] = {"flags": flags, "samples": samples[name]}
        if name in errors:
            row["error"] = errors[name]
        keys = sorted({key for sample in samples[name] for key in sample})
        for key in keys:
            values = [sample[key] for sample in samples[name] if key in sample]
            row[key] = statistics.median(values) if key.endswith("_per_s") else values[-1]
        rows[name] = row
    base = rows.get("default", {})
    for row in rows.values():
        for key, value in list(row.items()):
            if key.endswith("_per_s") and base.get(key):
                row[key.replace("_per_s", "_vs_default")] = value / base[key]
    return {"machine": peak.machine_info(), "rounds": rounds, "rows": rows}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.xla_flags")
    parser.add_argument("--tiny", action="store_true", help="smallest sizes (the test)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=None, help="write the record (JSON) here")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (default 3)")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.tiny)))
        return {}
    record = run(args.tiny, rounds=args.rounds)
    if args.out is not None:
        from wm_jax.core import checkpoint

        checkpoint.atomic_write_json(args.out, record)
    for name, row in record["rows"].items():
        ratios = {k: round(v, 2) for k, v in row.items() if k.endswith("_vs_default")}
        errors = [k for k in row if k.endswith("error")]
        print(f"{name:14s} {ratios} {'errors: ' + ', '.join(errors) if errors else ''}")
    return record


if __name__ == "__main__":
    main()
