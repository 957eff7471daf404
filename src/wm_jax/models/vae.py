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
gradients, so on a CPU (``impl="auto"``, `wm_jax.core.kernels`) the stride-2 layers are
`conv_stride2` and `conv_transpose_stride2`: stride-1 convolutions (space-to-depth for the
encoder, four output phases for the decoder) with custom VJPs whose kernel gradients are
matmuls. That trains about 3.5x faster on CPU (``benchmarks/vae_decoder_profile.py``).
``impl="flax"`` uses ``nn.Conv`` / ``nn.ConvTranspose`` themselves (the "auto" choice on a GPU
or TPU); both compute the same function on the same parameters (use it
for forward-mode autodiff, which custom VJPs do not support).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.core import kernels
from wm_jax.models.strided_conv import Conv4Stride2, ConvTransposeStride2

Params = Any  # flax linen params pytree: {"encoder": {...}, "decoder": {...}}
Impl = Literal["auto", "fast", "flax"]  # auto: the backend's choice (wm_jax.core.kernels)

FRAME_SHAPE = (64, 64, 3)
# World Models, Appendix: encoder filters (kernel 4, stride 2) and decoder (filters, kernel).
ENCODER_FILTERS = (32, 64, 128, 256)
DECODER_LAYERS = ((128, 5), (64, 5), (32, 6), (3, 6))


@dataclasses.dataclass(frozen=True)
class VAEConfig:
    """World Models, Appendix."""

    latent_dim: int = 32  # 32 CarRacing, 64 Doom
    kl_tolerance: float = 0.5  # KL per sample clamped below at kl_tolerance * latent_dim


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


def _layers(impl: Impl) -> Impl:
    return kernels.active().vae_layers if impl == "auto" else impl


def encode(params: Params, x: jax.Array, *, impl: Impl = "auto") -> tuple[jax.Array, jax.Array]:
    """x (..., 64, 64, 3) float32 in [0, 1] -> (mu, logvar), each (..., Z)."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):  # e.g. raw uint8 frames
        raise ValueError(
            f"encode expects float frames in [0, 1]; got dtype {x.dtype} (see frames_to_float)"
        )
    batch_shape = x.shape[:-3]
    flat = jnp.reshape(x, (-1, *x.shape[-3:]))
    encoder = Encoder(latent_dim_of(params), _layers(impl))
    mu, logvar = encoder.apply({"params": params["encoder"]}, flat)
    return mu.reshape(*batch_shape, -1), logvar.reshape(*batch_shape, -1)


def decode(params: Params, z: jax.Array, *, impl: Impl = "auto") -> jax.Array:
    """z (..., Z) -> x (..., 64, 64, 3) in [0, 1]."""
    batch_shape = z.shape[:-1]
    x = Decoder(_layers(impl)).apply(
        {"params": params["decoder"]}, jnp.reshape(z, (-1, z.shape[-1]))
    )
    return x.reshape(*batch_shape, *FRAME_SHAPE)


def sample_latent(key: jax.Array, mu: jax.Array, logvar: jax.Array) -> jax.Array:
    """Reparameterised z = mu + exp(logvar / 2) * eps, shapes (..., Z)."""
    return mu + jnp.exp(logvar / 2) * jax.random.normal(key, mu.shape, mu.dtype)


# ---------------------------------------------------------------------------------------------
# Input validation.


def frame_shape_and_dtype(frames: Any) -> tuple[tuple[int, ...], np.dtype]:
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
    shape, dtype = frame_shape_and_dtype(frames)
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


def loss_fn(
    key: jax.Array, params: Params, x: jax.Array, kl_tolerance: float, *, impl: Impl = "auto"
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
