"""Where a training step's time goes: V's and M's steps cut into cumulative parts, wm_jax and
eager torch side by side, timed alternately in one process (issue 17: profile before changing).

    .venv/bin/python -m benchmarks.step_breakdown [--quick] [--only vae,mdn]

Each row times a prefix of the step: forward (V: encode, then encode + decode + loss; M: the
LSTM over the sequence, then the LSTM + head + loss), then forward + backward, then the whole
step with Adam. A part's own time is the difference between consecutive rows. The same random
batch as `benchmarks.run` (V: Doom's z 64, batch 100; M: Doom 100 × 500, CarRacing 100 × 999;
`--quick`: 100 steps) is used for both sides. Writes `benchmarks/results/<machine>-<date>-
breakdown.json` and prints a markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
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
from wm_jax.models import mdn_rnn, vae
from wm_jax.train import mdn_rnn_train, vae_train


def _jit_call(fn: Callable, *args, options: dict[str, str] | None = None) -> Callable[[], Any]:
    compiled, _ = harness.compile_jit(fn, *args, compiler_options=options)
    return lambda: harness.block(compiled(*args))


def vae_parts(batch: int, tch: harness.Torch | None) -> dict[str, Callable[[], Any]]:
    """Cumulative parts of V's train step (Doom's z 64) as timed calls, both sides."""
    config = vae.DOOM
    frames = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    x = vae.frames_to_float(frames)
    key = jax.random.key(1)
    init_state, train_step = vae_train.make_train(config, vae_train.VAETrainConfig(batch))
    state = {"s": init_state(jax.random.key(0))}
    params = jax.tree.map(jnp.copy, state["s"].params)  # train_step donates the state
    loss = functools.partial(vae.loss_fn, kl_tolerance=config.kl_tolerance)
    compiled_step = train_step.lower(key, state["s"], jnp.asarray(frames)).compile()

    def step():
        state["s"], metrics = compiled_step(key, state["s"], jnp.asarray(frames))
        harness.block(metrics)

    options = kernels.vae_compiler_options()  # as V's own programs compile (kernels.jit_vae)
    calls = {
        "jax 1 encode": _jit_call(vae.encode, params, x, options=options),
        "jax 2 forward + loss": _jit_call(
            lambda p, x: loss(key, p, x)[0], params, x, options=options
        ),
        "jax 3 + backward": _jit_call(
            jax.grad(lambda p, x: loss(key, p, x)[0]), params, x, options=options
        ),
        "jax 4 + Adam (train_step)": step,
    }
    if tch is not None:
        torch = tch.torch
        model = tch.ref.ConvVAE(config.latent_dim)
        frames_t = tch.tensor(frames)
        train = tch.ref.make_vae_train_step(model)

        def x_t():
            return frames_t.permute(0, 3, 1, 2).float().div_(255.0)

        def forward_loss():
            x = x_t()
            x_hat, mu, logvar = model(x)
            return tch.ref.vae_loss(x, x_hat, mu, logvar)

        def no_grad(fn):
            def call():
                with torch.no_grad():
                    fn()

            return call

        def backward():
            model.zero_grad(set_to_none=True)
            forward_loss().backward()

        calls |= {
            "torch 1 encode": no_grad(lambda: model.encode(x_t())),
            "torch 2 forward + loss": no_grad(forward_loss),
            "torch 3 + backward": backward,
            "torch 4 + Adam (train_step)": lambda: train(frames_t),
        }
    return calls


def mdn_parts(
    name: str, batch: int, seq_len: int, tch: harness.Torch | None
) -> dict[str, Callable[[], Any]]:
    """Cumulative parts of M's train step for one game, both sides."""
    config = MDN_GAMES[name]
    train_config = mdn_rnn_train.MDNTrainConfig(batch_size=batch, seq_len=seq_len)
    data = jax.tree.map(jnp.asarray, sequence_batch(config, batch, seq_len))
    key = jax.random.key(1)
    init_state, train_step = mdn_rnn_train.make_train(config, train_config)
    state = {"s": init_state(jax.random.key(0))}
    params = jax.tree.map(jnp.copy, state["s"].params)  # train_step donates the state

    def lstm(p, d):
        z = d.mu[:, :-1]
        return mdn_rnn.forward_sequence(config, p, z, d.actions, d.restarts).mu.sum()

    def loss(p, d):
        return mdn_rnn_train.loss_fn(key, config, p, d)[0]

    compiled_step = train_step.lower(key, state["s"], data).compile()

    def step():
        state["s"], metrics = compiled_step(key, state["s"], data)
        harness.block(metrics)

    calls = {
        f"jax 1 LSTM + head ({name})": _jit_call(lstm, params, data),
        f"jax 2 + loss ({name})": _jit_call(loss, params, data),
        f"jax 3 + backward ({name})": _jit_call(jax.grad(loss), params, data),
        f"jax 4 + Adam ({name} train_step)": step,
    }
    if tch is not None:
        torch = tch.torch
        model = tch.ref.MDNRNN.from_config(config)
        tensors = [tch.tensor(np.asarray(x)) for x in data[:5]]
        mu, _, actions, restarts, _ = tensors
        train = tch.ref.make_mdn_train_step(model)

        def forward():
            with torch.no_grad():
                model.forward_sequence(
                    mu[:, :-1], actions, restarts if config.use_restart else None
                )

        calls |= {
            f"torch 1 LSTM + head ({name})": forward,
            f"torch 4 + Adam ({name} train_step)": lambda: train(*tensors),
        }
    return calls


