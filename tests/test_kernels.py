"""The implementations chosen per backend (wm_jax.core.kernels): the table, the config's override,
and that the choice reaches the models (same values, another program)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.core import kernels
from wm_jax.models import mdn_rnn, vae
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import experiment


@pytest.mark.parametrize(
    ("backend", "row"),
    [
        ("cpu", ("fast", "fused", 1, "eigen")),
        ("gpu", ("flax", "fused", 0, "xla")),
        ("tpu", ("flax", "fused", 0, "xla")),
    ],
)
def test_auto_is_the_backends_row(backend, row):
    chosen = kernels.resolve(kernels.KernelsConfig(), backend)
    assert (chosen.vae_layers, chosen.lstm, chosen.es_blas_threads, chosen.vae_library) == row


def test_a_named_choice_wins_over_the_backend():
    named = kernels.KernelsConfig(
        vae_layers="flax", lstm="scan", es_blas_threads=0, vae_library="xla"
    )
    assert kernels.resolve(named, "cpu") == named
    assert kernels.resolve(kernels.KernelsConfig(vae_layers="fast"), "gpu").vae_layers == "fast"


@pytest.mark.parametrize(
    ("setting", "match"),
    [
        ("kernels.lstm=cudnn", r"kernels\.lstm='cudnn': allowed values are"),
        ("kernels.vae_layers=im2col", r"kernels\.vae_layers='im2col'"),
        ("kernels.vae_library=mkl", r"kernels\.vae_library='mkl': allowed values are"),
        ("kernels.es_blas_threads=-2", r"kernels\.es_blas_threads=-2: must be in \[-1, 4096\]"),
        ("kernels.es_blas_threads=two", r"kernels\.es_blas_threads='two': expected int"),
    ],
)
def test_a_bad_choice_is_one_error_naming_the_field(setting, match):
    with pytest.raises(cfg.ConfigError, match=match):
        experiment.build_config("minatar_breakout", "smoke", 0, [setting])


def test_use_refuses_an_unknown_choice():
    with pytest.raises(ValueError, match=r"kernels\.lstm='x'"):
        kernels.use(kernels.KernelsConfig(lstm="x"))
    assert kernels.active() == kernels.resolve(kernels.KernelsConfig())  # unchanged


def test_another_kernel_choice_resumes_the_same_run(tmp_path):
    config = experiment.build_config("minatar_breakout", "smoke", 0, [])
    experiment.prepare_run_dir(tmp_path, config)
    other = experiment.build_config("minatar_breakout", "smoke", 0, ["kernels.lstm=scan"])
    experiment.prepare_run_dir(tmp_path, other)  # no "written with other settings" error
    assert cfg.from_dict(config.to_dict()) == config


def _equations(fn, *args):
    """Every equation of fn's program, nested ones (scan bodies, custom VJPs) included."""

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            yield eqn
            for value in eqn.params.values():
                for sub in value if isinstance(value, tuple | list) else (value,):
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        yield from walk(inner)

    return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def _custom_vjps(fn, *args) -> int:
    return sum(eqn.primitive.name.startswith("custom_vjp_call") for eqn in _equations(fn, *args))


