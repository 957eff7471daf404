"""V: the convolutional VAE of World Models (Ha & Schmidhuber, 2018, Appendix).

A frame x (64, 64, 3) in [0, 1] is encoded to a diagonal Gaussian (mu, logvar), each (Z,), with
Z = 32 for CarRacing and 64 for Doom; z = mu + exp(logvar / 2) * eps is decoded back to a frame.

    encoder: conv k4 s2 ReLU 32 -> 64 -> 128 -> 256 (64 -> 31 -> 14 -> 6 -> 2, VALID), flatten 1024,
             dense mu (Z), dense logvar (Z)
    decoder: dense Z -> 1024, reshape (1, 1, 1024), deconv s2 VALID 128 k5 -> 64 k5 -> 32 k6 (ReLU)
             -> 3 k6 (sigmoid): 1 -> 5 -> 13 -> 30 -> 64

The parameters are a flax.linen pytree ``{"encoder": ..., "decoder": ...}`` laid out exactly as
``nn.Conv`` / ``nn.ConvTranspose`` / ``nn.Dense`` would lay them out (4,348,547 parameters for
Z = 32, 4,446,915 for Z = 64). XLA's CPU backend is slow at strided and transposed convolutions
(they lower to dilated convolutions), so by default (``impl="fast"``) the same layers are computed
as stride-1 convolutions: space-to-depth for the encoder and four output phases for the decoder.
``impl="flax"`` uses ``nn.Conv`` / ``nn.ConvTranspose`` themselves; both give the same numbers and
share one parameter layout.
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

Params = Any  # flax linen params pytree: {"encoder": {...}, "decoder": {...}}
Impl = Literal["fast", "flax"]

FRAME_SHAPE = (64, 64, 3)
_DIMS = ("NHWC", "HWIO", "NHWC")
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
# Fast stride-2 layers (same parameters, same numbers as nn.Conv / nn.ConvTranspose).


def _conv_stride2_native(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(x, kernel, (2, 2), "VALID", dimension_numbers=_DIMS)


def _conv_stride2_s2d(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # Space-to-depth: with k = 2a + b, y[o] = sum_k x[2o + k] K[k] = sum_a xs[o + a, b] K[2a + b]
    # where xs holds 2x2 pixel blocks as channels: a stride-1 convolution, (k/2, k/2) kernel.
    k_h, k_w, c_in, c_out = kernel.shape
    batch, height, width, _ = x.shape
    out_h, out_w = (height - k_h) // 2 + 1, (width - k_w) // 2 + 1
    # Rows past the last window are never read (VALID), so crop to an even size.
    used_h, used_w = 2 * out_h + k_h - 2, 2 * out_w + k_w - 2
    x = x[:, :used_h, :used_w, :]
    x = x.reshape(batch, used_h // 2, 2, used_w // 2, 2, c_in)
    x = x.transpose(0, 1, 3, 2, 4, 5).reshape(batch, used_h // 2, used_w // 2, 4 * c_in)
    kernel = kernel.reshape(k_h // 2, 2, k_w // 2, 2, c_in, c_out)
    kernel = kernel.transpose(0, 2, 1, 3, 4, 5).reshape(k_h // 2, k_w // 2, 4 * c_in, c_out)
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMS)


@jax.custom_vjp
def conv_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_general_dilated(x, kernel, (2, 2), "VALID")``, faster on XLA:CPU.

    The forward pass and the input gradient are stride-1 convolutions after space-to-depth
    (XLA lowers the input gradient of a strided convolution to a slow lhs-dilated one); the
    kernel gradient is XLA's own, which is fast for this op.

    Args:
      x: (B, H, W, C) input.
      kernel: (k, k, C, O) with k even, ``nn.Conv`` layout.

    Returns:
      (B, (H - k) // 2 + 1, (W - k) // 2 + 1, O).
    """
    return _conv_stride2_s2d(x, kernel)


def _conv_stride2_fwd(x, kernel):
    return _conv_stride2_s2d(x, kernel), (x, kernel)


def _conv_stride2_bwd(residuals, grad):
    x, kernel = residuals
    (grad_x,) = jax.vjp(lambda x: _conv_stride2_s2d(x, kernel), x)[1](grad)
    (grad_kernel,) = jax.vjp(lambda kernel: _conv_stride2_native(x, kernel), kernel)[1](grad)
    return grad_x, grad_kernel


conv_stride2.defvjp(_conv_stride2_fwd, _conv_stride2_bwd)


