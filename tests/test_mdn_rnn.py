"""M (MDN-RNN): sizes, LSTM maths, scan vs loop, sampling at τ, losses, training, errors."""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from wm_jax.models import mdn_rnn
from wm_jax.train import mdn_rnn_train

SMALL = mdn_rnn.MDNRNNConfig(
    latent_dim=4,
    action_dim=2,
    hidden_size=16,
    num_mixtures=3,
    use_restart=True,
    predict_done=True,
    predict_reward=True,
)
TOY = mdn_rnn.MDNRNNConfig(latent_dim=4, action_dim=2, hidden_size=32, num_mixtures=3)


@functools.cache
def _params(config: mdn_rnn.MDNRNNConfig, seed: int = 0):
    # Jitted and cached: eager initialisation dispatches op by op, which dominates a small test.
    return jax.jit(mdn_rnn.init_params, static_argnums=1)(jax.random.key(seed), config)


def _fresh_params(config, seed=0):
    return jax.tree.map(jnp.array, _params(config, seed))  # a copy a test may edit


def _random_batch(seed, config, batch_size=3, seq_len=7) -> mdn_rnn_train.SequenceBatch:
    # numpy, not jax.random: nothing to compile for a few dozen numbers.
    rng = np.random.default_rng(seed)
    flags = (batch_size, seq_len)
    restarts = rng.random(flags) < 0.2
    restarts[:, 0] = True
    mask = np.ones(flags, bool)
    mask[:, -1] = False
    return mdn_rnn_train.SequenceBatch(
        mu=rng.normal(size=(batch_size, seq_len + 1, config.latent_dim)).astype(np.float32),
        logvar=rng.uniform(-4, 0, (batch_size, seq_len + 1, config.latent_dim)).astype(np.float32),
        actions=rng.uniform(-1, 1, (*flags, config.action_dim)).astype(np.float32),
        restarts=restarts,
        dones=rng.random(flags) < 0.2,
        rewards=rng.normal(size=flags).astype(np.float32),
        mask=mask,
    )


# Jitted once per shape: eager dispatch compiles op by op and would dominate these small tests.
_forward_step = jax.jit(mdn_rnn.forward_step, static_argnums=0)
_step = jax.jit(mdn_rnn.step, static_argnums=1)
_forward_sequence = jax.jit(mdn_rnn.forward_sequence, static_argnums=0)
_loss_fn = jax.jit(mdn_rnn_train.loss_fn, static_argnums=1)


SMALL_TRAIN = mdn_rnn_train.MDNTrainConfig(batch_size=2, seq_len=4, num_steps=6)


@functools.cache
def _small_train():
    return mdn_rnn_train.make_train(SMALL, SMALL_TRAIN)  # compiled once, shared by the tests below


