"""Tests for wm_jax.models.vae (V): shapes, parameter counts, the fast stride-2 layers against
flax's, a probe problem, no re-tracing, bad input and divergence errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.models import strided_conv, vae
from wm_jax.train import training_loop, vae_train

# Batch 4: the compiled train step is shared by every test that trains (make_train is cached).
PROBE_TRAIN = vae_train.VAETrainConfig(batch_size=4, learning_rate=1e-3)
PROBE_STEPS = 150


def normal(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    # Test data from numpy: each new shape drawn with jax.random would compile a threefry kernel.
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def uniform(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def probe_frames() -> np.ndarray:
    """Four uint8 frames (4, 64, 64, 3): bright top, bottom, left and right halves."""
    frames = np.full((4, 64, 64, 3), 30, np.uint8)
    frames[0, :32] = frames[1, 32:] = frames[2, :, :32] = frames[3, :, 32:] = 220
    frames[..., 1] //= 2
    return frames


@pytest.fixture(scope="module")
def params():
    return vae.init_params(jax.random.key(0), vae.CAR_RACING)


@pytest.fixture(scope="module")
def probe_run():
    """Trains V on the probe frames through `vae_train.train`, fed by a generator."""
    frames = probe_frames()
    consumed, losses, cache_sizes = [], [], []
    # cached: the one `train` uses
    _, train_step = vae_train.make_train(vae.CAR_RACING, PROBE_TRAIN)

    def on_step(step, metrics):
        losses.append((step, metrics))
        cache_sizes.append(train_step._cache_size())  # compiled signatures so far

    def batches():
        for i in range(PROBE_STEPS):
            consumed.append(i)
            yield frames

    state = vae_train.train(
        jax.random.key(1),
        vae.CAR_RACING,
        PROBE_TRAIN,
        batches(),
        on_step=on_step,
        progress=False,
    )
    return state, consumed, losses, cache_sizes


# --- model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "expected"), [(vae.CAR_RACING, 4_348_547), (vae.DOOM, 4_446_915)]
)
def test_parameter_count_matches_paper(config, expected):
    shapes = jax.eval_shape(lambda key: vae.init_params(key, config), jax.random.key(0))
    assert vae.num_params(shapes) == expected
    assert vae.latent_dim_of(shapes) == config.latent_dim


def test_init_matches_flax_defaults(params):
    # lecun_normal kernels (std 1 / sqrt(fan_in)), zero biases, as nn.Conv & co. would draw them.
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    assert len(flat) == 2 * (4 + 2 + 1 + 4)
    for path, leaf in flat:
        if path[-1].key == "bias":
            assert not np.any(np.asarray(leaf)), path
        else:
            fan_in = np.prod(leaf.shape[:-1])
            np.testing.assert_allclose(np.std(leaf) * np.sqrt(fan_in), 1.0, rtol=0.1, err_msg=path)
    other = vae.init_params(jax.random.key(1), vae.CAR_RACING)
    assert not np.allclose(other["decoder"]["fc"]["kernel"], params["decoder"]["fc"]["kernel"])


def test_parameter_layout_is_that_of_flax_conv_and_conv_transpose():
    x = jnp.zeros((1, 64, 64, 3))
    z = jnp.zeros((1, 32))
    for fast, flax_impl, arg in [
        (vae.Encoder(32, "fast"), vae.Encoder(32, "flax"), x),
        (vae.Decoder("fast"), vae.Decoder("flax"), z),
    ]:
        fast_params = jax.eval_shape(fast.init, jax.random.key(0), arg)
        flax_params = jax.eval_shape(flax_impl.init, jax.random.key(0), arg)
        assert jax.tree_util.tree_structure(fast_params) == jax.tree_util.tree_structure(
            flax_params
        )
        shapes = jax.tree_util.tree_map(lambda a, b: a.shape == b.shape, fast_params, flax_params)
        assert all(jax.tree_util.tree_leaves(shapes))


def test_encode_decode_shapes_and_dtypes(params):
    for batch_shape in [(), (2,), (2, 3)]:
        x = jax.ShapeDtypeStruct((*batch_shape, 64, 64, 3), jnp.float32)
        mu, logvar = jax.eval_shape(vae.encode, params, x)
        assert mu.shape == logvar.shape == (*batch_shape, 32)
        assert mu.dtype == logvar.dtype == jnp.float32
        x_hat = jax.eval_shape(vae.decode, params, mu)
        assert x_hat.shape == (*batch_shape, 64, 64, 3) and x_hat.dtype == jnp.float32
        z = jax.eval_shape(vae.sample_latent, jax.random.key(0), mu, logvar)
        assert z.shape == mu.shape and z.dtype == jnp.float32


def test_jit_equals_no_jit_and_fast_equals_flax(params):
    x = uniform(4, (1, 64, 64, 3))
    mu, logvar = vae.encode(params, x)  # no jit
    x_hat = vae.decode(params, mu)
    assert float(x_hat.min()) >= 0.0 and float(x_hat.max()) <= 1.0

    @jax.jit
    def both_impls(params, x, mu):
        return [
            (*vae.encode(params, x, impl=impl), vae.decode(params, mu, impl=impl))
            for impl in ("fast", "flax")
        ]

    for outputs in both_impls(params, x, mu):
        for got, expected in zip(outputs, (mu, logvar, x_hat), strict=True):
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_loss_is_summed_error_plus_clamped_kl(params):
    x = uniform(6, (3, 64, 64, 3))
    key = jax.random.key(7)

    @jax.jit
    def run(params, x):
        mu, logvar = vae.encode(params, x)
        x_hat = vae.decode(params, vae.sample_latent(key, mu, logvar))
        return vae.loss_fn(key, params, x, 0.5), vae.loss_fn(key, params, x, 0.0), mu, logvar, x_hat

    (loss, metrics), (loss_unclamped, _), mu, logvar, x_hat = run(params, x)
    recon = np.sum((np.asarray(x) - np.asarray(x_hat)) ** 2, axis=(1, 2, 3))
    var = np.exp(np.asarray(logvar))
    kl = 0.5 * np.sum(var + np.asarray(mu) ** 2 - 1.0 - np.asarray(logvar), axis=-1)
    assert np.all(kl < 16.0)  # a fresh model: the clamp at 0.5 * 32 is active
    np.testing.assert_allclose(loss, np.mean(recon + np.maximum(kl, 16.0)), rtol=1e-4)
    np.testing.assert_allclose(metrics["recon"], recon.mean(), rtol=1e-4)
    np.testing.assert_allclose(metrics["kl"], kl.mean(), rtol=1e-3, atol=1e-4)
    # Without the clamp the loss is smaller by exactly the clamped amount.
    np.testing.assert_allclose(loss - loss_unclamped, np.mean(16.0 - kl), rtol=1e-3)


# --- the fast stride-2 layers against flax ------------------------------------------------


def _check_layer(fast_fn, flax_module, x, kernel):
    """fast_fn(x, kernel) and flax_module (zero bias) agree in value and in both gradients."""
    bias = jnp.zeros((kernel.shape[-1],))

    def flax_fn(x, kernel):
        return flax_module.apply({"params": {"kernel": kernel, "bias": bias}}, x)

    @jax.jit
    def values_and_grads(x, kernel, cotangent):
        results = []
        for fn in (fast_fn, flax_fn):
            y, vjp = jax.vjp(fn, x, kernel)
            results.append((y, *vjp(cotangent)))
        return results

    out_shape = jax.eval_shape(flax_fn, x, kernel).shape
    cotangent = normal(8, out_shape)
    fast, ref = values_and_grads(x, kernel, cotangent)
    for name, got, expected in zip(("value", "grad x", "grad kernel"), fast, ref, strict=True):
        scale = float(jnp.abs(expected).max())
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5 * scale, err_msg=name)


# (input size, in channels, out channels, kernel size) of the four decoder layers.
@pytest.mark.parametrize(
    ("size", "c_in", "c_out", "kernel_size"),
    [(1, 1024, 128, 5), (5, 128, 64, 5), (13, 64, 32, 6), (30, 32, 3, 6)],
)
def test_conv_transpose_stride2_equals_flax(size, c_in, c_out, kernel_size):
    x = normal(size, (2, size, size, c_in))
    kernel = normal(size + 1, (kernel_size, kernel_size, c_in, c_out)) / c_in
    module = nn.ConvTranspose(c_out, (kernel_size, kernel_size), (2, 2), "VALID")
    _check_layer(strided_conv.conv_transpose_stride2, module, x, kernel)


# (input size, in channels, out channels) of the four encoder layers.
@pytest.mark.parametrize(
    ("size", "c_in", "c_out"), [(64, 3, 32), (31, 32, 64), (14, 64, 128), (6, 128, 256)]
)
def test_conv_stride2_equals_flax(size, c_in, c_out):
    x = normal(size, (2, size, size, c_in))
    kernel = normal(size + 1, (4, 4, c_in, c_out)) / c_in
    _check_layer(strided_conv.conv_stride2, nn.Conv(c_out, (4, 4), (2, 2), "VALID"), x, kernel)


def test_odd_sizes_and_kernels_match_lax():
    # Beyond the model's shapes: odd and even inputs and kernels, not square.
    x = normal(9, (1, 4, 7, 3))
    kernels = [normal(10, shape) for shape in [(3, 4, 3, 2), (2, 5, 3, 2)]]
    x_conv = normal(11, (1, 9, 8, 3))
    kernel_conv = normal(12, (4, 2, 3, 2))

    @jax.jit
    def pairs():
        dims = ("NHWC", "HWIO", "NHWC")
        strided = jax.lax.conv_general_dilated(
            x_conv, kernel_conv, (2, 2), "VALID", dimension_numbers=dims
        )
        transpose = strided_conv.conv_transpose_stride2
        return [
            (transpose(x, k), jax.lax.conv_transpose(x, k, (2, 2), "VALID")) for k in kernels
        ] + [(strided_conv.conv_stride2(x_conv, kernel_conv), strided)]

    for got, expected in pairs():
        np.testing.assert_allclose(got, expected, atol=1e-5)


# --- input validation ------------------------------------------------------------------------


def test_frames_to_float_converts_uint8():
    frames = np.zeros((2, 64, 64, 3), np.uint8)
    frames[1] = 255
    x = vae.frames_to_float(frames)
    assert x.shape == (2, 64, 64, 3) and x.dtype == jnp.float32
    assert float(x[0].max()) == 0.0 and float(x[1].min()) == 1.0
    floats = np.full((64, 64, 3), 0.5, np.float32)
    np.testing.assert_array_equal(vae.frames_to_float(floats), floats)


@pytest.mark.parametrize(
    ("frames", "match"),
    [
        (np.zeros((2, 64, 64), np.uint8), r"shape \(\.\.\., 64, 64, 3\); got shape \(2, 64, 64\)"),
        (np.zeros((2, 32, 32, 3), np.uint8), r"got shape \(2, 32, 32, 3\)"),
        (np.zeros((2, 64, 64, 3), np.int32), r"uint8.*got dtype int32"),
        (np.zeros((2, 64, 64, 3), bool), r"got dtype bool"),
        (np.full((2, 64, 64, 3), 255.0, np.float32), r"\[0, 1\]; got values in \[255.0, 255.0\]"),
        (np.full((2, 64, 64, 3), -0.5, np.float32), r"\[0, 1\]; got values in \[-0.5"),
        (np.full((2, 64, 64, 3), np.nan, np.float32), r"finite.*got NaN or inf"),
        (jnp.full((2, 64, 64, 3), jnp.inf), r"finite.*got NaN or inf"),
        (jnp.full((64, 64, 3), 2.0), r"\[0, 1\]; got values in \[2.0, 2.0\]"),
    ],
)
def test_frames_to_float_rejects_bad_input(frames, match):
    with pytest.raises(ValueError, match=match):
        vae.frames_to_float(frames)


def test_encode_rejects_uint8(params):
    with pytest.raises(ValueError, match=r"float frames in \[0, 1\]; got dtype uint8"):
        vae.encode(params, probe_frames())


def test_train_step_rejects_non_uint8_and_bad_shapes():
    init_state, train_step = vae_train.make_train(vae.CAR_RACING, PROBE_TRAIN)
    shapes = jax.eval_shape(init_state, jax.random.key(0))
    state = jax.tree_util.tree_map(lambda leaf: jnp.zeros(leaf.shape, leaf.dtype), shapes)
    frames = probe_frames()
    with pytest.raises(ValueError, match=r"uint8.*got dtype float32"):
        train_step(jax.random.key(0), state, frames.astype(np.float32) / 255)
    with pytest.raises(ValueError, match=r"\(B, 64, 64, 3\); got shape \(64, 64, 3\)"):
        train_step(jax.random.key(0), state, frames[0])


# --- training --------------------------------------------------------------------------------


def test_train_consumes_generator_and_reports_each_step(probe_run):
    state, consumed, losses, _ = probe_run
    assert consumed == list(range(PROBE_STEPS))
    assert [step for step, _ in losses] == list(range(1, PROBE_STEPS + 1))
    assert int(state.step) == PROBE_STEPS
    assert set(losses[0][1]) == {"loss", "recon", "kl"}


def test_probe_loss_decreases_and_frames_are_reconstructed(probe_run):
    state, _, losses, _ = probe_run
    loss = np.array([float(metrics["loss"]) for _, metrics in losses])
    assert loss[-10:].mean() < 0.2 * loss[:10].mean()
    x = vae.frames_to_float(probe_frames())
    reconstruct = jax.jit(lambda params, x: vae.decode(params, vae.encode(params, x)[0]))
    mse = np.mean((np.asarray(reconstruct(state.params, x)) - np.asarray(x)) ** 2, axis=(1, 2, 3))
    # Each frame's own reconstruction, not the mean frame (whose error is ~0.1 per pixel).
    assert np.all(mse < 0.01), mse


def test_train_step_does_not_retrace(probe_run):
    *_, cache_sizes = probe_run
    # Traced once, at step 1; steps 2..150 (new keys, donated states) reuse it.
    assert len(cache_sizes) == PROBE_STEPS and set(cache_sizes) == {cache_sizes[0]}


@pytest.mark.parametrize(("start_step", "check_every", "progress"), [(0, 50, False), (5, 2, True)])
def test_nan_loss_raises_naming_the_step(probe_run, start_step, check_every, progress):
    state, _, _, _ = probe_run
    nan_params = jax.tree_util.tree_map(lambda p: jnp.full_like(p, jnp.nan), state.params)
    opt_state = jax.tree_util.tree_map(jnp.copy, state.opt_state)  # train donates its state
    nan_state = vae_train.VAETrainState(nan_params, opt_state, jnp.asarray(start_step, jnp.int32))
    with pytest.raises(
        training_loop.TrainingDivergedError,
        match=rf"V training diverged at step {start_step + 1}: loss = nan$",
    ):
        vae_train.train(
            jax.random.key(2),
            vae.CAR_RACING,
            PROBE_TRAIN,
            [probe_frames()] * 3,
            state=nan_state,
            progress=progress,
            check_every=check_every,
        )
