"""M: the MDN-RNN that predicts the next latent z(t+1) from [z(t), a(t)] (World Models §2.2).

An LSTM followed by one dense layer that emits, for every latent dimension, a mixture of
`num_mixtures` 1-D Gaussians (log π, μ, log σ; no correlations), plus optional done and reward
heads. Everything here is pure JAX; `config` objects are static, weights and the sampling
temperature are traced.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wm_jax.lstm import LSTMState, lstm_layer
from wm_jax.lstm import reset as _reset
from wm_jax.lstm import update as _lstm_update

Params = Any

# Not in the paper (MDNRNNConfig.log_sigma_bound = "soft", the default): σ is bounded smoothly to
# [e^-7, e^2] ≈ [9e-4, 7.4]. Latents are ~N(0, 1) and are resampled from the VAE posterior every
# batch, so a narrower σ is never needed, and the bound keeps 1/σ and exp(log σ) from
# overflowing (a known failure of MDN losses: they "go negative or explode"). The bound is not
# the identity inside: raw log σ -3 comes out as -2.989, 0 as -0.126 (on trained weights the
# loss moves by ~0.008 against the paper's formula); "none" is the authors' raw log σ.
LOG_SIGMA_MIN = -7.0
LOG_SIGMA_MAX = 2.0
# τ → 0 means "most likely component, no noise"; the floor keeps log π / τ finite.
MIN_TEMPERATURE = 1e-6
_LOG_SQRT_2PI = 0.5 * math.log(2.0 * math.pi)


@dataclasses.dataclass(frozen=True)
class MDNRNNConfig:
    """Sizes of M (World Models, Appendix)."""

    latent_dim: int = 32
    action_dim: int = 3  # Doom: 1 (the controller's scalar output)
    hidden_size: int = 256  # Doom: 512
    num_mixtures: int = 5
    use_restart: bool = False  # Doom: True, input [z, a, restart] (66)
    predict_done: bool = False  # Doom: True, one extra logit
    predict_reward: bool = False  # needed to train CarRacing in the dream
    done_pos_weight: float = 10.0  # World Models code (doomrnn.py): BCE positives weighted ×10
    # "soft" (not in the paper, see LOG_SIGMA_MIN) or "none" (the authors' raw log σ). The loss
    # and the dream's sampler (`step`) both follow it, so M is dreamed with what it was trained on.
    log_sigma_bound: str = "soft"


CAR_RACING = MDNRNNConfig()
DOOM = MDNRNNConfig(64, 1, 512, use_restart=True, predict_done=True)


@dataclasses.dataclass(frozen=True)
class MDNTrainConfig:
    """Optimisation of M (World Models code: Adam 1e-3, gradients clipped to [-1, 1], batch 100).

    `windows` says how batches are cut (`wm_jax.data.sequence_batches`): "stream" (default)
    is doomrnn's rnn_train.py, every batch row a stream of whole episodes whose LSTM state is
    carried from one train step to the next (in `MDNTrainState.carry`), so every step of an
    episode, the first included, is trained equally often and from the state the dream has
    there; "random" is windows starting at random steps, each from a zero state.
    """

    batch_size: int = 100
    seq_len: int = 999  # Doom: 500
    learning_rate: float = 1e-3
    grad_clip: float = 1.0
    # World Models code: tf.clip_by_value(grad, -1, 1), per element ("value"); or "global_norm".
    grad_clip_mode: str = "value"
    num_steps: int = 4000
    # World Models code: lr = (learning_rate - min_learning_rate) · decay^step + min_learning_rate;
    # decay 1.0 (CarRacing) is a constant rate, Doom's is 0.99999 down to 1e-5.
    learning_rate_decay: float = 1.0
    min_learning_rate: float = 1e-5
    windows: str = "stream"  # or "random"


DOOM_TRAIN = MDNTrainConfig(seq_len=500, learning_rate_decay=0.99999, min_learning_rate=1e-5)
WINDOWS = ("stream", "random")
GRAD_CLIP_MODES = ("value", "global_norm")
LOG_SIGMA_BOUNDS = ("soft", "none")


class MDNOutput(NamedTuple):
    log_pi: jax.Array  # (..., Z, K) normalised mixture log-weights
    mu: jax.Array  # (..., Z, K)
    log_sigma: jax.Array  # (..., Z, K)
    done_logit: jax.Array  # (...,) zeros when config.predict_done is False
    reward: jax.Array  # (...,) zeros when config.predict_reward is False


class SequenceBatch(NamedTuple):
    mu: jax.Array  # (B, T+1, Z) VAE posterior means
    logvar: jax.Array  # (B, T+1, Z) VAE posterior log-variances
    actions: jax.Array  # (B, T, A)
    restarts: jax.Array  # (B, T) bool, set where step t is an episode's first
    dones: jax.Array  # (B, T) bool, the episode ended after action t
    rewards: jax.Array  # (B, T) reward for action t
    mask: jax.Array  # (B, T) bool, z(t+1) is a valid target


class MDNTrainState(flax.struct.PyTreeNode):
    params: Params
    opt_state: optax.OptState
    step: jax.Array
    # windows="stream": each batch row's LSTM state (B, H) after the last window, the next
    # window's initial state; None otherwise (and in checkpoints written before streams).
    carry: LSTMState | None = None


def _input_size(config: MDNRNNConfig) -> int:
    return config.latent_dim + config.action_dim + int(config.use_restart)


def _output_size(config: MDNRNNConfig) -> int:
    mixture = config.latent_dim * config.num_mixtures * 3
    return mixture + int(config.predict_done) + int(config.predict_reward)


def init_params(key: jax.Array, config: MDNRNNConfig) -> Params:
    """LSTM with one fused kernel over [x, h] (gates i, f, g, o) and a dense output head."""
    key_input, key_recurrent, key_head = jax.random.split(key, 3)
    hidden = config.hidden_size
    input_kernel = jax.nn.initializers.lecun_normal()(key_input, (_input_size(config), 4 * hidden))
    orthogonal = jax.nn.initializers.orthogonal()
    recurrent_kernel = jnp.concatenate(
        [orthogonal(k, (hidden, hidden)) for k in jax.random.split(key_recurrent, 4)], axis=1
    )
    # Forget-gate bias 1: the cell remembers by default early in training (Jozefowicz et al., 2015).
    bias = jnp.zeros((4 * hidden,)).at[hidden : 2 * hidden].set(1.0)
    head_kernel = jax.nn.initializers.lecun_normal()(key_head, (hidden, _output_size(config)))
    return {
        "lstm": {"kernel": jnp.concatenate([input_kernel, recurrent_kernel]), "bias": bias},
        "head": {"kernel": head_kernel, "bias": jnp.zeros((_output_size(config),))},
    }


def initial_state(config: MDNRNNConfig, batch_shape: tuple[int, ...] = ()) -> LSTMState:
    zeros = jnp.zeros((*batch_shape, config.hidden_size), jnp.float32)
    return LSTMState(c=zeros, h=zeros)


def _check_last_dim(name: str, array: jax.Array, size: int) -> None:
    if jnp.ndim(array) < 1 or jnp.shape(array)[-1] != size:
        raise ValueError(f"{name}: expected shape (..., {size}), got {jnp.shape(array)}")


def _inputs(config: MDNRNNConfig, z, action, restart) -> jax.Array:
    """[z, a] (+ restart flag as a float when config.use_restart), float32 (..., input)."""
    _check_last_dim("z", z, config.latent_dim)
    _check_last_dim("action", action, config.action_dim)
    batch_shape = jnp.shape(z)[:-1]
    if jnp.shape(action)[:-1] != batch_shape:
        raise ValueError(
            f"action: expected shape {(*batch_shape, config.action_dim)}, "
            f"got {jnp.shape(action)} (z has shape {jnp.shape(z)})"
        )
    if restart is not None and jnp.shape(restart) != batch_shape:
        raise ValueError(f"restart: expected shape {batch_shape}, got {jnp.shape(restart)}")
    parts = [jnp.asarray(z, jnp.float32), jnp.asarray(action, jnp.float32)]
    if config.use_restart:
        flag = jnp.zeros(batch_shape) if restart is None else jnp.asarray(restart, jnp.float32)
        parts.append(flag[..., None])
    return jnp.concatenate(parts, axis=-1)


def _bound_log_sigma(raw: jax.Array) -> jax.Array:
    """Smooth clamp to [LOG_SIGMA_MIN, LOG_SIGMA_MAX]: ≈ identity inside, never a zero gradient."""
    lower = LOG_SIGMA_MIN + jax.nn.softplus(raw - LOG_SIGMA_MIN)
    return LOG_SIGMA_MAX - jax.nn.softplus(LOG_SIGMA_MAX - lower)


def _log_sigma(config: MDNRNNConfig, raw: jax.Array) -> jax.Array:
    """log σ from the head's raw output, as config.log_sigma_bound says."""
    if config.log_sigma_bound == "soft":
        return _bound_log_sigma(raw)
    if config.log_sigma_bound == "none":
        return raw
    raise ValueError(
        f"log_sigma_bound={config.log_sigma_bound!r}: choose one of {LOG_SIGMA_BOUNDS}"
    )