def _num_params(params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize(
    ("config", "expected", "num_inputs"),
    [(mdn_rnn.CAR_RACING, 422_368, 35), (mdn_rnn.DOOM, 1_678_785, 66)],
)
def test_parameter_counts_match_the_paper(config, expected, num_inputs):
    params = jax.eval_shape(lambda key: mdn_rnn.init_params(key, config), jax.random.key(0))
    assert _num_params(params) == expected
    kernel = params["lstm"]["kernel"]
    assert kernel.shape == (num_inputs + config.hidden_size, 4 * config.hidden_size)


def test_presets():
    assert mdn_rnn.DOOM.latent_dim == 64 and mdn_rnn.DOOM.hidden_size == 512
    assert mdn_rnn.DOOM.use_restart and mdn_rnn.DOOM.predict_done
    assert mdn_rnn_train.DOOM_TRAIN.seq_len == 500 and mdn_rnn_train.MDNTrainConfig().seq_len == 999
    train = mdn_rnn_train.MDNTrainConfig()
    assert (train.batch_size, train.learning_rate, train.grad_clip, train.num_steps) == (
        100,
        1e-3,
        1.0,
        4000,
    )
    # World Models code: clip by value, episode streams; CarRacing's rate is constant,
    # Doom's decays ×0.99999 per step to 1e-5.
    assert (train.grad_clip_mode, train.windows, train.learning_rate_decay) == (
        "value",
        "stream",
        1.0,
    )
    doom = mdn_rnn_train.DOOM_TRAIN
    assert (doom.learning_rate_decay, doom.min_learning_rate, doom.windows) == (
        0.99999,
        1e-5,
        "stream",
    )
    assert mdn_rnn.CAR_RACING.log_sigma_bound == mdn_rnn.DOOM.log_sigma_bound == "soft"
    hash(mdn_rnn.DOOM)  # static jit argument


def test_shapes_and_dtypes():
    params = _params(SMALL)
    state = mdn_rnn.initial_state(SMALL, (2, 5))
    z, action = jnp.zeros((2, 5, 4)), jnp.zeros((2, 5, 2))
    state, output = _forward_step(SMALL, params, state, z, action, jnp.zeros((2, 5), bool))
    assert state.c.shape == state.h.shape == (2, 5, 16)
    for field in (output.log_pi, output.mu, output.log_sigma):
        assert field.shape == (2, 5, 4, 3) and field.dtype == jnp.float32
    assert output.done_logit.shape == output.reward.shape == (2, 5)
    np.testing.assert_allclose(jnp.exp(output.log_pi).sum(-1), 1.0, rtol=1e-5)

    state, z_next, done_logit, reward = _step(
        jax.random.key(1), SMALL, params, state, z, action, 1.0
    )
    assert z_next.shape == (2, 5, 4) and z_next.dtype == jnp.float32
    assert done_logit.shape == reward.shape == (2, 5)

    sequence = _forward_sequence(SMALL, params, jnp.zeros((3, 6, 4)), jnp.zeros((3, 6, 2)))
    assert sequence.mu.shape == (3, 6, 4, 3) and sequence.done_logit.shape == (3, 6)


def test_heads_off_are_zero():
    state = mdn_rnn.initial_state(TOY)
    _, output = _forward_step(TOY, _params(TOY), state, jnp.ones(4), jnp.ones(2))
    assert output.done_logit.shape == output.reward.shape == ()
    assert float(output.done_logit) == float(output.reward) == 0.0


def test_lstm_matches_flax_lstm_cell():
    """Same maths as flax.linen.LSTMCell, with our fused kernel split into its eight Denses."""
    config = TOY
    params = _fresh_params(config)
    params["lstm"]["bias"] = jnp.linspace(-1.0, 1.0, 4 * config.hidden_size)
    num_inputs = config.latent_dim + config.action_dim
    kernel, bias = params["lstm"]["kernel"], params["lstm"]["bias"]
    flax_params = {}
    for gate, columns in zip("ifgo", np.split(np.arange(kernel.shape[1]), 4), strict=True):
        flax_params[f"i{gate}"] = {"kernel": kernel[:num_inputs, columns]}
        flax_params[f"h{gate}"] = {"kernel": kernel[num_inputs:, columns], "bias": bias[columns]}
    c, h, z, action = (
        jax.random.normal(jax.random.key(i), shape)
        for i, shape in enumerate([(5, config.hidden_size)] * 2 + [(5, 4), (5, 2)])
    )

    state, _ = _forward_step(config, params, mdn_rnn.LSTMState(c, h), z, action)
    cell = nn.LSTMCell(features=config.hidden_size)
    (flax_c, flax_h), _ = jax.jit(cell.apply)(
        {"params": flax_params}, (c, h), jnp.concatenate([z, action], -1)
    )
    np.testing.assert_allclose(state.c, flax_c, atol=1e-5)
    np.testing.assert_allclose(state.h, flax_h, atol=1e-5)


def test_forward_sequence_equals_python_loop_of_forward_step():
    params = _params(SMALL)
    batch = _random_batch(1, SMALL, batch_size=3, seq_len=9)
    z = batch.mu[:, :-1]
    scanned = _forward_sequence(SMALL, params, z, batch.actions, batch.restarts)
    assert bool(batch.restarts[:, 1:].any())  # resets happen mid-sequence too
    state = mdn_rnn.initial_state(SMALL, (3,))
    for t in range(9):
        state, output = _forward_step(
            SMALL, params, state, z[:, t], batch.actions[:, t], batch.restarts[:, t]
        )
        for got, want in zip(scanned, output, strict=True):
            np.testing.assert_allclose(got[:, t], want, atol=1e-5, rtol=1e-5)


def _forward_sequence_with_state_by_steps(
    config, params, z, actions, restarts=None, initial_state=None
):
    """Reference: a python loop of forward_step, differentiated by autodiff."""
    state = mdn_rnn.initial_state(config, z.shape[:1]) if initial_state is None else initial_state
    outputs = []
    for t in range(z.shape[1]):
        restart = None if restarts is None else restarts[:, t]
        state, output = mdn_rnn.forward_step(config, params, state, z[:, t], actions[:, t], restart)
        outputs.append(output)
    return jax.tree.map(lambda *steps: jnp.stack(steps, axis=1), *outputs), state


def _forward_sequence_by_steps(config, params, z, actions, restarts=None):
    return _forward_sequence_with_state_by_steps(config, params, z, actions, restarts)[0]


def _random_lstm_state(seed, batch_size, hidden_size):
    c, h = jax.random.normal(jax.random.key(seed), (2, batch_size, hidden_size))
    return mdn_rnn.LSTMState(c=c, h=jnp.tanh(h))


# Three of the six (restarts, use_restart) pairs: each kind of reset once, and M both with and
# without the restart input (each pair compiles two gradients: ~15 s of the suite apiece).
@pytest.mark.parametrize(
    ("restarts", "use_restart"), [("mid_sequence", True), ("never", False), ("carried", True)]
)
def test_lstm_custom_vjp_gradients_equal_autodiff(monkeypatch, use_restart, restarts):
    """Gradients w.r.t. params, and with a carried state also w.r.t. it and through its end."""
    config = dataclasses.replace(SMALL, use_restart=use_restart)
    params = _params(config)
    batch = _random_batch(4, config, batch_size=3, seq_len=9)
    initial = None
    if restarts == "mid_sequence":
        assert bool(batch.restarts[:, 1:].any())  # resets happen mid-sequence too
    else:  # "carried": rows 0, 1 continue from a given state, row 2 restarts at step 0
        batch = batch._replace(restarts=np.zeros_like(batch.restarts))
        if restarts == "carried":
            batch.restarts[2, [0, 5]] = True
            initial = _random_lstm_state(8, 3, config.hidden_size)
    final_weights = jax.random.normal(jax.random.key(9), (3, config.hidden_size))

    def loss_and_grads():  # a new function each time, so jit traces it afresh (no cache hit)
        def objective(params, initial):
            loss, (metrics, final) = mdn_rnn_train.loss_with_state(
                jax.random.key(5), config, params, batch, initial
            )
            # The final state is the next window's initial state: its gradient path counts.
            return loss + jnp.sum(final_weights * (final.h + final.c)), metrics

        return jax.jit(jax.value_and_grad(objective, argnums=(0, 1), has_aux=True))

    (_, metrics), grads = loss_and_grads()(params, initial)
    monkeypatch.setattr(
        mdn_rnn, "forward_sequence_with_state", _forward_sequence_with_state_by_steps
    )
    (_, want_metrics), want_grads = loss_and_grads()(params, initial)
    chex.assert_trees_all_close(metrics, want_metrics, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grads, want_grads, rtol=1e-5, atol=1e-6)
    assert float(jnp.max(jnp.abs(grads[0]["lstm"]["kernel"]))) > 1e-3  # not trivially zero
    if restarts == "carried":
        d_initial = grads[1]
        assert float(jnp.min(jnp.abs(d_initial.h[:2]).max(-1))) > 1e-4  # continued rows
        np.testing.assert_array_equal(d_initial.h[2], 0.0)  # a restart cuts the gradient
        np.testing.assert_array_equal(d_initial.c[2], 0.0)


def test_a_window_continued_from_the_carried_state_equals_one_long_window():
    params = _params(SMALL)
    batch = _random_batch(11, SMALL, batch_size=3, seq_len=10)
    z = batch.mu[:, :-1]
    whole, whole_final = jax.jit(mdn_rnn.forward_sequence_with_state, static_argnums=0)(
        SMALL, params, z, batch.actions, batch.restarts
    )
    first = jax.jit(mdn_rnn.forward_sequence_with_state, static_argnums=0)
    _, carry = first(SMALL, params, z[:, :6], batch.actions[:, :6], batch.restarts[:, :6])
    second, final = first(
        SMALL, params, z[:, 6:], batch.actions[:, 6:], batch.restarts[:, 6:], carry
    )
    chex.assert_trees_all_close(second, jax.tree.map(lambda x: x[:, 6:], whole), atol=1e-5)
    chex.assert_trees_all_close(final, whole_final, atol=1e-5)


def test_lstm_custom_vjp_gradient_wrt_inputs_without_restarts():
    """forward_sequence(restarts=None), differentiated w.r.t. z and actions too; jit == no jit."""
    params = _params(SMALL)
    batch = _random_batch(6, SMALL, batch_size=2, seq_len=5)
    weights = jax.random.normal(jax.random.key(7), (2, 5, 4, 3))

    def objective(forward, params, z, actions):
        output = forward(SMALL, params, z, actions)
        return jnp.sum(weights * output.mu) + jnp.sum(output.log_pi) + jnp.sum(output.reward)

    grad_fn = jax.grad(objective, argnums=(1, 2, 3))
    args = (params, batch.mu[:, :-1], batch.actions)
    got = jax.jit(grad_fn, static_argnums=0)(mdn_rnn.forward_sequence, *args)
    want = jax.jit(grad_fn, static_argnums=0)(_forward_sequence_by_steps, *args)
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(grad_fn(mdn_rnn.forward_sequence, *args), got, rtol=1e-5, atol=1e-6)


def test_restart_zeroes_the_state_before_the_step():
    params = _params(SMALL)
    c, h, z, action = (
        jax.random.normal(jax.random.key(i), shape)
        for i, shape in enumerate([(2, 16), (2, 16), (2, 4), (2, 2)])
    )
    state, zeros = mdn_rnn.LSTMState(c, h), mdn_rnn.initial_state(SMALL, (2,))
    restart, never = jnp.array([True, False]), jnp.array([False, False])
    got, _ = _forward_step(SMALL, params, state, z, action, restart)
    fresh, _ = _forward_step(SMALL, params, zeros, z, action, restart)
    kept, _ = _forward_step(SMALL, params, state, z, action, never)
    np.testing.assert_allclose(got.h[0], fresh.h[0])  # reset row: as if from zeros
    np.testing.assert_allclose(got.c[0], fresh.c[0])
    np.testing.assert_allclose(got.h[1], kept.h[1])  # the other row kept its memory
    assert not np.allclose(got.h[1], fresh.h[1])


def test_jit_equals_no_jit():
    params = _params(SMALL)
    batch = _random_batch(1, SMALL, batch_size=2, seq_len=4)
    key = jax.random.key(2)
    state = mdn_rnn.initial_state(SMALL, (2,))
    args = (
        key,
        SMALL,
        params,
        state,
        batch.mu[:, 0],
        batch.actions[:, 0],
        0.7,
        batch.restarts[:, 0],
    )
    eager = mdn_rnn.step(*args)  # op by op; eager loss_fn agrees too, but costs seconds of dispatch
    chex.assert_trees_all_close(_step(*args), eager, atol=1e-5, rtol=1e-5)


def test_no_retrace_across_train_steps_and_temperatures(monkeypatch):
    chex.clear_trace_counter()
    monkeypatch.setattr(
        mdn_rnn_train, "loss_with_state", chex.assert_max_traces(mdn_rnn_train.loss_with_state, n=1)
    )
    # A train config of its own, so make_train's cache cannot hand back an already-traced step.
    train_config = dataclasses.replace(SMALL_TRAIN, learning_rate=2e-3)
    _, train_step = mdn_rnn_train.make_train(SMALL, train_config)
    state = _small_train()[0](jax.random.key(0))
    for i in range(3):
        batch = _random_batch(10 + i, SMALL, batch_size=2, seq_len=4)
        state, metrics = train_step(jax.random.key(i), state, batch)
    assert int(state.step) == 3 and set(metrics) >= {"loss", "z_nll", "grad_norm"}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def dream_step(key, params, lstm_state, z, action, temperature):
        return mdn_rnn.step(key, SMALL, params, lstm_state, z, action, temperature)

    lstm_state = mdn_rnn.initial_state(SMALL)
    for i, temperature in enumerate([0.1, 1.0, 1.15, 1.3]):
        key = jax.random.key(i)
        dream_step(key, state.params, lstm_state, jnp.zeros(4), jnp.zeros(2), temperature)


def test_vmap_over_temperature():
    params = _params(SMALL)
    state = mdn_rnn.initial_state(SMALL)

    def dream_step(temperature):
        key = jax.random.key(3)
        return mdn_rnn.step(key, SMALL, params, state, jnp.ones(4), jnp.ones(2), temperature)

    temperatures = jnp.array([0.5, 1.0, 1.3])
    batched = jax.jit(jax.vmap(dream_step))(temperatures)
    single = jax.jit(dream_step)
    for i, temperature in enumerate(temperatures):
        chex.assert_trees_all_close(
            jax.tree.map(lambda x, i=i: x[i], batched), single(temperature), atol=1e-6
        )


def _mixture_moments(pi, mu, sigma, temperature):
    """Mean and variance of the τ-tempered mixture: π ∝ π^(1/τ), σ² → τσ²."""
    weights = pi ** (1.0 / temperature)
    weights = weights / weights.sum()
    mean = np.sum(weights * mu)
    return mean, np.sum(weights * (temperature * sigma**2 + mu**2)) - mean**2


def test_sampling_statistics_follow_temperature():
    pi, mu, sigma = np.array([0.6, 0.3, 0.1]), np.array([-2.0, 0.0, 3.0]), np.array([0.3, 0.5, 1])
    num_samples, latent_dim = 40_000, 2
    shape = (num_samples, latent_dim, 3)
    output = mdn_rnn.MDNOutput(
        log_pi=jnp.broadcast_to(jnp.log(pi), shape),
        mu=jnp.broadcast_to(mu, shape),
        log_sigma=jnp.broadcast_to(jnp.log(sigma), shape),
        done_logit=jnp.zeros(num_samples),
        reward=jnp.zeros(num_samples),
    )
    sample = jax.jit(mdn_rnn.sample_next)
    variances = []
    for temperature in (0.5, 1.0, 2.0):
        z = np.asarray(sample(jax.random.key(0), output, temperature))
        mean, variance = _mixture_moments(pi, mu, sigma, temperature)
        np.testing.assert_allclose(z.mean(0), mean, atol=0.04)
        np.testing.assert_allclose(z.var(0), variance, rtol=0.05)
        variances.append(z.var())
    assert variances[0] < variances[1] < variances[2]  # larger τ spreads more

    # τ → 0 concentrates on the most likely component's mean; τ = 0 is exactly that mean.
    z = sample(jax.random.key(1), output, 1e-3)
    np.testing.assert_allclose(z, -2.0, atol=0.05)
    np.testing.assert_array_equal(sample(jax.random.key(1), output, 0.0), -2.0)


def _toy_batch(rng, batch_size, seq_len):
    """z(t+1) = tanh(z(t) W + a(t) U): a deterministic map M should learn."""
    W = np.array([[0.9, -0.6, 0.0, 0.3], [0.5, 0.8, -0.4, 0.0], [0.0, 0.3, 0.7, -0.8],
                  [-0.6, 0.0, 0.5, 0.9]])  # fmt: skip
    U = np.array([[1.0, 0.0, -0.5, 0.5], [0.0, 1.0, 0.5, -0.5]])
    actions = rng.uniform(-1, 1, (batch_size, seq_len, 2))
    mu = np.empty((batch_size, seq_len + 1, 4))
    mu[:, 0] = rng.normal(size=(batch_size, 4))
    for t in range(seq_len):
        mu[:, t + 1] = np.tanh(mu[:, t] @ W + actions[:, t] @ U)
    flags = np.zeros((batch_size, seq_len), bool)
    restarts = flags.copy()
    restarts[:, 0] = True  # fresh sequences: nothing carried over from the last batch
    return mdn_rnn_train.SequenceBatch(
        mu=mu.astype(np.float32),
        logvar=np.full(mu.shape, -12.0, np.float32),
        actions=actions.astype(np.float32),
        restarts=restarts,
        dones=flags,
        rewards=np.zeros((batch_size, seq_len), np.float32),
        mask=~flags,
    )


def test_learns_a_deterministic_map():
    train_config = mdn_rnn_train.MDNTrainConfig(batch_size=32, seq_len=12, learning_rate=1e-2)
    init_state, train_step = mdn_rnn_train.make_train(TOY, train_config)
    state = init_state(jax.random.key(0))
    rng, key = np.random.default_rng(0), jax.random.key(1)
    losses = []
    for i in range(300):
        state, metrics = train_step(jax.random.fold_in(key, i), state, _toy_batch(rng, 32, 12))
        losses.append(metrics["z_nll"])  # on a fresh batch, before the update
    assert all(np.isfinite(np.asarray(value)).all() for value in metrics.values())
    untrained, trained = float(losses[0]), float(np.mean(losses[-20:]))
    # A unit Gaussian scores ≈ 1.1 nats here; σ ≈ 0.05 scores -1.5 (it reaches ≈ -2.3).
    assert untrained > 0.8
    assert trained < -1.5, (untrained, trained)


def test_done_loss_weights_positives_ten_times():
    params = _fresh_params(SMALL)
    params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
    done_index = SMALL.latent_dim * SMALL.num_mixtures * 3
    params["head"]["bias"] = params["head"]["bias"].at[done_index : done_index + 2].set([0.7, 0.25])
    batch = _random_batch(1, SMALL, batch_size=2, seq_len=4)
    dones = np.array([[0, 0, 0, 1], [0, 1, 0, 0]], bool)
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], bool)  # [1, 2] and [1, 3] are padding
    rewards = np.array([[1.0, 0.0, -1.0, 2.0], [0.5, 0.5, 9.0, 9.0]], np.float32)
    batch = batch._replace(dones=dones, mask=mask, rewards=rewards)
    loss, metrics = _loss_fn(jax.random.key(2), SMALL, params, batch)

    # tf.nn.weighted_cross_entropy_with_logits(pos_weight=10) by hand, over the real steps.
    real = mask | dones
    p_done = 1.0 / (1.0 + np.exp(-0.7))
    per_step = np.where(dones, -10.0 * np.log(p_done), -np.log(1.0 - p_done))
    np.testing.assert_allclose(metrics["done_loss"], per_step[real].mean(), rtol=1e-5)
    np.testing.assert_allclose(
        metrics["reward_loss"], np.square(0.25 - rewards[real]).mean(), rtol=1e-5
    )
    np.testing.assert_allclose(
        loss, metrics["z_nll"] + metrics["done_loss"] + metrics["reward_loss"], rtol=1e-5
    )


