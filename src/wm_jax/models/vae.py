"""V: the convolutional VAE of World Models (Ha & Schmidhuber, 2018, Appendix).

A frame x (64, 64, 3) in [0, 1] is encoded to a diagonal Gaussian (mu, logvar), each (Z,), with
Z = 32 for CarRacing and 64 for Doom; z = mu + exp(logvar / 2) * eps is decoded back to a frame.

    encoder: conv k4 s2 ReLU 32 -> 64 -> 128 -> 256 (64 -> 31 -> 14 -> 6 -> 2, VALID), flatten 1024,
             dense mu (Z), dense logvar (Z)
    decoder: dense Z -> 1024, reshape (1, 1, 1024), deconv s2 VALID 128 k5 -> 64 k5 -> 32 k6 (ReLU)
             -> 3 k6 (sigmoid): 1 -> 5 -> 13 -> 30 -> 64

The parameters are a flax.linen pytree ``{"encoder": ..., "decoder": ...}`` laid out exactly as
``nn.Conv`` / ``nn.ConvTranspose`` / ``nn.Dense`` would lay them out (4,348,547 parameters for
Z = 32, 4,446,915 for Z = 64). XLA:CPU is slow at transposed convolutions, at the input
gradients of strided ones (both lower to lhs-dilated convolutions) and slower still at their kernel
gradients, so by default (``impl="fast"``) the stride-2 layers are `conv_stride2` and
`conv_transpose_stride2`: stride-1 convolutions (space-to-depth for the encoder, four output
phases for the decoder) with custom VJPs whose kernel gradients are matmuls. That trains about
3.5x faster on CPU (``benchmarks/vae_decoder_profile.py``). ``impl="flax"`` uses ``nn.Conv`` /
``nn.ConvTranspose`` themselves; both compute the same function on the same parameters (use it
for forward-mode autodiff, which custom VJPs do not support).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from wm_jax.models.strided_conv import Conv4Stride2, ConvTransposeStride2

Params = Any  # flax linen params pytree: {"encoder": {...}, "decoder": {...}}
Impl = Literal["fast", "flax"]

FRAME_SHAPE = (64, 64, 3)
# World Models, Appendix: encoder filters (kernel 4, stride 2) and decoder (filters, kernel).
ENCODER_FILTERS = (32, 64, 128, 256)
DECODER_LAYERS = ((128, 5), (64, 5), (32, 6), (3, 6))


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """World Models, Appendix."""

    latent_dim: int = 32  # 32 CarRacing, 64 Doom
    kl_tolerance: float = 0.5  # KL per sample clamped below at kl_tolerance * latent_dim


@dataclasses.dataclass(frozen=True)
class VAETrainConfig:
    batch_size: int = 100  # World Models, Appendix
    learning_rate: float = 1e-4  # Adam, World Models, Appendix
    num_epochs: int = 10  # paper 1, its code 10


CAR_RACING = VAEConfig(32)
DOOM = VAEConfig(64)


# ---------------------------------------------------------------------------------------------
# Model.


class Encoder(nn.Module):
    """x (B, 64, 64, 3) in [0, 1] -> (mu, logvar), each (B, Z)."""

    latent_dim: int
    impl: Impl = "fast"

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        for i, features in enumerate(ENCODER_FILTERS):
            name = f"conv{i}"
            if self.impl == "fast":
                x = Conv4Stride2(features, name=name)(x)
            else:
                x = nn.Conv(features, (4, 4), (2, 2), "VALID", name=name)(x)
            x = nn.relu(x)
        x = x.reshape(x.shape[0], -1)  # (B, 2 * 2 * 256)
        mu = nn.Dense(self.latent_dim, name="mu")(x)
        logvar = nn.Dense(self.latent_dim, name="logvar")(x)
        return mu, logvar


class Decoder(nn.Module):
    """z (B, Z) -> x (B, 64, 64, 3) in [0, 1]."""

    impl: Impl = "fast"

    @nn.compact
    def __call__(self, z: jax.Array) -> jax.Array:
        # World Models code: a linear dense layer to 4 * 256, then deconvolutions from 1x1.
        x = nn.Dense(1024, name="fc")(z).reshape(z.shape[0], 1, 1, 1024)
        for i, (features, kernel_size) in enumerate(DECODER_LAYERS):
            name = f"deconv{i}"
            if self.impl == "fast":
                x = ConvTransposeStride2(features, kernel_size, name=name)(x)
            else:
                x = nn.ConvTranspose(features, (kernel_size,) * 2, (2, 2), "VALID", name=name)(x)
            last = i == len(DECODER_LAYERS) - 1
            x = nn.sigmoid(x) if last else nn.relu(x)
        return x


def latent_dim_of(params: Params) -> int:
    """Z read from the parameter shapes."""
    return params["encoder"]["mu"]["kernel"].shape[-1]


def init_params(key: jax.Array, config: VAEConfig) -> Params:
    """Fresh parameters ``{"encoder": ..., "decoder": ...}`` (same layout for both impls)."""
    return _init_params(key, config.latent_dim)


@functools.partial(jax.jit, static_argnums=1)
def _init_params(key: jax.Array, latent_dim: int) -> Params:
    # flax's defaults (lecun_normal kernels, zero biases), but all kernels from one random draw:
    # XLA:CPU compiles each threefry draw apart (~0.5 s each, ~10 s for the 12 kernels).
    x = jax.ShapeDtypeStruct((1, *FRAME_SHAPE), jnp.float32)
    z = jax.ShapeDtypeStruct((1, latent_dim), jnp.float32)
    shapes = {
        "encoder": jax.eval_shape(Encoder(latent_dim).init, key, x)["params"],
        "decoder": jax.eval_shape(Decoder().init, key, z)["params"],
    }
    leaves, treedef = jax.tree_util.tree_flatten(shapes)
    num_draws = sum(leaf.size for leaf in leaves if leaf.ndim > 1)
    draws = jax.random.truncated_normal(key, -2.0, 2.0, (num_draws,))
    params, offset = [], 0
    for leaf in leaves:
        if leaf.ndim == 1:  # bias
            params.append(jnp.zeros(leaf.shape, leaf.dtype))
            continue
        # lecun_normal: variance_scaling(1, "fan_in", "truncated_normal"), fan_in = prod(shape[:-1])
        stddev = math.sqrt(1.0 / math.prod(leaf.shape[:-1])) / 0.87962566103423978
        params.append(draws[offset : offset + leaf.size].reshape(leaf.shape) * stddev)
        offset += leaf.size
    return jax.tree_util.tree_unflatten(treedef, params)


def num_params(params: Params) -> int:
    """Number of scalars in a parameter pytree."""
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def encode(params: Params, x: jax.Array, *, impl: Impl = "fast") -> tuple[jax.Array, jax.Array]:
    """x (..., 64, 64, 3) float32 in [0, 1] -> (mu, logvar), each (..., Z)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):  # e.g. raw uint8 frames
        raise ValueError(
            f"encode expects float frames in [0, 1]; got dtype {x.dtype} (see frames_to_float)"
        )
    batch_shape = x.shape[:-3]
    flat = jnp.reshape(x, (-1, *x.shape[-3:]))
    encoder = Encoder(latent_dim_of(params), impl)
    mu, logvar = encoder.apply({"params": params["encoder"]}, flat)
    return mu.reshape(*batch_shape, -1), logvar.reshape(*batch_shape, -1)