def _head_raw(config: MDNRNNConfig, params: Params, h: jax.Array):
    """Unnormalised head: logits, μ, raw log σ (..., Z, K); done logit, reward (...,)."""
    out = h @ params["head"]["kernel"] + params["head"]["bias"]
    batch_shape = out.shape[:-1]
    size = config.latent_dim * config.num_mixtures * 3
    # World Models code layout: per latent dimension [logits (K), μ (K), log σ (K)].
    mixture = out[..., :size].reshape(*batch_shape, config.latent_dim, 3 * config.num_mixtures)
    logits, mu, raw_log_sigma = jnp.split(mixture, 3, axis=-1)
    extra = out[..., size:]
    zeros = jnp.zeros(batch_shape, out.dtype)
    done_logit = extra[..., 0] if config.predict_done else zeros
    reward = extra[..., int(config.predict_done)] if config.predict_reward else zeros
    return logits, mu, raw_log_sigma, done_logit, reward


def _head(config: MDNRNNConfig, params: Params, h: jax.Array) -> MDNOutput:
    logits, mu, raw_log_sigma, done_logit, reward = _head_raw(config, params, h)
    return MDNOutput(
        log_pi=jax.nn.log_softmax(logits, axis=-1),
        mu=mu,
        log_sigma=_log_sigma(config, raw_log_sigma),
        done_logit=done_logit,
        reward=reward,
    )