def test_a_pessimistic_reward_head_pays_more_for_over_prediction():
    config = dataclasses.replace(SMALL, reward_over_weight=5.0)
    params = _fresh_params(config)
    params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
    reward_index = config.latent_dim * config.num_mixtures * 3 + 1
    params["head"]["bias"] = params["head"]["bias"].at[reward_index].set(0.25)  # predicts 0.25
    batch = _random_batch(1, config, batch_size=1, seq_len=4)
    rewards = np.array([[1.0, 0.0, -1.0, 0.25]], np.float32)
    batch = batch._replace(rewards=rewards, mask=np.ones((1, 4), bool))
    _, metrics = _loss_fn(jax.random.key(2), config, params, batch)
    excess = 0.25 - rewards[0]
    expected = np.where(excess > 0, 5.0, 1.0) * np.square(excess)
    np.testing.assert_allclose(metrics["reward_loss"], expected.mean(), rtol=1e-5)


def test_reward_targets_below_the_floor_are_raised_to_it():
    config = dataclasses.replace(SMALL, reward_min=-1.0)
    params = _fresh_params(config)
    params["head"]["kernel"] = jnp.zeros_like(params["head"]["kernel"])
    reward_index = config.latent_dim * config.num_mixtures * 3 + 1
    params["head"]["bias"] = params["head"]["bias"].at[reward_index].set(0.25)  # predicts 0.25
    batch = _random_batch(1, config, batch_size=1, seq_len=4)
    rewards = np.array([[3.3, -0.1, -100.0, -1.5]], np.float32)  # CarRacing: tile, frame, off
    batch = batch._replace(rewards=rewards, mask=np.ones((1, 4), bool))
    _, metrics = _loss_fn(jax.random.key(2), config, params, batch)
    expected = np.square(0.25 - np.array([3.3, -0.1, -1.0, -1.0]))
    np.testing.assert_allclose(metrics["reward_loss"], expected.mean(), rtol=1e-5)
    _, unclipped = _loss_fn(jax.random.key(2), SMALL, params, batch)
    assert float(unclipped["reward_loss"]) > 100 * float(metrics["reward_loss"])