def decode(params: Params, z: jax.Array, *, impl: Impl = "fast") -> jax.Array:
    """z (..., Z) -> x (..., 64, 64, 3) in [0, 1]."""
    batch_shape = z.shape[:-1]
    x = Decoder(impl).apply({"params": params["decoder"]}, jnp.reshape(z, (-1, z.shape[-1])))
    return x.reshape(*batch_shape, *FRAME_SHAPE)


def sample_latent(key: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Reparameterised z = mu + exp(logvar / 2) * eps, shapes (..., Z)."""
    return mu + jnp.exp(logvar / 2) * jax.random.normal(key, mu.shape, mu.dtype)


# ---------------------------------------------------------------------------------------------
# Input validation.


def _shape_and_dtype(frames: Any) -> tuple[tuple[int, ...], np.dtype]:
    if hasattr(frames, "shape") and hasattr(frames, "dtype"):  # numpy, jax arrays and tracers
        return tuple(frames.shape), np.dtype(frames.dtype)
    frames = np.asarray(frames)
    return frames.shape, frames.dtype


def frames_to_float(frames: Any) -> jax.Array:
    """uint8 frames (..., 64, 64, 3) -> float32 (..., 64, 64, 3) in [0, 1], converted on device.

    Float frames already in [0, 1] pass through as float32 (their range is checked where the
    values are concrete, i.e. outside ``jit``). Anything else raises a ValueError that names the
    problem, so that bad input never trains silently.
    """
    shape, dtype = _shape_and_dtype(frames)
    if len(shape) < 3 or shape[-3:] != FRAME_SHAPE:
        raise ValueError(f"frames must have shape (..., 64, 64, 3); got shape {shape}")
    if dtype == np.uint8:
        return jnp.asarray(frames).astype(jnp.float32) / 255.0
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"frames must be uint8 in [0, 255] (or float in [0, 1]); got dtype {dtype}"
        )
    if not isinstance(frames, jax.core.Tracer) and math.prod(shape) > 0:
        xp = np if isinstance(frames, np.ndarray) else jnp  # numpy input: check on the host
        # Finiteness first: XLA:CPU's min/max reductions may skip NaNs.
        if not bool(xp.all(xp.isfinite(frames))):
            raise ValueError("float frames must be finite and lie in [0, 1]; got NaN or inf")
        low, high = float(xp.min(frames)), float(xp.max(frames))
        if low < 0.0 or high > 1.0:
            raise ValueError(
                f"float frames must lie in [0, 1]; got values in [{low}, {high}] "
                "(uint8 frames in [0, 255] are converted for you)"
            )
    return jnp.asarray(frames, jnp.float32)


def _check_train_batch(frames: Any) -> None:
    shape, dtype = _shape_and_dtype(frames)
    if len(shape) != 4 or shape[1:] != FRAME_SHAPE:
        raise ValueError(f"train_step expects frames of shape (B, 64, 64, 3); got shape {shape}")
    if dtype != np.uint8:
        raise ValueError(f"train_step expects uint8 frames in [0, 255]; got dtype {dtype}")


# ---------------------------------------------------------------------------------------------
# Loss and training.


def loss_fn(
    key: jax.Array, params: Params, x: jax.Array, kl_tolerance: float, *, impl: Impl = "fast"
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """World Models, Appendix: summed squared error + max(KL, kl_tolerance * Z), batch mean.

    Args:
      key: for the reparameterised sample.
      params: VAE parameters.
      x: (B, 64, 64, 3) float32 in [0, 1].
      kl_tolerance: 0.5 in the paper.

    Returns:
      (loss, metrics) with metrics ``loss``, ``recon`` (squared error per frame) and ``kl`` (the
      unclamped KL per frame), all batch means.
    """
    mu, logvar = encode(params, x, impl=impl)
    z = sample_latent(key, mu, logvar)
    x_hat = decode(params, z, impl=impl)
    recon = jnp.sum(jnp.square(x - x_hat), axis=(-3, -2, -1))  # (B,)
    kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)  # (B,)
    # World Models code: KL clamped below at kl_tolerance * z_size, per sample.
    kl_clamped = jnp.maximum(kl, kl_tolerance * mu.shape[-1])
    loss = jnp.mean(recon + kl_clamped)
    return loss, {"loss": loss, "recon": jnp.mean(recon), "kl": jnp.mean(kl)}


class VAETrainState(flax.struct.PyTreeNode):
    params: Params
    opt_state: optax.OptState
    step: jax.Array  # () int32


@functools.cache  # configs are frozen dataclasses: repeated `train` calls reuse the compiled step
def make_train(
    config: VAEConfig, train_config: VAETrainConfig, *, impl: Impl = "fast"
) -> tuple[
    Callable[[jax.Array], VAETrainState],
    Callable[[jax.Array, VAETrainState, jax.Array], tuple[VAETrainState, dict[str, jax.Array]]],
]:
    """Returns ``(init_state(key), train_step(key, state, frames_uint8 (B, 64, 64, 3)))``.

    ``train_step`` is jitted and donates ``state``; it converts the uint8 frames on device.
    """
    optimizer = optax.adam(train_config.learning_rate)

    def init_state(key: jax.Array) -> VAETrainState:
        params = init_params(key, config)
        return VAETrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def train_step(
        key: jax.Array, state: VAETrainState, frames: jax.Array
    ) -> tuple[VAETrainState, dict[str, jax.Array]]:
        _check_train_batch(frames)  # static: shapes and dtypes are known at trace time
        x = frames_to_float(frames)
        grad_fn = jax.grad(loss_fn, argnums=1, has_aux=True)
        grads, metrics = grad_fn(key, state.params, x, config.kl_tolerance, impl=impl)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return VAETrainState(params, opt_state, state.step + 1), metrics

    return init_state, jax.jit(train_step, donate_argnums=1)


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or inf; the message names the step."""


def train(
    key: jax.Array,
    config: VAEConfig,
    train_config: VAETrainConfig,
    batches: Iterable[Any],
    state: VAETrainState | None = None,
    on_step: Callable[[int, dict[str, jax.Array]], None] | None = None,
    *,
    progress: bool = True,
    check_every: int = 50,
) -> VAETrainState:
    """Trains V over a stream of uint8 batches (B, 64, 64, 3); never holds the dataset.

    Args:
      key: randomness for init (if ``state`` is None) and the reparameterised samples.
      config, train_config: model and optimiser settings.
      batches: any iterable of uint8 frame batches, consumed once.
      state: resume from this state (its ``step`` continues); fresh parameters if None.
      on_step: called as ``on_step(step, metrics)`` after each step, with ``step`` the updated
        ``state.step`` (counted from 1) and the metrics still on device (no host sync).
      progress: show a tqdm progress bar.
      check_every: steps between the (host-syncing) NaN/inf checks of the loss; the last step
        is always checked.

    Raises:
      TrainingDivergedError: naming the first step whose loss is not finite.
    """
    init_state, train_step = make_train(config, train_config)
    key, key_init = jax.random.split(key)
    if state is None:
        state = init_state(key_init)
    step = int(state.step)
    pending: list[tuple[int, jax.Array]] = []  # (step, loss) not yet checked on the host

    def check() -> None:
        losses = np.asarray(jnp.stack([loss for _, loss in pending]))
        bad = np.flatnonzero(~np.isfinite(losses))
        if bad.size:
            bad_step, bad_loss = pending[bad[0]][0], losses[bad[0]]
            raise TrainingDivergedError(
                f"VAE loss became {bad_loss} at step {bad_step} (steps counted from 1); "
                "check the data and the learning rate"
            )
        bar.set_postfix(loss=f"{losses[-1]:.1f}")
        pending.clear()

    total = len(batches) if hasattr(batches, "__len__") else None
    with tqdm(total=total, desc="V", disable=not progress) as bar:
        for frames in batches:
            state, metrics = train_step(jax.random.fold_in(key, step), state, frames)
            step += 1
            pending.append((step, metrics["loss"]))
            if on_step is not None:
                on_step(step, metrics)
            bar.update(1)
            if len(pending) >= check_every:
                check()
        if pending:
            check()
    return state