def _lstm_step(config: MDNRNNConfig, params: Params, state: LSTMState, z, action, restart):
    x = _inputs(config, z, action, restart)
    state = _reset(state, restart)
    gates = jnp.concatenate([x, state.h], axis=-1) @ params["lstm"]["kernel"]
    return _lstm_update(state, gates + params["lstm"]["bias"])


def forward_step(
    config: MDNRNNConfig,
    params: Params,
    state: LSTMState,
    z: jax.Array,
    action: jax.Array,
    restart: jax.Array | None = None,
) -> tuple[LSTMState, MDNOutput]:
    """One LSTM step; the state is zeroed where `restart` is set, *before* the step.

    Args:
        z: (..., Z); action: (..., A); restart: (...,) bool or None.
    Returns:
        The new state (..., H) and the mixture predicting z(t+1).
    """
    state = _lstm_step(config, params, state, z, action, restart)
    return state, _head(config, params, state.h)


def _sample(key, logits, mu, log_sigma, temperature, bound=lambda x: x) -> jax.Array:
    """z(t+1) from a mixture given by logits (any shift), μ and log σ (..., Z, K).

    World Models §4.4: log π / τ, then noise × √τ. The component is drawn by inverse CDF, one
    uniform per latent dimension (Gumbel-max needs K logs of logs), and `bound` is applied to the
    chosen log σ only: the dream's sampling costs a softmax, not a log-softmax plus K clamps.
    """
    key_component, key_noise = jax.random.split(key)
    temperature = jnp.asarray(temperature, jnp.float32)
    probs = jax.nn.softmax(logits / jnp.maximum(temperature, MIN_TEMPERATURE)[..., None, None])
    cdf = jnp.cumsum(probs, axis=-1)  # (..., Z, K)
    u = jax.random.uniform(key_component, cdf.shape[:-1] + (1,), minval=1e-7)  # in (0, 1)
    # Component k is chosen when cdf[k-1] < u <= cdf[k]; scaling by cdf[-1] absorbs rounding.
    component = jnp.sum(cdf[..., :-1] < u * cdf[..., -1:], axis=-1, keepdims=True)
    mu = jnp.take_along_axis(mu, component, axis=-1)[..., 0]
    log_sigma = bound(jnp.take_along_axis(log_sigma, component, axis=-1)[..., 0])
    noise = jax.random.normal(key_noise, mu.shape)
    scale = jnp.sqrt(jnp.maximum(temperature, 0.0))[..., None]
    return mu + jnp.exp(log_sigma) * scale * noise