def test_training_stays_finite_with_extreme_inputs():
    init_state, train_step = _small_train()
    state = init_state(jax.random.key(0))
    # Huge head weights: log σ far below/above its bounds, μ of order 1e3.
    params = jax.tree.map(lambda x: x * 1e3, state.params)
    batch = _random_batch(1, SMALL, batch_size=2, seq_len=4)
    batch = batch._replace(
        mu=batch.mu * 1e5, logvar=jnp.full(batch.logvar.shape, -40.0), rewards=batch.rewards * 1e6
    )
    new_state, metrics = train_step(jax.random.key(2), state.replace(params=params), batch)
    # loss, z_nll, done_loss, reward_loss, grad_norm
    assert all(np.isfinite(np.asarray(value)).all() for value in metrics.values())
    assert float(metrics["z_nll"]) > 1e3 and float(metrics["grad_norm"]) > 1.0
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(new_state.params))
    restarts = jnp.zeros(2, bool)
    _, output = _forward_step(SMALL, params, mdn_rnn.initial_state(SMALL, (2,)), batch.mu[:, 0],
                              batch.actions[:, 0], restarts)  # fmt: skip
    assert float(jnp.abs(output.mu).max()) > 100.0
    assert float(output.log_sigma.min()) >= mdn_rnn.LOG_SIGMA_MIN - 1e-3  # smooth bound
    assert float(output.log_sigma.max()) <= mdn_rnn.LOG_SIGMA_MAX


