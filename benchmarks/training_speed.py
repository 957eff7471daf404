"""V and M training speed: one Adam step of each on random data, wm_jax against eager torch."""

from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.harness import Settings, Torch, block, progress, time_calls, time_torch
from wm_jax.models import mdn_rnn, vae
from wm_jax.train import mdn_rnn_train, vae_train

# M training is the paper's M (CarRacing without a reward head: 422,368 parameters).
MDN_GAMES = {"car_racing": mdn_rnn.CAR_RACING, "doom": mdn_rnn.DOOM}


def bench_vae(settings: Settings, tch: Torch | None) -> dict[str, Any]:
    """V training images/s (Adam, batch `vae_batch`), wm_jax vs eager torch."""
    batch = settings.vae_batch
    frames = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    init_state, train_step = vae_train.make_train(
        vae.CAR_RACING, vae_train.VAETrainConfig(batch_size=batch)
    )
    holder = {"state": jax.jit(init_state)(jax.random.key(0))}
    frames_jax = jnp.asarray(frames)
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = train_step.lower(key, holder["state"], frames_jax).compile()
    compile_s = time.perf_counter() - start

    def call():
        holder["state"], metrics = compiled(key, holder["state"], frames_jax)
        block(metrics)

    timing = time_calls(call, settings.repeats, settings.min_time_s)
    record: dict[str, Any] = {"batch": batch, "latent_dim": 32}
    record["wm_jax"] = {
        **timing,
        "compile_s": compile_s,
        "images_per_s": batch / timing["median_s"],
    }
    progress("vae wm_jax", record["wm_jax"])
    if tch is not None:
        tch.torch.manual_seed(0)
        step = tch.ref.make_vae_train_step(tch.ref.ConvVAE(32))
        frames_torch = tch.tensor(frames)

        def torch_call():
            step(frames_torch)
            tch.sync()

        timing = time_torch(tch, torch_call, settings)
        record["torch_eager"] = {**timing, "images_per_s": batch / timing["median_s"]}
        record["ratio_vs_torch"] = (
            record["wm_jax"]["images_per_s"] / record["torch_eager"]["images_per_s"]
        )
        progress("vae torch", record["torch_eager"])
    return record


def sequence_batch(
    config: mdn_rnn.MDNRNNConfig, batch: int, seq_len: int
) -> mdn_rnn_train.SequenceBatch:
    rng = np.random.default_rng(0)
    restarts = np.zeros((batch, seq_len), bool)
    if config.use_restart:  # a few episode boundaries inside each sequence, as in Doom data
        restarts[:, 0] = True
        restarts[rng.random((batch, seq_len)) < 1 / 200] = True
    dones = np.zeros_like(restarts)
    dones[:, :-1] = restarts[:, 1:]
    return mdn_rnn_train.SequenceBatch(
        mu=rng.standard_normal((batch, seq_len + 1, config.latent_dim), dtype=np.float32),
        logvar=np.full((batch, seq_len + 1, config.latent_dim), -2.0, np.float32),
        actions=rng.uniform(-1, 1, (batch, seq_len, config.action_dim)).astype(np.float32),
        restarts=restarts,
        dones=dones,
        rewards=np.zeros((batch, seq_len), np.float32),
        mask=~dones,
    )


def bench_mdn(settings: Settings, tch: Torch | None) -> dict[str, Any]:
    """M training timesteps/s (batch × sequence length per step), wm_jax vs eager torch."""
    out: dict[str, Any] = {}
    for name, config in MDN_GAMES.items():
        batch, seq_len = settings.mdn_batch, settings.mdn_seq_len[name]
        train_config = mdn_rnn_train.MDNTrainConfig(batch_size=batch, seq_len=seq_len)
        init_state, train_step = mdn_rnn_train.make_train(config, train_config)
        data = sequence_batch(config, batch, seq_len)
        data_jax = jax.tree.map(jnp.asarray, data)
        holder = {"state": init_state(jax.random.key(0))}
        key = jax.random.key(1)
        start = time.perf_counter()
        compiled = train_step.lower(key, holder["state"], data_jax).compile()
        compile_s = time.perf_counter() - start

        def call(compiled=compiled, holder=holder, data_jax=data_jax, key=key):
            holder["state"], metrics = compiled(key, holder["state"], data_jax)
            block(metrics)

        timing = time_calls(call, settings.repeats, settings.min_time_s)
        timesteps = batch * seq_len
        record: dict[str, Any] = {"batch": batch, "seq_len": seq_len}
        record["paper_seq_len"] = 999 if name == "car_racing" else 500
        record["wm_jax"] = {
            **timing,
            "compile_s": compile_s,
            "timesteps_per_s": timesteps / timing["median_s"],
        }
        progress(f"mdn {name} wm_jax", record["wm_jax"])
        if tch is not None:
            tch.torch.manual_seed(0)
            step = tch.ref.make_mdn_train_step(tch.ref.MDNRNN.from_config(config))
            tensors = [tch.tensor(x) for x in data[:5]]  # mu, logvar, actions, restarts, dones

            def torch_call(step=step, tensors=tensors):
                step(*tensors)
                tch.sync()

            timing = time_torch(tch, torch_call, settings)
            record["torch_eager"] = {**timing, "timesteps_per_s": timesteps / timing["median_s"]}
            record["torch_eager"]["lstm"] = (
                "python loop over time (state reset at restarts)"
                if config.use_restart
                else "nn.LSTM (fused C++ loop)"
            )
            record["ratio_vs_torch"] = (
                record["wm_jax"]["timesteps_per_s"] / record["torch_eager"]["timesteps_per_s"]
            )
            progress(f"mdn {name} torch", record["torch_eager"])
        out[name] = record
    return out
