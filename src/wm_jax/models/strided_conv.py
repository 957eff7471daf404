"""Stride-2 convolutions and transposed convolutions that are fast on XLA:CPU.

V's encoder (conv k4 s2) and decoder (transposed conv s2) as stride-1 convolutions with the
same parameters (`nn.Conv` / `nn.ConvTranspose` layout) and the same numbers: XLA's CPU backend
lowers strided convolutions' input gradients and transposed convolutions to slow dilated
convolutions, and the transposed convolutions' kernel gradient is slower still (measured: 0.5-1.6
s per decoder layer at batch 100 against 15-170 ms here; `benchmarks/vae_decoder_profile.py`).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")


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