@pytest.mark.parametrize("field", mdn_rnn_train.SequenceBatch._fields)
def test_bad_batch_shape_names_the_field(field):
    params = _params(SMALL)
    batch = _random_batch(1, SMALL, batch_size=2, seq_len=4)
    value = getattr(batch, field)
    bad = batch._replace(**{field: value[:, :-1] if field != "actions" else value[..., :1]})
    with pytest.raises(ValueError, match=rf"SequenceBatch\.{field}: expected shape"):
        mdn_rnn_train.loss_fn(jax.random.key(2), SMALL, params, bad)


def test_train_step_rejects_a_batch_of_the_wrong_length():
    init_state, train_step = _small_train()  # seq_len 4
    batch = _random_batch(1, SMALL, batch_size=2, seq_len=5)
    with pytest.raises(ValueError, match=r"SequenceBatch\.mu: expected shape \(2, 5, 4\), got"):
        train_step(jax.random.key(0), init_state(jax.random.key(0)), batch)


def test_forward_step_rejects_wrong_sizes():
    params = _params(SMALL)
    state = mdn_rnn.initial_state(SMALL, (2,))
    with pytest.raises(ValueError, match=r"z: expected shape \(\.\.\., 4\)"):
        mdn_rnn.forward_step(SMALL, params, state, jnp.zeros((2, 5)), jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"action: expected shape \(\.\.\., 2\)"):
        mdn_rnn.forward_step(SMALL, params, state, jnp.zeros((2, 4)), jnp.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"restart: expected shape \(2,\)"):
        mdn_rnn.forward_step(
            SMALL, params, state, jnp.zeros((2, 4)), jnp.zeros((2, 2)), jnp.zeros(3, bool)
        )


