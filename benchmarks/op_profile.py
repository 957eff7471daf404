"""Where one compiled training step spends its time, op by op: a `jax.profiler` trace of V's or
M's train step, each XLA:CPU thunk mapped to the HLO op it runs and the JAX operation it came from.

    .venv/bin/python -m benchmarks.op_profile vae [--steps 10] [--top 40] [--vae-library xla]
    .venv/bin/python -m benchmarks.op_profile mdn_doom

The step is the library's own (`vae_train.make_train`, Doom's z 64, batch 100;
`mdn_rnn_train.make_train`, 100 × 100). XLA:CPU runs independent thunks on both cores at once,
so the per-op times add up to more than the step; asynchronous thunks (Eigen's convolutions)
are timed from their launch to their "end:" event. This is how the YNNPACK convolutions of
V's step were found (benchmarks/README.md, "V's programs without YNNPACK").
"""

from __future__ import annotations

import argparse
import collections
import gzip
import json
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.training_speed import MDN_GAMES, sequence_batch
from wm_jax.core import kernels
from wm_jax.models import vae
from wm_jax.train import mdn_rnn_train, vae_train

PROGRAMS = ("vae", "mdn_doom", "mdn_car_racing")
# An HLO instruction line: its name, its shape and the JAX operation it came from.
_HLO_OP = re.compile(r'\s*(?:ROOT )?%(\S+) = (\S+) .*?op_name="([^"]+)"')


def build(program: str, batch: int, seq_len: int) -> tuple[Callable[[], Any], str]:
    """(one step of `program` as a blocking call, the compiled step's HLO text)."""
    key = jax.random.key(1)
    if program == "vae":
        init_state, train_step = vae_train.make_train(vae.DOOM, vae_train.VAETrainConfig(batch))
        rng = np.random.default_rng(0)
        data = jnp.asarray(rng.integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8))
    else:
        config = MDN_GAMES[program.removeprefix("mdn_")]
        train_config = mdn_rnn_train.MDNTrainConfig(batch_size=batch, seq_len=seq_len)
        init_state, train_step = mdn_rnn_train.make_train(config, train_config)
        data = jax.tree.map(jnp.asarray, sequence_batch(config, batch, seq_len))
    holder = {"state": init_state(jax.random.key(0))}
    compiled = train_step.lower(key, holder["state"], data).compile()

    def step() -> None:
        holder["state"], metrics = compiled(key, holder["state"], data)
        jax.block_until_ready(metrics)

    return step, compiled.as_text()


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
    """HLO instruction name -> (its shape, the JAX op_name it came from)."""
    ops = {}
    for line in hlo_text.splitlines():
        match = _HLO_OP.match(line)
        if match:
            name, shape, op_name = match.groups()
            ops[name] = (shape, re.sub(r"^jit\([^)]*\)/", "", op_name))
    return ops


def thunk_times(events: list[dict[str, Any]], ops: dict[str, Any]) -> collections.Counter:
    """Microseconds per HLO instruction summed over `events` (Chrome trace "X" events)."""
    total: collections.Counter = collections.Counter()
    launched: dict[str, float] = {}
    for event in sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"]):
        name, end = event["name"], event["ts"] + event.get("dur", 0)
        if name.startswith("end: ") and name[5:] in launched:  # an asynchronous thunk's end
            total[name[5:]] += end - launched.pop(name[5:])
        elif name in ops:
            total[name] += event.get("dur", 0)
            launched[name] = end
    return total


def profile(program: str, steps: int, batch: int, seq_len: int) -> dict[str, Any]:
    step, hlo_text = build(program, batch, seq_len)
    ops = hlo_ops(hlo_text)
    for _ in range(2):  # warm-up
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    step_s = (time.perf_counter() - start) / steps
    with tempfile.TemporaryDirectory() as trace_dir:
        jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
        for _ in range(steps):
            step()
        jax.profiler.stop_trace()
        (trace,) = Path(trace_dir).glob("**/*.trace.json.gz")
        events = json.loads(gzip.decompress(trace.read_bytes()))
    events = events["traceEvents"] if isinstance(events, dict) else events
    times = thunk_times(events, ops)
    rows = [
        {"op": name, "ms": us / steps / 1e3, "shape": ops[name][0], "from": ops[name][1]}
        for name, us in times.most_common()
    ]
    return {"program": program, "step_ms": step_s * 1e3, "steps": steps, "ops": rows}


def markdown(result: dict[str, Any], top: int) -> str:
    total = sum(row["ms"] for row in result["ops"])
    lines = [
        f"{result['program']}: {result['step_ms']:.1f} ms per step; thunks {total:.1f} ms "
        "(both cores at once)",
        "",
        "| ms | op | shape | from |",
        "|---|---|---|---|",
    ]
    for row in result["ops"][:top]:
        lines.append(f"| {row['ms']:.2f} | {row['op']} | {row['shape']} | {row['from']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("program", choices=PROGRAMS)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--seq-len", type=int, default=100)
    parser.add_argument("--vae-library", choices=kernels.CHOICES["vae_library"], default="auto")
    parser.add_argument("--out", help="also write the whole profile here (JSON)")
    args = parser.parse_args(argv)
    with kernels.using(kernels.KernelsConfig(vae_library=args.vae_library)):
        result = profile(args.program, args.steps, args.batch, args.seq_len)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(markdown(result, args.top))


if __name__ == "__main__":
    main()
