"""Hand-built M weights with known dream behaviour, shared by the dream/evolve/evaluate tests.

Layout of `mdn_rnn.init_params`: lstm kernel (input + H, 4H) with gates [i, f, g, o], lstm bias
(4H,), head kernel (H, Z*K*3 [+ done] [+ reward]) with per-latent [logits, mu, log_sigma].
"""

import jax
import jax.numpy as jnp

from wm_jax import dream
from wm_jax.models import controller, mdn_rnn

SATURATE = 20.0  # gate pre-activation that makes a sigmoid 1 (or 0 when negated)


def _zeros(config):
    return jax.tree.map(jnp.zeros_like, mdn_rnn.init_params(jax.random.key(0), config))


def _quiet_mixture(config, head_bias):
    """μ = 0, σ = e^-7 for every latent: z(t+1) ≈ 0 whatever τ."""
    for d in range(config.latent_dim):
        start = d * 3 * config.num_mixtures + 2 * config.num_mixtures
        head_bias = head_bias.at[start : start + config.num_mixtures].set(-SATURATE)
    return head_bias


def counter_model(done_at: int, latent_dim: int = 2, hidden_size: int = 2):
    """A Doom-like M whose done logit first exceeds 0 at step `done_at` (1-based).

    The cell counts: i = f = o = 1, g = tanh(0.5) so c_t = 0.4621 t, h_t = tanh(c_t); the done
    head is 10 (h_t - tanh(c at step done_at - 1/2)).
    """
    config = mdn_rnn.MDNRNNConfig(
        latent_dim=latent_dim,
        action_dim=1,
        hidden_size=hidden_size,
        num_mixtures=1,
        use_restart=True,
        predict_done=True,
    )
    params = _zeros(config)
    hidden = hidden_size
    bias = jnp.zeros(4 * hidden)
    bias = bias.at[0:hidden].set(SATURATE).at[hidden : 2 * hidden].set(SATURATE)
    bias = bias.at[2 * hidden : 3 * hidden].set(0.5).at[3 * hidden :].set(SATURATE)
    step_size = float(jnp.tanh(0.5))
    threshold = float(jnp.tanh(step_size * (done_at - 0.5)))
    head_kernel = params["head"]["kernel"].at[0, -1].set(10.0)
    head_bias = _quiet_mixture(config, params["head"]["bias"]).at[-1].set(-10.0 * threshold)
    params = {
        "lstm": {"kernel": params["lstm"]["kernel"], "bias": bias},
        "head": {"kernel": head_kernel, "bias": head_bias},
    }
    return config, params


def bump_reward_model(target: float = 0.5, sharpness: float = 3.0, width: float = 0.5):
    """A CarRacing-like M whose reward for action a is a bump with its maximum at a = target.

    Two cells see the action: c0 = tanh(k (a - target + w)), c1 = tanh(k (a - target - w)) and
    reward = h0 - h1 = tanh(c0) - tanh(c1), largest at a = target (per step, whatever came
    before, because the forget gate is shut).
    """
    config = mdn_rnn.MDNRNNConfig(
        latent_dim=2, action_dim=1, hidden_size=2, num_mixtures=1, predict_reward=True
    )
    params = _zeros(config)
    hidden = 2
    action_row = config.latent_dim  # inputs are [z, a]
    kernel = params["lstm"]["kernel"].at[action_row, 2 * hidden : 3 * hidden].set(sharpness)
    bias = jnp.zeros(4 * hidden)
    bias = bias.at[0:hidden].set(SATURATE).at[hidden : 2 * hidden].set(-SATURATE)
    bias = bias.at[3 * hidden :].set(SATURATE)
    bias = bias.at[2 * hidden : 3 * hidden].set(
        jnp.array([sharpness * (width - target), sharpness * (-width - target)])
    )
    head_kernel = params["head"]["kernel"].at[:, -1].set(jnp.array([1.0, -1.0]))
    head_bias = _quiet_mixture(config, params["head"]["bias"])
    params = {
        "lstm": {"kernel": kernel, "bias": bias},
        "head": {"kernel": head_kernel, "bias": head_bias},
    }
    best_reward = 2 * float(jnp.tanh(jnp.tanh(sharpness * width)))
    return config, params, best_reward


# Doom-shaped but tiny: z 4, LSTM 8, restart input, done head.
M_CONFIG = mdn_rnn.MDNRNNConfig(
    latent_dim=4, action_dim=1, hidden_size=8, num_mixtures=3, use_restart=True, predict_done=True
)
C_CONFIG = controller.ControllerConfig(
    inputs=("z", "c", "h"), latent_dim=4, hidden_size=8, action_dim=1, use_bias=False
)


def make(temperature=1.0, max_steps=30, model_key=0, done_bias=None):
    env, _ = dream.make_dream("doom_take_cover", M_CONFIG)
    m_params = mdn_rnn.init_params(jax.random.key(model_key), M_CONFIG)
    if done_bias is not None:
        m_params["head"]["bias"] = m_params["head"]["bias"].at[-1].set(done_bias)
    initial_mu = jax.random.normal(jax.random.key(10), (5, 4))
    initial_logvar = jnp.full((5, 4), -2.0)
    params = env.make_params(m_params, initial_mu, initial_logvar, temperature, max_steps)
    return env, params


def policy(params, obs):
    return controller.act(C_CONFIG, params, obs)


C_PARAMS = controller.init_params(jax.random.key(3), C_CONFIG, scale=0.5)
