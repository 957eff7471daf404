"""C: parameter counts from the paper, shapes, flattening, features and bad configs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.models import controller, mdn_rnn


@pytest.mark.parametrize(
    ("config", "count"),
    [
        (controller.CAR_RACING, 867),  # World Models, Appendix
        (controller.DOOM, 1088),  # World Models, Appendix: no bias
        (controller.CAR_RACING_Z_HIDDEN, 1443),  # World Models, V only + hidden layer
        (controller.CAR_RACING_Z, 99),  # (32 + 1) * 3
    ],
)
def test_parameter_counts(config, count):
    params = controller.init_params(jax.random.key(0), config)
    assert controller.num_params(config) == count
    assert sum(leaf.size for leaf in jax.tree.leaves(params)) == count
    assert controller.flatten(params).shape == (count,)


@pytest.mark.parametrize(
    "config",
    [controller.CAR_RACING, controller.DOOM, controller.CAR_RACING_Z_HIDDEN],
)
def test_act_shapes_range_and_flatten_round_trip(config):
    params = controller.init_params(jax.random.key(1), config, scale=3.0)
    x = 5.0 * jax.random.normal(jax.random.key(2), (7, config.input_dim))
    action = controller.act(config, params, x)
    assert action.shape == (7, config.action_dim) and action.dtype == jnp.float32
    assert jnp.all(jnp.abs(action) <= 1.0)
    rebuilt = controller.unflatten_fn(config)(controller.flatten(params))
    np.testing.assert_array_equal(controller.act(config, rebuilt, x), action)
    jitted = jax.jit(controller.act, static_argnums=0)(config, params, x)
    np.testing.assert_allclose(jitted, action, atol=1e-6)


def test_linear_matches_formula_and_doom_has_no_bias():
    config = controller.CAR_RACING
    params = controller.init_params(jax.random.key(3), config)
    x = jax.random.normal(jax.random.key(4), (config.input_dim,))
    expected = np.tanh(np.asarray(x) @ np.asarray(params["w"]) + np.asarray(params["b"]))
    np.testing.assert_allclose(controller.act(config, params, x), expected, atol=1e-5)
    assert set(controller.init_params(jax.random.key(0), controller.DOOM)) == {"w"}


def test_features_order_and_sizes():
    state = mdn_rnn.LSTMState(c=jnp.full((2,), 7.0), h=jnp.full((2,), 9.0))
    z = jnp.arange(3.0)
    doom_like = controller.ControllerConfig(
        inputs=("z", "c", "h"), latent_dim=3, hidden_size=2, action_dim=1, use_bias=False
    )
    np.testing.assert_array_equal(controller.features(doom_like, z, state), [0, 1, 2, 7, 7, 9, 9])
    car_like = controller.ControllerConfig(latent_dim=3, hidden_size=2)
    np.testing.assert_array_equal(controller.features(car_like, z, state), [0, 1, 2, 9, 9])
    v_only = controller.ControllerConfig(kind="linear_z", inputs=("z",), latent_dim=3)
    np.testing.assert_array_equal(controller.features(v_only, z), z)
    with pytest.raises(ValueError, match="need M's state"):
        controller.features(car_like, z)
    with pytest.raises(ValueError, match="features have size"):
        controller.features(car_like, jnp.zeros(4), state)


def test_bad_configs_raise():
    with pytest.raises(ValueError, match="kind"):
        controller.ControllerConfig(kind="mlp")
    with pytest.raises(ValueError, match="reads z only"):
        controller.ControllerConfig(kind="hidden_z", inputs=("z", "h"))
    with pytest.raises(ValueError, match="needs 'h'"):
        controller.ControllerConfig(inputs=("z",))


def test_config_dict_round_trip():
    data = controller.config_to_dict(controller.DOOM)
    assert controller.config_from_dict(data) == controller.DOOM