def sample_next(key: jax.Array, output: MDNOutput, temperature: jax.Array | float) -> jax.Array:
    """z(t+1) at temperature τ (World Models §4.4): log π / τ, then noise × √τ.

    Args:
        temperature: scalar or (...,) matching the batch shape; traced, so vmap over it works.
    Returns:
        z_next (..., Z).
    """
    return _sample(key, output.log_pi, output.mu, output.log_sigma, temperature)


def step(
    key: jax.Array,
    config: MDNRNNConfig,
    params: Params,
    state: LSTMState,
    z: jax.Array,
    action: jax.Array,
    temperature: jax.Array | float,
    restart: jax.Array | None = None,
) -> tuple[LSTMState, jax.Array, jax.Array, jax.Array]:
    """The dream's transition: (state, z_next (..., Z), done_logit (...,), reward (...,)).

    The same numbers as `sample_next(key, forward_step(...)[1], temperature)`, computed on the
    raw head (see `_sample`).
    """
    state = _lstm_step(config, params, state, z, action, restart)
    logits, mu, raw_log_sigma, done_logit, reward = _head_raw(config, params, state.h)
    bound = functools.partial(_log_sigma, config)
    z_next = _sample(key, logits, mu, raw_log_sigma, temperature, bound=bound)
    return state, z_next, done_logit, reward


def forward_sequence(
    config: MDNRNNConfig,
    params: Params,
    z: jax.Array,
    actions: jax.Array,
    restarts: jax.Array | None = None,
    initial_state: LSTMState | None = None,
) -> MDNOutput:
    """Teacher-forced pass over (B, T, ...) inputs from `initial_state` (B, H; None: zeros)."""
    return forward_sequence_with_state(config, params, z, actions, restarts, initial_state)[0]


def forward_sequence_with_state(
    config: MDNRNNConfig,
    params: Params,
    z: jax.Array,
    actions: jax.Array,
    restarts: jax.Array | None = None,
    initial_state: LSTMState | None = None,
) -> tuple[MDNOutput, LSTMState]:
    """`forward_sequence` and the LSTM state (B, H) after its last step, via `lax.scan`."""
    if jnp.ndim(z) != 3:
        raise ValueError(f"z: expected shape (B, T, {config.latent_dim}), got {jnp.shape(z)}")
    x = _inputs(config, z, actions, restarts)  # (B, T, input)
    if restarts is None:
        restarts = jnp.zeros(x.shape[:2], bool)
    if initial_state is None:
        zeros = jnp.zeros((x.shape[0], config.hidden_size), jnp.float32)
        initial_state = LSTMState(c=zeros, h=zeros)
    # Time-major for the scan; x is the narrowest tensor to transpose, not the gates (4H).
    hidden, final = lstm_layer(
        jnp.swapaxes(x, 0, 1),  # (T, B, input)
        jnp.swapaxes(jnp.asarray(restarts, bool), 0, 1),  # (T, B)
        params["lstm"]["kernel"],
        params["lstm"]["bias"],
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), initial_state),
    )  # (T, B, H)
    return _head(config, params, jnp.swapaxes(hidden, 0, 1)), final  # head on (B, T, H) at once


def _mixture_log_prob(output: MDNOutput, z: jax.Array) -> jax.Array:
    """log p(z) per latent dimension (..., Z), by log-sum-exp over the components."""
    scaled = (z[..., None] - output.mu) * jnp.exp(-output.log_sigma)
    log_normal = -0.5 * jnp.square(scaled) - output.log_sigma - _LOG_SQRT_2PI
    return jax.nn.logsumexp(output.log_pi + log_normal, axis=-1)


