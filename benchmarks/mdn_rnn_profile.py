"""Training throughput of M (MDN-RNN): timesteps/s of one jitted `train_step`.

Random batches of the paper's sizes (CarRacing 100 × 999, Doom 100 × 500); compile and one warm-up
step are not timed; the figure is the median of `--repeats` steps.

    .venv/bin/python benchmarks/mdn_rnn_profile.py                      # both games, paper sizes
    .venv/bin/python benchmarks/mdn_rnn_profile.py --games car_racing --seq-len 200
"""

import argparse
import os
import time

import jax
import numpy as np

from wm_jax.models import mdn_rnn
from wm_jax.train import mdn_rnn_train

GAMES = {
    "car_racing": (mdn_rnn.CAR_RACING, mdn_rnn_train.MDNTrainConfig()),
    "doom": (mdn_rnn.DOOM, mdn_rnn_train.DOOM_TRAIN),
}


def random_batch(seed: int, config: mdn_rnn.MDNRNNConfig, batch_size: int, seq_len: int):
    rng = np.random.default_rng(seed)
    flags = (batch_size, seq_len)
    latents = (batch_size, seq_len + 1, config.latent_dim)
    batch = mdn_rnn_train.SequenceBatch(
        mu=rng.normal(size=latents).astype(np.float32),
        logvar=np.full(latents, -3.0, np.float32),
        actions=rng.uniform(-1, 1, (*flags, config.action_dim)).astype(np.float32),
        restarts=rng.random(flags) < 1 / 500,
        dones=rng.random(flags) < 1 / 500,
        rewards=rng.normal(size=flags).astype(np.float32),
        mask=np.ones(flags, bool),
    )
    return jax.device_put(batch)


def measure(config, train_config, repeats: int) -> dict:
    key = jax.random.key(0)
    init_state, train_step = mdn_rnn_train.make_train(config, train_config)
    state = init_state(key)
    batch = random_batch(0, config, train_config.batch_size, train_config.seq_len)
    start = time.perf_counter()
    state, metrics = train_step(jax.random.fold_in(key, 0), state, batch)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    state, metrics = train_step(jax.random.fold_in(key, 1), state, batch)  # warm-up
    jax.block_until_ready(metrics)
    seconds = []
    for i in range(repeats):
        start = time.perf_counter()
        state, metrics = train_step(jax.random.fold_in(key, 2 + i), state, batch)
        jax.block_until_ready(metrics)
        seconds.append(time.perf_counter() - start)
    bad = [name for name, value in metrics.items() if not np.isfinite(np.asarray(value)).all()]
    if bad:
        raise FloatingPointError(f"M's benchmark step diverged: {bad[0]} is not finite")
    step_s = float(np.median(seconds))
    timesteps = train_config.batch_size * train_config.seq_len
    return {
        "compile_s": compile_s,
        "step_s": step_s,
        "steps_s": seconds,
        "timesteps_per_s": timesteps / step_s,
        "hours_for_num_steps": step_s * train_config.num_steps / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--games", nargs="+", choices=sorted(GAMES), default=sorted(GAMES))
    parser.add_argument("--batch-size", type=int, default=None, help="default: the paper's 100")
    parser.add_argument("--seq-len", type=int, default=None, help="default: 999 / 500")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"device {jax.devices()[0]}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    for game in args.games:
        config, train_config = GAMES[game]
        overrides = {"batch_size": args.batch_size, "seq_len": args.seq_len}
        train_config = train_config.__class__(
            **{**vars(train_config), **{k: v for k, v in overrides.items() if v is not None}}
        )
        result = measure(config, train_config, args.repeats)
        steps = ", ".join(f"{s:.2f}" for s in result["steps_s"])
        print(
            f"{game}: batch {train_config.batch_size} × seq {train_config.seq_len}: "
            f"compile {result['compile_s']:.1f} s, step {result['step_s']:.2f} s "
            f"(median of {steps}), {result['timesteps_per_s']:,.0f} timesteps/s, "
            f"{result['hours_for_num_steps']:.1f} h for {train_config.num_steps} steps",
            flush=True,
        )


if __name__ == "__main__":
    main()
