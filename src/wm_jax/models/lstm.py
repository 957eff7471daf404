"""M's LSTM: one step, and the whole teacher-forced sequence with a cuDNN-style backward pass.

`wm_jax.models.mdn_rnn` builds the MDN-RNN on these. The state is zeroed where a restart flag is
set, *before* the step (World Models code, doomrnn.py: the flag starts a new episode inside a
training window). A sequence starts from a given state and returns its final one, so training
can carry the state from one window of an episode stream to the next (doomrnn's rnn_train.py).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class LSTMState(NamedTuple):
    c: jax.Array  # (..., H)
    h: jax.Array  # (..., H)


def reset(state: LSTMState, restart) -> LSTMState:
    if restart is None:
        return state
    keep = ~jnp.asarray(restart, bool)[..., None]
    return LSTMState(c=jnp.where(keep, state.c, 0.0), h=jnp.where(keep, state.h, 0.0))


def update(state: LSTMState, gates: jax.Array) -> LSTMState:
    in_gate, forget_gate, candidate, out_gate = jnp.split(gates, 4, axis=-1)
    c = jax.nn.sigmoid(forget_gate) * state.c + jax.nn.sigmoid(in_gate) * jnp.tanh(candidate)
    return LSTMState(c=c, h=jax.nn.sigmoid(out_gate) * jnp.tanh(c))


def lstm_scan(x, restarts, kernel, bias, initial: LSTMState):
    """The LSTM over time-major inputs x (T, B, input) from `initial` (B, H).

    The state is zeroed where `restarts` (T, B) is set, before the step.
    Returns:
        hidden states (T, B, H) and the final state (B, H).
    """
    input_gates, recurrent_kernel = _project(x, kernel, bias)

    def body(state, xs):
        gates, restart = xs  # (B, 4H), (B,)
        state = reset(state, restart)
        state = update(state, gates + state.h @ recurrent_kernel)
        return state, state.h

    final, hidden = jax.lax.scan(body, initial, (input_gates, restarts))
    return hidden, final


def _project(x, kernel, bias):
    """Input gates (T, B, 4H) and the recurrent kernel (H, 4H)."""
    num_inputs = x.shape[-1]
    # The input projection has no recurrence: one large matmul for all steps, outside the scan.
    input_gates = x @ kernel[:num_inputs] + bias
    return input_gates, kernel[num_inputs:]


@jax.custom_vjp
def lstm_layer(x, restarts, kernel, bias, initial: LSTMState):
    """`lstm_scan` with a hand-written backward pass (cuDNN-style), for training speed.

    Autodiff of the scan accumulates the kernel's gradient h(t-1)ᵀ · dgates(t) inside the
    reverse loop: T small (H, B) @ (B, 4H) matmuls. Here the reverse loop only carries (dh, dc)
    and emits dgates(t) (B, 4H); the whole fused kernel's gradient is then ONE
    (input + H, T·B) @ (T·B, 4H) matmul of [x(t), h(t-1)] with the stacked dgates after it.
    On CPU the train step is ~10% faster (batch 100 × seq 100) and, at the paper's sizes, needs
    ~25% less temporary memory.
    """
    return lstm_scan(x, restarts, kernel, bias, initial)


def lstm_layer_fwd(x, restarts, kernel, bias, initial):
    input_gates, recurrent_kernel = _project(x, kernel, bias)

    def body(state, xs):
        gates, restart = xs  # (B, 4H), (B,)
        state = reset(state, restart)
        in_gate, forget_gate, candidate, out_gate = jnp.split(
            gates + state.h @ recurrent_kernel, 4, axis=-1
        )
        i, f, o = jax.nn.sigmoid(in_gate), jax.nn.sigmoid(forget_gate), jax.nn.sigmoid(out_gate)
        g = jnp.tanh(candidate)
        c = f * state.c + i * g  # the operations of `update`
        h = o * jnp.tanh(c)
        return LSTMState(c=c, h=h), (h, state.c, jnp.concatenate([i, f, g, o], axis=-1))

    # hidden h(t), c(t-1) after the reset (T, B, H); activations i, f, g, o (T, B, 4H).
    final, (hidden, c_prev, activations) = jax.lax.scan(body, initial, (input_gates, restarts))
    return (hidden, final), (x, restarts, kernel, initial.h, hidden, c_prev, activations)


def lstm_layer_bwd(residuals, cotangents):
    x, restarts, kernel, initial_h, hidden, c_prev, activations = residuals
    d_hidden, d_final = cotangents  # (T, B, H); LSTMState (B, H) each
    num_inputs = x.shape[-1]
    keep = ~restarts[..., None]  # (T, B, 1)
    recurrent_kernel_t = kernel[num_inputs:].T  # (4H, H)

    def body(carry, xs):
        dh_next, dc_next = carry  # (B, H): d loss / d h(t), c(t) through step t+1
        dh_out, c_before, act, keep_t = xs  # (B, H), (B, H), (B, 4H), (B, 1)
        i, f, g, o = jnp.split(act, 4, axis=-1)
        tanh_c = jnp.tanh(f * c_before + i * g)  # c(t), recomputed rather than stored
        dh = dh_out + dh_next
        dc = dc_next + dh * o * (1.0 - tanh_c * tanh_c)
        d_gates = jnp.concatenate(  # through the sigmoids (i, f, o) and the tanh (g)
            [
                dc * g * i * (1.0 - i),
                dc * c_before * f * (1.0 - f),
                dc * i * (1.0 - g * g),
                dh * tanh_c * o * (1.0 - o),
            ],
            axis=-1,
        )  # (B, 4H)
        # A state zeroed by a restart passes no gradient back to step t-1.
        dh_prev = jnp.where(keep_t, d_gates @ recurrent_kernel_t, 0.0)
        dc_prev = jnp.where(keep_t, dc * f, 0.0)
        return (dh_prev, dc_prev), d_gates

    xs = (d_hidden, c_prev, activations, keep)
    # The final state's cotangent enters the reverse loop as that of h(T-1), c(T-1) through
    # "step T"; what leaves it is the initial state's (zero where step 0 restarts).
    (d_initial_h, d_initial_c), d_gates = jax.lax.scan(
        body, (d_final.h, d_final.c), xs, reverse=True
    )  # d_gates (T, B, 4H)
    # h(t-1) after the reset, and with x(t) the rows the fused kernel multiplies: (T, B, input + H).
    h_prev = jnp.where(keep, jnp.concatenate([initial_h[None], hidden[:-1]]), 0.0)
    inputs = jnp.concatenate([x, h_prev], axis=-1)
    # Σ_t [x(t), h(t-1)]ᵀ dgates(t) as one (input + H, T·B) @ (T·B, 4H) matmul.
    d_kernel = inputs.reshape(-1, inputs.shape[-1]).T @ d_gates.reshape(-1, d_gates.shape[-1])
    d_x = d_gates @ kernel[:num_inputs].T  # (T, B, input); dropped by jit when x is data
    d_initial = LSTMState(c=d_initial_c, h=d_initial_h)
    return d_x, None, d_kernel, jnp.sum(d_gates, axis=(0, 1)), d_initial


lstm_layer.defvjp(lstm_layer_fwd, lstm_layer_bwd)