def _conv_transpose_stride2_phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
    # flax's lax.conv_transpose (transpose_kernel=False) scatters input pixel i into output rows
    # 2i + k - 1 - j with tap j. Output row o = 2m + r (phase r) sees every other tap only, so
    # each of the four (row, column) phases is a stride-1 convolution of the undilated input
    # with a ceil(k/2)-tap sub-kernel. They run as one convolution with 4 * O output channels,
    # interleaved by a reshape and cropped to the VALID size 2 (n - 1) + k.
    k_h, k_w, c_in, c_out = kernel.shape
    batch, height, width, _ = x.shape
    out_h, out_w = 2 * (height - 1) + k_h, 2 * (width - 1) + k_w
    if height == 1 and width == 1:  # the decoder's first layer: a matmul
        return jnp.einsum("bc,hwco->bhwo", x[:, 0, 0, :], kernel[::-1, ::-1])
    half_h, half_w = math.ceil(k_h / 2), math.ceil(k_w / 2)
    # Pad an odd kernel with a zero tap in front; then phase r uses taps kp[2u + 1 - r], u < half.
    kernel = jnp.pad(kernel, ((2 * half_h - k_h, 0), (2 * half_w - k_w, 0), (0, 0), (0, 0)))
    kernel = kernel.reshape(half_h, 2, half_w, 2, c_in, c_out)[:, ::-1, :, ::-1]  # [u, r, v, s]
    kernel = kernel.transpose(0, 2, 4, 1, 3, 5).reshape(half_h, half_w, c_in, 4 * c_out)
    padding = ((half_h - 1, half_h - 1), (half_w - 1, half_w - 1))
    y = jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMS)
    _, phase_h, phase_w, _ = y.shape
    y = y.reshape(batch, phase_h, phase_w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(batch, 2 * phase_h, 2 * phase_w, c_out)
    return y[:, :out_h, :out_w, :]


@jax.custom_vjp
def conv_transpose_stride2(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """``lax.conv_transpose(x, kernel, (2, 2), "VALID")`` (flax's convention), faster on XLA:CPU.

    XLA:CPU runs this op as a slow lhs-dilated convolution and its kernel gradient slower
    still. Here the forward pass (and so the input gradient) is four stride-1 phase
    convolutions of the undilated input, and the kernel gradient one matmul of the input with
    the output-gradient taps ``dK[j] = sum_i x[i] g[2i + k - 1 - j]``.

    Args:
      x: (B, H, W, C) input.
      kernel: (k, k, C, O), ``nn.ConvTranspose`` layout (``transpose_kernel=False``).

    Returns:
      (B, 2 (H - 1) + k, 2 (W - 1) + k, O).
    """
    return _conv_transpose_stride2_phases(x, kernel)


def _conv_transpose_stride2_fwd(x, kernel):
    return _conv_transpose_stride2_phases(x, kernel), (x, kernel)


def _conv_transpose_stride2_bwd(residuals, grad):
    x, kernel = residuals
    (grad_x,) = jax.vjp(lambda x: _conv_transpose_stride2_phases(x, kernel), x)[1](grad)
    k_h, k_w, c_in, c_out = kernel.shape
    _, height, width, _ = x.shape
    taps = [  # (B, H, W, O) each: grad[2i + k - 1 - j] for tap j, input pixel i
        grad[:, k_h - 1 - p :: 2, k_w - 1 - q :: 2, :][:, :height, :width, :]
        for p in range(k_h)
        for q in range(k_w)
    ]
    taps = jnp.stack(taps, axis=3)  # (B, H, W, k * k, O)
    grad_kernel = jnp.einsum("bhwc,bhwto->tco", x, taps).reshape(k_h, k_w, c_in, c_out)
    return grad_x, grad_kernel


conv_transpose_stride2.defvjp(_conv_transpose_stride2_fwd, _conv_transpose_stride2_bwd)


class Conv4Stride2(nn.Module):
    """``nn.Conv(features, (4, 4), (2, 2), "VALID")`` computed by `conv_stride2`."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (4, 4, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_stride2(x, kernel) + bias


class ConvTransposeStride2(nn.Module):
    """``nn.ConvTranspose(features, (k, k), (2, 2), "VALID")`` by `conv_transpose_stride2`."""

    features: int
    kernel_size: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        return conv_transpose_stride2(x, kernel) + bias


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
    key_encoder, key_decoder = jax.random.split(key)
    x = jnp.zeros((1, *FRAME_SHAPE), jnp.float32)
    z = jnp.zeros((1, config.latent_dim), jnp.float32)
    return {
        "encoder": Encoder(config.latent_dim).init(key_encoder, x)["params"],
        "decoder": Decoder().init(key_decoder, z)["params"],
    }


def num_params(params: Params) -> int:
    return sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))


def encode(params: Params, x: jax.Array, *, impl: Impl = "fast") -> tuple[jax.Array, jax.Array]:
    """x (..., 64, 64, 3) float32 in [0, 1] -> (mu, logvar), each (..., Z)."""
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


def frames_to_float(frames: Any) -> jax.Array:
    """uint8 frames (..., 64, 64, 3) -> float32 in [0, 1], converted on device.

    Float frames already in [0, 1] pass through as float32 (their range is checked when the
    values are concrete, i.e. outside ``jit``). Anything else raises a ValueError naming the
    problem, so that bad input never trains silently.
    """
    shape, dtype = np.shape(frames), np.result_type(frames)
    if len(shape) < 3 or tuple(shape[-3:]) != FRAME_SHAPE:
        raise ValueError(f"frames must have shape (..., 64, 64, 3); got shape {tuple(shape)}")
    if dtype == np.uint8:
        return jnp.asarray(frames).astype(jnp.float32) / 255.0
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(
            f"frames must be uint8 in [0, 255] (or float in [0, 1]); got dtype {dtype}"
        )
    if not isinstance(frames, jax.core.Tracer) and np.size(frames) > 0:
        low, high = float(jnp.min(frames)), float(jnp.max(frames))
        if not (0.0 <= low and high <= 1.0):  # also False for NaN
            raise ValueError(
                f"float frames must lie in [0, 1]; got values in [{low}, {high}] "
                f"(pass uint8 frames in [0, 255] instead)"
            )
    return jnp.asarray(frames, jnp.float32)


def _check_uint8_batch(frames: Any) -> None:
    shape, dtype = np.shape(frames), np.result_type(frames)
    if len(shape) != 4 or tuple(shape[1:]) != FRAME_SHAPE:
        raise ValueError(f"train_step expects frames (B, 64, 64, 3); got shape {tuple(shape)}")
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
        _check_uint8_batch(frames)  # static: shapes and dtypes are known at trace time
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
      on_step: called as ``on_step(step, metrics)`` after each step (metrics on device).
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
            raise TrainingDivergedError(f"VAE loss became {bad_loss} at step {bad_step}")
        if bar is not None:
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
