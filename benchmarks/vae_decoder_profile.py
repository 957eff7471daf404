"""Images/s of one V train step (batch 100) with the fast stride-1 layers vs nn.Conv(Transpose).

    .venv/bin/python benchmarks/vae_decoder_profile.py [--batch 100] [--repeats 7]

Each variant is compiled, warmed up for two steps, then timed step by step (blocking on the
result); the median of ``--repeats`` steps is reported, with the process CPU time per step (all
threads) as a steadier figure on a shared machine. Variants ``encoder/decoder``:
``flax/flax`` is plain nn.Conv + nn.ConvTranspose, ``fast/fast`` is what `wm_jax.vae` uses.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wm_jax import vae


def make_step(config: vae.VAEConfig, encoder_impl: str, decoder_impl: str, learning_rate: float):
    """The same update as `vae.make_train`, with the encoder and decoder impls chosen apart."""
    optimizer = optax.adam(learning_rate)
    encoder = vae.Encoder(config.latent_dim, encoder_impl)
    decoder = vae.Decoder(decoder_impl)

    def loss(params, key, x):
        mu, logvar = encoder.apply({"params": params["encoder"]}, x)
        z = vae.sample_latent(key, mu, logvar)
        x_hat = decoder.apply({"params": params["decoder"]}, z)
        recon = jnp.sum(jnp.square(x - x_hat), axis=(1, 2, 3))
        kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)
        return jnp.mean(recon + jnp.maximum(kl, config.kl_tolerance * config.latent_dim))

    def step(key, params, opt_state, frames):
        value, grads = jax.value_and_grad(loss)(params, key, frames.astype(jnp.float32) / 255.0)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, value

    return optimizer, jax.jit(step, donate_argnums=(1, 2))


def time_variant(encoder_impl, decoder_impl, batch, repeats, config, frames):
    optimizer, step = make_step(config, encoder_impl, decoder_impl, 1e-4)
    params = vae.init_params(jax.random.key(0), config)
    opt_state = optimizer.init(params)
    key = jax.random.key(1)
    start = time.perf_counter()
    params, opt_state, loss = step(key, params, opt_state, frames)
    loss.block_until_ready()
    compile_s = time.perf_counter() - start
    for _ in range(2):  # warm-up
        params, opt_state, loss = step(key, params, opt_state, frames)
    loss.block_until_ready()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        params, opt_state, loss = step(key, params, opt_state, frames)
        loss.block_until_ready()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median = statistics.median(times)
    print(
        f"{encoder_impl:>4}/{decoder_impl:<4}  {batch / median:7.1f} images/s  "
        f"(median step {median * 1e3:6.0f} ms, min {min(times) * 1e3:6.0f} ms, "
        f"median CPU time {statistics.median(cpu_times) * 1e3:6.0f} ms; "
        f"first call incl. compile {compile_s:4.1f} s)",
        flush=True,
    )
    return batch / median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument(
        "--variants", default="flax/flax,flax/fast,fast/flax,fast/fast", help="encoder/decoder,..."
    )
    args = parser.parse_args()
    print(jax.devices(), f"jax {jax.__version__}, batch {args.batch}, repeats {args.repeats}")
    config = vae.VAEConfig(args.latent_dim)
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.integers(0, 256, (args.batch, 64, 64, 3), dtype=np.uint8))
    for variant in args.variants.split(","):
        encoder_impl, decoder_impl = variant.split("/")
        time_variant(encoder_impl, decoder_impl, args.batch, args.repeats, config, frames)


if __name__ == "__main__":
    main()