def test_train_raises_naming_the_step_when_the_loss_goes_nan():
    train_config = SMALL_TRAIN
    good = _random_batch(1, SMALL, batch_size=2, seq_len=4)
    bad = good._replace(mu=np.full_like(good.mu, np.nan))
    seen = []
    with pytest.raises(FloatingPointError, match="diverged at step 3: loss"):
        mdn_rnn_train.train(
            jax.random.key(0),
            SMALL,
            train_config,
            [good, good, bad, bad, bad, bad],
            on_step=lambda step, metrics: seen.append(step),
            check_every=2,
        )
    assert seen == [1, 2, 3, 4]  # counted from 1; the check after step 4 finds step 3


def test_heads_that_are_off_are_neither_trained_nor_reported():
    config = dataclasses.replace(SMALL, predict_done=False, predict_reward=False)
    batch = _random_batch(3, config, batch_size=2, seq_len=4)
    loss, metrics = _loss_fn(jax.random.key(0), config, _fresh_params(config), batch)
    assert set(metrics) == {"loss", "z_nll"}
    np.testing.assert_allclose(loss, metrics["z_nll"])


@pytest.mark.parametrize("bound", ["soft", "none"])
def test_dream_step_samples_like_sample_next_on_the_normalised_head(bound):
    # `step` samples from the raw head (softmax of logits / τ, the chosen log σ bounded as
    # config.log_sigma_bound says); `sample_next` from the normalised one: the same
    # distribution, the same draws.
    config = dataclasses.replace(SMALL, log_sigma_bound=bound)
    params = _fresh_params(config)
    params["head"]["kernel"] = params["head"]["kernel"] * 4.0  # log σ where the bound bites
    state = mdn_rnn.initial_state(config, (64,))
    z = jax.random.normal(jax.random.key(1), (64, 4))
    action = jax.random.uniform(jax.random.key(2), (64, 2), minval=-1, maxval=1)
    for i, temperature in enumerate([1e-6, 0.5, 1.15]):
        key = jax.random.key(10 + i)
        new_state, z_next, _, _ = _step(key, config, params, state, z, action, temperature)
        reference_state, output = mdn_rnn.forward_step(config, params, state, z, action)
        chex.assert_trees_all_close(new_state, reference_state, atol=1e-6)
        reference = jax.jit(mdn_rnn.sample_next)(key, output, temperature)
        np.testing.assert_allclose(z_next, reference, atol=1e-5)