def test_the_lstm_choice_reaches_m_with_the_same_gradients():
    config = mdn_rnn.MDNRNNConfig(latent_dim=4, action_dim=1, hidden_size=8, num_mixtures=2)
    params = mdn_rnn.init_params(jax.random.key(0), config)
    rng = np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(3, 5, 4)), jnp.float32)
    actions = jnp.asarray(rng.uniform(-1, 1, (3, 5, 1)), jnp.float32)

    def loss(p):
        out = mdn_rnn.forward_sequence(config, p, z, actions)
        return jnp.sum(out.mu**2) + jnp.sum(out.log_pi * out.log_sigma)

    grads, seen = {}, {}
    for choice in ("fused", "scan"):
        with kernels.using(kernels.KernelsConfig(lstm=choice)):
            grads[choice] = jax.jit(jax.grad(loss))(params)
            # A new function object: JAX caches traces per function, and the choice is read
            # when tracing.
            seen[choice] = _custom_vjps(lambda p: loss(p), params)
    assert seen["fused"] == seen["scan"] + 1  # the fused LSTM's own backward pass
    for a, b in zip(jax.tree.leaves(grads["fused"]), jax.tree.leaves(grads["scan"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_the_vae_choice_reaches_v_with_the_same_codes():
    params = vae.init_params(jax.random.key(0), vae.VAEConfig(latent_dim=8))
    x = jax.random.uniform(jax.random.key(1), (2, 64, 64, 3))
    mu, seen = {}, {}
    for choice in ("fast", "flax"):
        with kernels.using(kernels.KernelsConfig(vae_layers=choice)):
            mu[choice] = jax.jit(lambda p, f: vae.encode(p, f)[0])(params, x)
            seen[choice] = [
                e.params["window_strides"]
                for e in _equations(lambda p, f: vae.encode(p, f)[0], params, x)
                if e.primitive.name == "conv_general_dilated"
            ]
    assert all(strides == (2, 2) for strides in seen["flax"]) and seen["flax"]
    assert all(strides == (1, 1) for strides in seen["fast"]) and seen["fast"]
    np.testing.assert_allclose(mu["fast"], mu["flax"], rtol=1e-4, atol=1e-4)


def _ynn_fusions(choice: str) -> tuple[int, jax.Array]:
    """V's encoder compiled by `jit_vae` under `vae_library=choice`: its YNNPACK fusions, codes."""
    params = vae.init_params(jax.random.key(0), vae.VAEConfig(latent_dim=8))
    x = jax.random.uniform(jax.random.key(1), (4, 64, 64, 3))
    with kernels.using(kernels.KernelsConfig(vae_library=choice)):
        encode = kernels.jit_vae(lambda p, f: vae.encode(p, f)[0])
    compiled = encode.lower(params, x).compile()
    return compiled.as_text().count('"__ynn_fusion"'), compiled(params, x)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="an XLA:CPU compiler option")
def test_the_vae_library_choice_reaches_v_with_the_same_codes():
    fusions, codes = zip(*(_ynn_fusions(choice) for choice in ("eigen", "xla")), strict=True)
    assert fusions[0] == 0  # eigen: no op of V's program left to YNNPACK
    with kernels.using(kernels.KernelsConfig(vae_library="eigen")):
        if kernels.vae_compiler_options() is None:
            pytest.skip("this jaxlib has no xla_cpu_experimental_ynn_fusion_type")
    # XLA's default gives V's convolutions to YNNPACK (jax 0.10); if a later XLA stops, the
    # choice no longer matters: remeasure it (benchmarks/vae_library.py).
    assert fusions[1] > 0
    np.testing.assert_allclose(codes[0], codes[1], rtol=1e-4, atol=1e-4)


def test_an_unknown_compiler_option_leaves_xla_s_defaults(monkeypatch):
    # The option is experimental: a jaxlib without it must still run V, as XLA chooses.
    monkeypatch.setattr(kernels, "_YNN_OPTION", "xla_cpu_no_such_option_in_any_jaxlib")
    with kernels.using(kernels.KernelsConfig(vae_library="eigen")):
        assert kernels.vae_compiler_options() is None
        assert float(kernels.jit_vae(lambda x: x * 2)(3.0)) == 6.0
    with kernels.using(kernels.KernelsConfig(vae_library="xla")):
        assert kernels.vae_compiler_options() is None


def test_cached_builders_are_per_choice():
    # A builder cached on its configs alone handed a function traced under an earlier choice
    # to a later one (seen: the real-game policy step, V's convolutions 2e-6 apart).
    from wm_jax.envs import controller_policy, real_rollout
    from wm_jax.es import evolve
    from wm_jax.train import mdn_rnn_train, vae_train

    builds = []

    @kernels.cache_per_choice()
    def build(size):
        builds.append((size, kernels.active()))
        return object()

    fast = kernels.KernelsConfig(vae_layers="fast", lstm="fused")
    flax_scan = kernels.KernelsConfig(vae_layers="flax", lstm="scan")
    with kernels.using(fast):
        first = build(3)
        assert build(3) is first  # the same choice: cached
    with kernels.using(flax_scan):
        other = build(3)
    assert other is not first and [b[1].vae_layers for b in builds] == ["fast", "flax"]
    with kernels.using(fast):
        assert build(3) is first
    # Every cached builder of jitted functions in the library is one of these.
    for builder in (
        vae_train.make_train,
        mdn_rnn_train.make_train,
        evolve.make_dream_evolver,
        real_rollout._cached_policy_step,
        controller_policy._policy_step,
    ):
        assert hasattr(builder, "cache_clear") and builder.__wrapped__.__name__ != "by_choice"
    train_config = vae_train.VAETrainConfig(batch_size=2)
    with kernels.using(fast):
        a = vae_train.make_train(vae.VAEConfig(4), train_config)
    with kernels.using(flax_scan):
        b = vae_train.make_train(vae.VAEConfig(4), train_config)
    assert a is not b