def _validate_batch(config: MDNRNNConfig, batch: SequenceBatch, batch_size=None, seq_len=None):
    """Raise ValueError naming the first SequenceBatch field with a wrong shape."""
    if not isinstance(batch, SequenceBatch):
        raise TypeError(f"batch: expected a SequenceBatch, got {type(batch).__name__}")
    shapes = {name: tuple(jnp.shape(value)) for name, value in batch._asdict().items()}
    if batch_size is None or seq_len is None:
        # (B, T) as most fields say, so the error names the odd field out.
        votes = [
            (s[0], s[1] - (name in ("mu", "logvar"))) for name, s in shapes.items() if len(s) >= 2
        ]
        voted = collections.Counter(votes).most_common(1)[0][0] if votes else (None, None)
        batch_size = voted[0] if batch_size is None else batch_size
        seq_len = voted[1] if seq_len is None else seq_len
    if seq_len is None or seq_len < 1:
        raise ValueError(f"SequenceBatch: needs T ≥ 1 steps, got shapes {shapes}")
    flags = (batch_size, seq_len)
    expected = {
        "mu": (batch_size, seq_len + 1, config.latent_dim),
        "logvar": (batch_size, seq_len + 1, config.latent_dim),
        "actions": (*flags, config.action_dim),
        "restarts": flags,
        "dones": flags,
        "rewards": flags,
        "mask": flags,
    }
    for name, shape in expected.items():
        if shapes[name] != shape:
            raise ValueError(f"SequenceBatch.{name}: expected shape {shape}, got {shapes[name]}")