def test_train_step_carries_each_rows_state_to_the_next_window():
    init_state, train_step = _small_train()  # windows="stream", the default
    state = init_state(jax.random.key(0))
    assert state.carry.h.shape == state.carry.c.shape == (2, 16) and not state.carry.h.any()
    batch = _random_batch(1, SMALL, batch_size=2, seq_len=4)
    batch = batch._replace(restarts=np.zeros_like(batch.restarts))  # both rows continue
    carried = state.replace(carry=_random_lstm_state(3, 2, 16))
    key = jax.random.key(4)
    new_state, metrics = train_step(key, carried, batch)
    loss, (_, final) = jax.jit(mdn_rnn_train.loss_with_state, static_argnums=1)(
        key, SMALL, carried.params, batch, carried.carry
    )
    chex.assert_trees_all_close(new_state.carry, final, atol=1e-6)  # the next window's start
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-5)
    _, from_zeros = train_step(key, state, batch)
    assert abs(float(from_zeros["loss"] - metrics["loss"])) > 1e-4  # the carry is used

    # Random windows: nothing carried, every window from zeros.
    init_random, step_random = mdn_rnn_train.make_train(
        SMALL, dataclasses.replace(SMALL_TRAIN, windows="random")
    )
    random_state = init_random(jax.random.key(0))
    assert random_state.carry is None
    random_state, random_metrics = step_random(key, random_state, batch)
    assert random_state.carry is None
    np.testing.assert_allclose(random_metrics["loss"], from_zeros["loss"], rtol=1e-5)


@pytest.mark.parametrize("mode", ["value", "global_norm"])
def test_gradients_are_clipped_per_element_as_the_authors(mode):
    # World Models code: tf.clip_by_value(grad, -1, 1); the default since it is the authors'.
    train_config = mdn_rnn_train.MDNTrainConfig(grad_clip_mode=mode)
    optimizer = mdn_rnn_train.make_optimizer(train_config)
    params = {"b": jnp.zeros(2), "w": jnp.zeros(3)}
    grads = {"b": jnp.array([-0.5, 0.1]), "w": jnp.array([5.0, 0.3, -0.2])}
    _, opt_state = optimizer.update(grads, optimizer.init(params), params)
    adam = opt_state[1][0]
    assert isinstance(adam, optax.ScaleByAdamState)
    clipped = jax.tree.map(lambda m: m / 0.1, adam.mu)  # after one step m = (1 - β1) · g
    if mode == "value":  # the 5 becomes 1, the others are untouched
        want = {"b": [-0.5, 0.1], "w": [1.0, 0.3, -0.2]}
    else:  # every element scaled by 1 / global norm
        norm = np.sqrt(0.25 + 0.01 + 25.0 + 0.09 + 0.04)
        want = jax.tree.map(lambda g: np.asarray(g) / norm, grads)
    chex.assert_trees_all_close(clipped, {k: np.asarray(v) for k, v in want.items()}, rtol=1e-5)


def test_doom_learning_rate_decays_as_the_authors():
    # doomrnn/rnn_train.py: lr = (lr_init - min_lr) · decay^step + min_lr.
    schedule = mdn_rnn_train.learning_rate_schedule(mdn_rnn_train.DOOM_TRAIN)
    steps = np.array([0, 1, 1_000, 100_000, 1_000_000])
    want = (1e-3 - 1e-5) * 0.99999**steps + 1e-5
    np.testing.assert_allclose(jax.jit(schedule)(steps), want, rtol=1e-5)
    np.testing.assert_allclose(want[[0, 3, 4]], [1e-3, 3.742e-4, 1.0045e-5], rtol=1e-3)
    assert mdn_rnn_train.learning_rate_schedule(mdn_rnn_train.MDNTrainConfig()) == 1e-3  # CarRacing

    # The optimiser follows it: Adam's step on a constant gradient is lr(t) (m̂ / √v̂ = 1).
    fast = dataclasses.replace(mdn_rnn_train.DOOM_TRAIN, learning_rate_decay=0.5)
    optimizer = mdn_rnn_train.make_optimizer(fast)
    params = jnp.zeros(1)
    opt_state = optimizer.init(params)
    for step in range(4):
        updates, opt_state = optimizer.update(jnp.full(1, 0.5), opt_state, params)
        np.testing.assert_allclose(-updates, (1e-3 - 1e-5) * 0.5**step + 1e-5, rtol=1e-4)


