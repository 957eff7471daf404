"""Which XLA:CPU library should run V's programs: `kernels.vae_library` "eigen" against "xla".

    .venv/bin/python -m benchmarks.vae_library [--quick] [--tiny] [--out-dir DIR]

Since jax 0.10, XLA:CPU hands most convolutions and dots to YNNPACK fusions; "eigen" compiles V's
programs with them off (`wm_jax.core.kernels.vae_compiler_options`). Timed alternately in one
process, the library's own programs built under each choice: V's train step
(`vae_train.make_train`, Doom's z 64, batch 100) and the encoding of a store's frames (the
program `data.encode.encode_store` compiles, batch 1,024). M's train step (Doom and CarRacing,
100 × 100) is timed with and without the same compiler option applied by hand, to show why M's
programs keep XLA's default. Writes `benchmarks/results/<machine>-<date>-vae-library.json` and
prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness, peak
from benchmarks.training_speed import MDN_GAMES, sequence_batch
from wm_jax.core import kernels
from wm_jax.core.checkpoint import atomic_write_json
from wm_jax.models import vae
from wm_jax.train import mdn_rnn_train, vae_train

CHOICES = ("eigen", "xla")


def _vae_calls(batch: int, encode_batch: int) -> dict[str, Callable[[], Any]]:
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8))
    to_encode = jnp.asarray(rng.integers(0, 256, (encode_batch, 64, 64, 3), dtype=np.uint8))
    key = jax.random.key(1)
    calls = {}
    for choice in CHOICES:
        with kernels.using(kernels.KernelsConfig(vae_library=choice)):
            init_state, train_step = vae_train.make_train(vae.DOOM, vae_train.VAETrainConfig(batch))
            state = {"s": init_state(jax.random.key(0))}
            params = jax.tree.map(jnp.copy, state["s"].params)  # the step donates its state
            step = train_step.lower(key, state["s"], frames).compile()
            # The program encode_store compiles (wm_jax.data.encode).
            encode = kernels.jit_vae(lambda p, f: vae.encode(p, vae.frames_to_float(f)))
            encode = encode.lower(params, to_encode).compile()

        def train(step=step, state=state):
            state["s"], metrics = step(key, state["s"], frames)
            harness.block(metrics)

        calls[f"V train step, {choice}"] = train
        calls[f"V encode, {choice}"] = lambda e=encode, p=params: harness.block(e(p, to_encode))
    return calls


def _mdn_calls(batch: int, seq_len: int) -> dict[str, Callable[[], Any]]:
    calls = {}
    for game, config in MDN_GAMES.items():
        train_config = mdn_rnn_train.MDNTrainConfig(batch_size=batch, seq_len=seq_len)
        init_state, train_step = mdn_rnn_train.make_train(config, train_config)
        data = jax.tree.map(jnp.asarray, sequence_batch(config, batch, seq_len))
        key = jax.random.key(1)
        with kernels.using(kernels.KernelsConfig(vae_library="eigen")):
            eigen = kernels.vae_compiler_options()
        for choice, options in (("eigen", eigen), ("xla", None)):
            state = {"s": init_state(jax.random.key(0))}
            jitted = jax.jit(train_step.__wrapped__, compiler_options=options)
            step = jitted.lower(key, state["s"], data).compile()

            def train(step=step, state=state, data=data, key=key):
                state["s"], metrics = step(key, state["s"], data)
                harness.block(metrics)

            calls[f"M train step {game}, {choice}"] = train
    return calls


def measure(settings: harness.Settings) -> dict[str, Any]:
    tiny = settings.name == "tiny"
    batch, encode_batch, seq_len = (2, 4, 4) if tiny else (100, 1024, 100)
    calls = _vae_calls(batch, encode_batch) | _mdn_calls(batch, seq_len)
    timed = harness.time_interleaved(calls, settings.repeats, settings.min_time_s)
    out = {"sizes": {"batch": batch, "encode_batch": encode_batch, "mdn_seq_len": seq_len}}
    out["timings"] = timed
    with kernels.using(kernels.KernelsConfig(vae_library="eigen")):
        out["eigen_options"] = kernels.vae_compiler_options()
    out["auto"] = kernels.active().vae_library
    return out


def markdown(result: dict[str, Any]) -> str:
    timed = result["timings"]
    rows = sorted({name.rsplit(", ", 1)[0] for name in timed})
    lines = ["| program | eigen ms | xla ms | xla / eigen |", "|---|---|---|---|"]
    for row in rows:
        eigen, xla = (timed[f"{row}, {c}"]["median_s"] * 1e3 for c in CHOICES)
        lines.append(f"| {row} | {eigen:.1f} | {xla:.1f} | {xla / eigen:.2f}× |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="the harness check of the tests")
    parser.add_argument("--out-dir", default=str(harness.RESULTS_DIR))
    args = parser.parse_args(argv)
    settings = harness.TINY if args.tiny else harness.QUICK if args.quick else harness.FULL
    result = measure(settings)
    machine = peak.machine_info()
    name = f"{peak.machine_slug(machine)}-{datetime.date.today()}-vae-library"
    if args.tiny or args.quick:
        name += "-tiny" if args.tiny else "-quick"
    record = {"machine": machine, "settings": dataclasses.asdict(settings)} | result
    atomic_write_json(f"{args.out_dir}/{name}.json", record)
    print(markdown(result))
    print(json.dumps({"written": f"{args.out_dir}/{name}.json"}))


if __name__ == "__main__":
    main()
