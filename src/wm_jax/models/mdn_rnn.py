"""M: the MDN-RNN that predicts the next latent z(t+1) from [z(t), a(t)] (World Models §2.2).

An LSTM followed by one dense layer that emits, for every latent dimension, a mixture of
`num_mixtures` 1-D Gaussians (log π, μ, log σ; no correlations), plus optional done and reward
heads. Everything here is pure JAX; `config` objects are static, weights and the sampling
temperature are traced.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from wm_jax.core import kernels
from wm_jax.models.lstm import LSTMState, lstm_layer, lstm_scan
from wm_jax.models.lstm import reset as _reset
from wm_jax.models.lstm import update as _lstm_update

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
    # Not in the paper: reward predicted above the real one costs this many times more than below
    # (a pessimistic reward head, so the dream does not pay for what the game does not; 1: MSE).
    reward_over_weight: float = 1.0
    # Not in the paper: reward targets below this are raised to it (None: off). CarRacing pays
    # -100 once, on leaving the playfield: 23 steps in 337,576 hold 48 % of the reward's
    # variance, and a squared error spreads that penalty over every state that looks like
    # driving fast (experiments/README.md). The dream ends at M's done, so a penalty of -1
    # still costs C every tile it would have reached (DQN's reward clipping, one-sided).
    reward_min: float | None = None
    # "soft" (not in the paper, see LOG_SIGMA_MIN) or "none" (the authors' raw log σ). The loss
    # and the dream's sampler (`step`) both follow it, so M is dreamed with what it was trained on.
    log_sigma_bound: str = "soft"


CAR_RACING = MDNRNNConfig()
DOOM = MDNRNNConfig(64, 1, 512, use_restart=True, predict_done=True)


LOG_SIGMA_BOUNDS = ("soft", "none")


class MDNOutput(NamedTuple):
    log_pi: jax.Array  # (..., Z, K) normalised mixture log-weights
    mu: jax.Array  # (..., Z, K)
    log_sigma: jax.Array  # (..., Z, K)
    done_logit: jax.Array  # (...,) zeros when config.predict_done is False
    reward: jax.Array  # (...,) zeros when config.predict_reward is False


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
    The uniform and the noise come from one random draw (`_uniform_and_normal`).
    """
    temperature = jnp.asarray(temperature, jnp.float32)
    probs = jax.nn.softmax(logits / jnp.maximum(temperature, MIN_TEMPERATURE)[..., None, None])
    cdf = jnp.cumsum(probs, axis=-1)  # (..., Z, K)
    u, noise = _uniform_and_normal(key, cdf.shape[:-1])  # (..., Z) each
    u = jnp.maximum(u, 1e-7)[..., None]  # in (0, 1)
    # Component k is chosen when cdf[k-1] < u <= cdf[k]; scaling by cdf[-1] absorbs rounding.
    component = jnp.sum(cdf[..., :-1] < u * cdf[..., -1:], axis=-1, keepdims=True)
    mu = jnp.take_along_axis(mu, component, axis=-1)[..., 0]
    log_sigma = bound(jnp.take_along_axis(log_sigma, component, axis=-1)[..., 0])
    scale = jnp.sqrt(jnp.maximum(temperature, 0.0))[..., None]
    return mu + jnp.exp(log_sigma) * scale * noise


def _uniform_and_normal(key: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    """(u in [0, 1), standard normal), each `shape`, from one `jax.random.bits` draw.

    The dream draws both every step; one draw of 2 × shape words is one threefry call where
    `split` + `uniform` + `normal` are three (XLA:CPU runs each as its own rolled loop, which is
    what a small batch of rollouts waits on). The words become floats as `jax.random.uniform`
    and `jax.random.normal` make them: 23 mantissa bits, then √2 erfinv of (-1, 1).
    """
    bits = jax.random.bits(key, (2, *shape), jnp.uint32)
    one = jnp.array(1.0, jnp.float32).view(jnp.uint32)
    floats = jax.lax.bitcast_convert_type((bits >> 9) | one, jnp.float32) - 1.0  # [0, 1)
    low = jnp.nextafter(jnp.float32(-1.0), jnp.float32(0.0))  # erfinv(-1) is -inf
    symmetric = jnp.maximum(low, 2.0 * floats[1] - 1.0)
    return floats[0], math.sqrt(2.0) * jax.scipy.special.erfinv(symmetric)


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
    # The backend's LSTM (wm_jax.core.kernels): the fused backward pass or autodiff of the scan.
    layer = lstm_layer if kernels.active().lstm == "fused" else lstm_scan
    hidden, final = layer(
        jnp.swapaxes(x, 0, 1),  # (T, B, input)
        jnp.swapaxes(jnp.asarray(restarts, bool), 0, 1),  # (T, B)
        params["lstm"]["kernel"],
        params["lstm"]["bias"],
        jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), initial_state),
    )  # (T, B, H)
    return _head(config, params, jnp.swapaxes(hidden, 0, 1)), final  # head on (B, T, H) at once