def breakdown(settings: harness.Settings, only: set[str], tch: harness.Torch | None) -> dict:
    sections: dict[str, dict[str, Callable[[], Any]]] = {}
    if "vae" in only:
        sections["vae"] = vae_parts(settings.vae_batch, tch)
    if "mdn" in only:
        for name in MDN_GAMES:
            seq_len = settings.mdn_seq_len[name]
            sections[f"mdn_{name}"] = mdn_parts(name, settings.mdn_batch, seq_len, tch)
    out = {}
    for section, calls in sections.items():
        timed = harness.time_interleaved(calls, settings.repeats, settings.min_time_s)
        out[section] = {name: t["median_s"] for name, t in timed.items()}
        print(f"[{section}]", {k: f"{v * 1e3:.1f} ms" for k, v in out[section].items()}, flush=True)
    return out


def markdown(result: dict[str, dict[str, float]]) -> str:
    lines = ["| step part (cumulative) | wm_jax ms | its own ms | torch ms | its own ms |"]
    lines.append("|---|---|---|---|---|")
    for section, rows in result.items():
        parts = sorted({name.split(" ", 1)[1] for name in rows})
        previous = {"jax": 0.0, "torch": 0.0}
        for part in parts:
            cells = []
            for side in ("jax", "torch"):
                value = rows.get(f"{side} {part}")
                if value is None:
                    cells += ["—", "—"]
                    continue
                cells += [f"{value * 1e3:.0f}", f"{(value - previous[side]) * 1e3:.0f}"]
                previous[side] = value
            lines.append(f"| {section}: {part[2:]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="the harness check of the tests")
    parser.add_argument("--only", default="vae,mdn")
    parser.add_argument("--out-dir", default=str(harness.RESULTS_DIR))
    args = parser.parse_args(argv)
    settings = harness.TINY if args.tiny else harness.QUICK if args.quick else harness.FULL
    tch = harness.load_torch()
    result = breakdown(settings, set(args.only.split(",")), tch)
    machine = peak.machine_info()
    name = f"{peak.machine_slug(machine)}-{datetime.date.today()}-breakdown"
    if args.tiny or args.quick:
        name += "-tiny" if args.tiny else "-quick"
    record = {"machine": machine, "settings": dataclasses.asdict(settings), "median_s": result}
    atomic_write_json(f"{args.out_dir}/{name}.json", record)
    print(markdown(result))
    print(json.dumps({"written": f"{args.out_dir}/{name}.json"}))


if __name__ == "__main__":
    main()
