"""Training M: the loss, the optimizer and the train step (World Models §2.2 and the authors'
rnn_train.py).

The loss is the mixture's negative log-likelihood of z(t+1) (per latent dimension, averaged
as the authors' code does) plus the done and reward heads' losses where M has them. The
optimizer is Adam with the authors' gradient clipping by value to [-1, 1] and Doom's decaying
learning rate. With `windows="stream"` every batch row is a stream of whole episodes and the
LSTM state is carried from one train step to the next in `MDNTrainState.carry`.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import optax

from wm_jax.core import kernels
from wm_jax.models import mdn_rnn
from wm_jax.models.lstm import LSTMState
from wm_jax.models.mdn_rnn import (
    _LOG_SQRT_2PI,
    MDNOutput,
    MDNRNNConfig,
    Params,
    init_params,
    initial_state,
)
from wm_jax.train import training_loop


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
    output, final_state = mdn_rnn.forward_sequence_with_state(
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
    rewards = jnp.asarray(batch.rewards, jnp.float32)
    if config.reward_min is not None:
        rewards = jnp.maximum(rewards, config.reward_min)
    excess = output.reward - rewards
    reward_error = jnp.where(excess > 0, config.reward_over_weight, 1.0) * jnp.square(excess)
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


# Configs are frozen and hashable: equal configs share one compiled step (one per kernel
# choice, wm_jax.core.kernels).
@kernels.cache_per_choice()
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


def train(
    key: jax.Array,
    config: MDNRNNConfig,
    train_config: MDNTrainConfig,
    batches: Iterable[SequenceBatch],
    state: MDNTrainState | None = None,
    on_step: Callable[[int, dict], None] | None = None,
    check_every: int = 100,
    progress: bool = False,
) -> MDNTrainState:
    """Streams `batches` until train_config.num_steps; checks for NaN every `check_every` steps.

    `wm_jax.train.training_loop.run` without checkpoints (the stage adds them); `on_step` gets
    the step counted from 1.
    """
    init_state, train_step = make_train(config, train_config)
    state, _ = training_loop.run(
        "M",
        key,
        train_step,
        init_state,
        lambda start: batches,
        train_config.num_steps,
        state=state,
        on_step=on_step,
        log_every=check_every,
        progress=progress,
    )
    return state