def loss_fn(
    key: jax.Array,
    config: MDNRNNConfig,
    params: Params,
    batch: SequenceBatch,
    initial_state: LSTMState | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mixture NLL of z(t+1) (+ weighted done BCE, + reward MSE), averaged over valid steps.

    z is resampled from N(mu, exp(logvar)) with `key`; inputs z(0..T-1), targets z(1..T).
    The z NLL is averaged over `mask` × latent dims; the done and reward losses over steps that
    are real (`mask | dones`), since an episode's last action has a done but no next frame.
    Args:
        initial_state: the LSTM state (B, H) before step 0 (None: zeros); rows whose step 0 is
            a restart start from zeros regardless.
    Returns:
        (loss, metrics) with metrics loss, z_nll and, for the heads that are on, done_loss and
        reward_loss.
    """
    loss, (metrics, _) = loss_with_state(key, config, params, batch, initial_state)
    return loss, metrics


def loss_with_state(
    key: jax.Array,
    config: MDNRNNConfig,
    params: Params,
    batch: SequenceBatch,
    initial_state: LSTMState | None = None,
) -> tuple[jax.Array, tuple[dict[str, jax.Array], LSTMState]]:
    """`loss_fn` as (loss, (metrics, the LSTM state (B, H) after step T-1)), for `grad`'s aux."""
    _validate_batch(config, batch)
    mu = jnp.asarray(batch.mu, jnp.float32)
    noise = jax.random.normal(key, mu.shape)
    z = mu + jnp.exp(0.5 * jnp.asarray(batch.logvar, jnp.float32)) * noise
    output, final_state = forward_sequence_with_state(
        config, params, z[:, :-1], batch.actions, batch.restarts, initial_state
    )
    mask = jnp.asarray(batch.mask, bool)
    log_prob = _mixture_log_prob(output, z[:, 1:])  # (B, T, Z)
    z_nll = -jnp.sum(jnp.where(mask[..., None], log_prob, 0.0)) / (
        jnp.maximum(jnp.sum(mask), 1) * config.latent_dim
    )
    real = mask | jnp.asarray(batch.dones, bool)
    num_real = jnp.maximum(jnp.sum(real), 1)
    dones = jnp.asarray(batch.dones, jnp.float32)
    # World Models code: tf.nn.weighted_cross_entropy_with_logits(pos_weight=10), in log space.
    done_bce = config.done_pos_weight * dones * jax.nn.softplus(-output.done_logit) + (
        1.0 - dones
    ) * jax.nn.softplus(output.done_logit)
    done_loss = jnp.sum(jnp.where(real, done_bce, 0.0)) / num_real
    reward_error = jnp.square(output.reward - jnp.asarray(batch.rewards, jnp.float32))
    reward_loss = jnp.sum(jnp.where(real, reward_error, 0.0)) / num_real
    loss, metrics = z_nll, {"z_nll": z_nll}
    if config.predict_done:  # a head that is off is neither trained nor reported
        loss, metrics["done_loss"] = loss + done_loss, done_loss
    if config.predict_reward:
        loss, metrics["reward_loss"] = loss + reward_loss, reward_loss
    return loss, ({"loss": loss, **metrics}, final_state)


def learning_rate_schedule(train_config: MDNTrainConfig) -> float | Callable[[jax.Array], Any]:
    """World Models code: lr(step) = (lr - min_lr) · decay^step + min_lr; a float if decay is 1."""
    if train_config.learning_rate_decay == 1.0:
        return train_config.learning_rate  # constant: the optimiser state has no step count
    initial, floor = train_config.learning_rate, train_config.min_learning_rate
    # exp(step · log decay), log taken in float64: float32(0.99999)^1e6 would be ~3% off.
    log_decay = math.log(train_config.learning_rate_decay)

    def schedule(step: jax.Array) -> jax.Array:
        return (initial - floor) * jnp.exp(jnp.asarray(step, jnp.float32) * log_decay) + floor

    return schedule


def make_optimizer(train_config: MDNTrainConfig) -> optax.GradientTransformation:
    """Gradient clipping (per element by default, as the authors), then Adam."""
    if train_config.grad_clip_mode == "value":  # World Models code: tf.clip_by_value
        clip = optax.clip(train_config.grad_clip)
    elif train_config.grad_clip_mode == "global_norm":
        clip = optax.clip_by_global_norm(train_config.grad_clip)
    else:
        raise ValueError(
            f"grad_clip_mode={train_config.grad_clip_mode!r}: choose one of {GRAD_CLIP_MODES}"
        )
    return optax.chain(clip, optax.adam(learning_rate_schedule(train_config)))


@functools.cache  # configs are frozen and hashable: equal configs share one compiled step
def make_train(config: MDNRNNConfig, train_config: MDNTrainConfig):
    """Returns jitted (init_state(key) -> MDNTrainState, train_step(key, state, batch)).

    With train_config.windows == "stream" the state carries each batch row's LSTM state from
    one step's window to the next (doomrnn's rnn_train.py feeds `final_state` back as
    `initial_state`); gradients stop at the window boundary, as there.
    """
    if train_config.windows not in WINDOWS:
        raise ValueError(f"windows={train_config.windows!r}: choose one of {WINDOWS}")
    optimizer = make_optimizer(train_config)
    stream = train_config.windows == "stream"

    def init_state(key: jax.Array) -> MDNTrainState:
        params = init_params(key, config)
        carry = initial_state(config, (train_config.batch_size,)) if stream else None
        return MDNTrainState(
            params=params, opt_state=optimizer.init(params), step=jnp.array(0), carry=carry
        )

    def train_step(key: jax.Array, state: MDNTrainState, batch: SequenceBatch):
        # Shapes are static: a mismatch is caught once, at trace time, without a host sync.
        _validate_batch(config, batch, train_config.batch_size, train_config.seq_len)
        grad_fn = jax.value_and_grad(loss_with_state, argnums=2, has_aux=True)
        (_, (metrics, final_state)), grads = grad_fn(
            key, config, state.params, batch, state.carry if stream else None
        )
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        return state.replace(
            params=params,
            opt_state=opt_state,
            step=state.step + 1,
            carry=final_state if stream else None,
        ), metrics

    return jax.jit(init_state), jax.jit(train_step)


def check_finite(metrics: dict, step: int) -> None:
    """Host-side divergence check, meant every N steps: raises FloatingPointError naming `step`."""
    for name in sorted(metrics, key=lambda name: name != "loss"):  # the total loss first
        value = np.asarray(metrics[name])
        if not np.all(np.isfinite(value)):
            raise FloatingPointError(
                f"MDN-RNN training diverged at step {step}: {name} = {value} (not finite)"
            )


def train(
    key: jax.Array,
    config: MDNRNNConfig,
    train_config: MDNTrainConfig,
    batches: Iterable[SequenceBatch],
    state: MDNTrainState | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    check_every: int = 100,
) -> MDNTrainState:
    """Streams `batches` until train_config.num_steps; checks for NaN every `check_every` steps."""
    key_init, key_train = jax.random.split(key)
    init_state, train_step = make_train(config, train_config)
    if state is None:
        state = init_state(key_init)
    start = int(state.step)
    metrics = None
    for step_index, batch in zip(range(start, train_config.num_steps), batches, strict=False):
        state, metrics = train_step(jax.random.fold_in(key_train, step_index), state, batch)
        if on_step is not None:
            on_step(step_index, metrics)
        if (step_index + 1) % check_every == 0:
            check_finite(metrics, step_index)
    if metrics is not None:
        check_finite(metrics, int(state.step) - 1)
    return state