@pytest.mark.parametrize("bound", ["soft", "none"])
def test_log_sigma_bound_is_switchable(bound):
    config = dataclasses.replace(SMALL, log_sigma_bound=bound)
    params = _fresh_params(config)
    params["head"]["kernel"] = params["head"]["kernel"] * 4.0  # log σ well outside [-1, 1]
    batch = _random_batch(2, config, batch_size=2, seq_len=5)
    key = jax.random.key(3)
    noise = np.asarray(jax.random.normal(key, batch.mu.shape))  # loss_fn's resampling of z
    z = (batch.mu + np.exp(0.5 * batch.logvar) * noise).astype(np.float32)
    output = _forward_sequence(config, params, z[:, :-1], batch.actions, batch.restarts)
    state, hidden = mdn_rnn.initial_state(config, (2,)), []
    for t in range(5):
        args = (z[:, t], batch.actions[:, t], batch.restarts[:, t])
        state, _ = _forward_step(config, params, state, *args)
        hidden.append(state.h)
    raw = mdn_rnn._head_raw(config, params, jnp.stack(hidden, axis=1))[2]
    if bound == "none":  # the authors' formula: log σ is the head's output
        np.testing.assert_allclose(output.log_sigma, raw, atol=1e-5)
    else:  # smooth, inside [LOG_SIGMA_MIN, LOG_SIGMA_MAX], and not the identity inside
        assert float(jnp.max(jnp.abs(output.log_sigma - raw))) > 1e-3
        np.testing.assert_allclose(output.log_sigma, mdn_rnn._bound_log_sigma(raw), atol=1e-5)
        assert float(output.log_sigma.max()) <= mdn_rnn.LOG_SIGMA_MAX
    np.testing.assert_allclose(
        mdn_rnn._bound_log_sigma(jnp.array([-3.0, 0.0])), [-2.9887, -0.126], atol=1e-3
    )

    # The loss is the mixture NLL under that log σ (World Models: Σ_k π_k N(z; μ_k, σ_k)).
    log_sigma = np.asarray(raw if bound == "none" else mdn_rnn._bound_log_sigma(raw), np.float64)
    scaled = (z[:, 1:, :, None] - np.asarray(output.mu)) * np.exp(-log_sigma)
    log_normal = -0.5 * scaled**2 - log_sigma - 0.5 * np.log(2 * np.pi)
    log_prob = np.logaddexp.reduce(np.asarray(output.log_pi) + log_normal, axis=-1)
    _, metrics = _loss_fn(key, config, params, batch)
    np.testing.assert_allclose(metrics["z_nll"], -log_prob[batch.mask].mean(), rtol=1e-4)


def test_bad_training_choices_raise_naming_the_field():
    with pytest.raises(ValueError, match="windows='sliding'"):
        mdn_rnn_train.make_train(SMALL, dataclasses.replace(SMALL_TRAIN, windows="sliding"))
    with pytest.raises(ValueError, match="grad_clip_mode='norm'"):
        mdn_rnn_train.make_optimizer(dataclasses.replace(SMALL_TRAIN, grad_clip_mode="norm"))
    config = dataclasses.replace(SMALL, log_sigma_bound="hard")
    with pytest.raises(ValueError, match="log_sigma_bound='hard'"):
        mdn_rnn.forward_step(
            config, _params(SMALL), mdn_rnn.initial_state(SMALL), jnp.zeros(4), jnp.zeros(2)
        )


def test_the_one_draw_uniform_and_normal_are_independent_with_the_right_laws():
    # The dream's sampler draws the component's uniform and the noise from one threefry call
    # (mdn_rnn._uniform_and_normal); they must be as jax.random.uniform / normal, independent.
    from scipy import stats

    u, noise = jax.jit(mdn_rnn._uniform_and_normal, static_argnums=1)(
        jax.random.key(3), (50_000, 4)
    )
    u, noise = np.asarray(u).ravel(), np.asarray(noise).ravel()
    assert u.min() >= 0.0 and u.max() < 1.0 and np.all(np.isfinite(noise))
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    assert stats.kstest(noise, "norm").pvalue > 1e-3
    assert abs(np.corrcoef(u, noise)[0, 1]) < 0.01  # 200,000 pairs: σ of r is 0.0022
    assert abs(np.corrcoef(u, noise**2)[0, 1]) < 0.01
    low, high = noise[u < 0.5], noise[u >= 0.5]  # the noise's law does not depend on u
    assert stats.ks_2samp(low, high).pvalue > 1e-3
    # Another key gives other numbers; the same key the same ones.
    again = jax.jit(mdn_rnn._uniform_and_normal, static_argnums=1)(jax.random.key(3), (50_000, 4))
    other = jax.jit(mdn_rnn._uniform_and_normal, static_argnums=1)(jax.random.key(4), (50_000, 4))
    np.testing.assert_array_equal(np.asarray(again[1]).ravel(), noise)
    assert not np.allclose(np.asarray(other[1]).ravel(), noise)
