"""Images/s of V's train step (batch 100): fast stride-2 layers vs nn.Conv / nn.ConvTranspose.

    .venv/bin/python benchmarks/vae_decoder_profile.py [--batch 100] [--repeats 7] [--ablation]

``fast`` and ``flax`` time `wm_jax.models.vae_train.make_train`'s own jitted ``train_step`` with
``impl="fast"`` (the default: `conv_stride2` / `conv_transpose_stride2`) and ``impl="flax"``
(plain ``nn.Conv`` + ``nn.ConvTranspose``). ``--ablation`` adds the mixed variants (fast encoder
with flax decoder and the reverse) through a copy of the same update. Each variant is compiled,
warmed up for two steps, then timed step by step, blocking on the result; the median of
``--repeats`` steps is reported, with the process CPU time per step (all threads), a steadier
figure on a shared machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from wm_jax.models import vae
from wm_jax.train import vae_train


def mixed_step(config: vae.VAEConfig, learning_rate: float, encoder_impl: str, decoder_impl: str):
    """`vae_train.make_train`'s update with the encoder and decoder impls chosen apart."""
    optimizer = optax.adam(learning_rate)
    encoder, decoder = vae.Encoder(config.latent_dim, encoder_impl), vae.Decoder(decoder_impl)

    def loss(params, key, x):
        mu, logvar = encoder.apply({"params": params["encoder"]}, x)
        x_hat = decoder.apply({"params": params["decoder"]}, vae.sample_latent(key, mu, logvar))
        recon = jnp.sum(jnp.square(x - x_hat), axis=(1, 2, 3))
        kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)
        return jnp.mean(recon + jnp.maximum(kl, config.kl_tolerance * config.latent_dim))

    def train_step(key, state, frames):
        value, grads = jax.value_and_grad(loss)(state.params, key, vae.frames_to_float(frames))
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return vae_train.VAETrainState(params, opt_state, state.step + 1), {"loss": value}

    return jax.jit(train_step, donate_argnums=1)


def time_step(label: str, train_step, state, frames, repeats: int) -> tuple[float, float]:
    """Returns (images/s, the loss of the first step)."""
    key = jax.random.key(1)
    start = time.perf_counter()
    state, metrics = train_step(key, state, frames)
    first_loss = float(metrics["loss"])
    first_s = time.perf_counter() - start
    for _ in range(2):  # warm-up
        state, metrics = train_step(key, state, frames)
    metrics["loss"].block_until_ready()
    times, cpu_times = [], []
    for _ in range(repeats):
        start, cpu_start = time.perf_counter(), time.process_time()
        state, metrics = train_step(key, state, frames)
        metrics["loss"].block_until_ready()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    median, batch = statistics.median(times), frames.shape[0]
    print(
        f"{label:<10} {batch / median:6.1f} images/s  (step median {median * 1e3:5.0f} ms, "
        f"min {min(times) * 1e3:5.0f} ms; CPU time median {statistics.median(cpu_times) * 1e3:5.0f}"
        f" ms; first call incl. compile {first_s:4.1f} s)",
        flush=True,
    )
    return batch / median, first_loss


def gradient_difference(config: vae.VAEConfig, frames: jax.Array) -> float:
    """Largest relative difference, over parameter arrays, of the loss gradients of both impls."""
    params = vae.init_params(jax.random.key(0), config)
    x = vae.frames_to_float(frames)

    def grad(impl):
        def loss(params):
            return vae.loss_fn(jax.random.key(2), params, x, config.kl_tolerance, impl=impl)[0]

        return jax.jit(jax.grad(loss))(params)

    diffs = jax.tree_util.tree_map(
        lambda a, b: float(jnp.abs(a - b).max() / jnp.abs(b).max()), grad("fast"), grad("flax")
    )
    return max(jax.tree_util.tree_leaves(diffs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--latent-dim", type=int, default=32)
    parser.add_argument("--ablation", action="store_true", help="also time mixed impls")
    args = parser.parse_args()
    print(f"{jax.devices()} jax {jax.__version__}, batch {args.batch}, repeats {args.repeats}")
    config = vae.VAEConfig(args.latent_dim)
    train_config = vae_train.VAETrainConfig(batch_size=args.batch)
    rng = np.random.default_rng(0)
    frames = jnp.asarray(rng.integers(0, 256, (args.batch, 64, 64, 3), dtype=np.uint8))
    results = {}
    for impl in ("flax", "fast"):
        init_state, train_step = vae_train.make_train(config, train_config, impl=impl)
        state = init_state(jax.random.key(0))
        results[impl] = time_step(impl, train_step, state, frames, args.repeats)
    (fast, fast_loss), (flax, flax_loss) = results["fast"], results["flax"]
    print(f"speed-up fast / flax: {fast / flax:.2f}x")
    # Same init, key and frames: the forward passes agree; the gradients are compared next.
    print(f"first-step loss fast {fast_loss:.4f}, flax {flax_loss:.4f}")
    difference = gradient_difference(config, frames[:8])
    print(f"loss gradients fast vs flax (batch 8): max relative difference {difference:.1e}")
    if args.ablation:
        init_state, _ = vae_train.make_train(config, train_config)
        for encoder_impl, decoder_impl in [("fast", "flax"), ("flax", "fast")]:
            step = mixed_step(config, train_config.learning_rate, encoder_impl, decoder_impl)
            label = f"{encoder_impl}/{decoder_impl}"
            time_step(label, step, init_state(jax.random.key(0)), frames, args.repeats)


if __name__ == "__main__":
    main()
