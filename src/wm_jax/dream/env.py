"""The dream: M as a jittable gymnax environment (World Models §4.4-4.5).

The controller sees [z, h] (Doom: [z, c, h], the authors' `model_state_space == 2`); a step feeds
[z, a] (Doom: and the restart flag) to M, which samples z(t+1) at temperature τ. Rewards are +1
per step survived (Doom TakeCover) or M's reward head (CarRacing, only when M has one). An
episode is terminated when M's done logit > 0 (the authors' `doomrnn.py`) and truncated at
`max_steps_in_episode`.

gymnax 1.0.1 (as installed): `step_env` returns (obs, state, reward, terminated, info); the
base class's `step` adds `truncated = is_truncated(state, params)` (state.time >= params.
max_steps_in_episode) and auto-resets, returning (obs, state, reward, terminated, truncated,
info). This module follows that API.

M's weights, τ, the bank of initial codes and the step cap live in `DreamParams`, so they are
traced: new weights or another τ never recompile, and `vmap` over any of them works. M's sizes
(`MDNRNNConfig`) are static on the `DreamEnv` object.

Libraries that read `env.default_params` (gymnax's `make` and `experimental.RolloutWrapper`,
evosax's `GymnaxProblem`) need a dream that carries its params: `make` (like `gymnax.make`)
returns one, and `DreamEnv.with_params` gives any dream its params. A bare `DreamEnv` has none,
and `default_params` says how to build them.

    env, env_params = dream.make("doom_take_cover", m_config, m_params, mu, logvar, 1.15)
    # gymnax: an env object goes straight in (env_params may be left out).
    wrapper = gymnax.experimental.RolloutWrapper(forward, env=env, num_env_steps=100)
    # evosax GymnaxProblem takes names only: register the dream with gymnax once per process.
    gymnax.register("wm_jax/Dream-v0", lambda: env)
    problem = evosax.problems.GymnaxProblem("wm_jax/Dream-v0", policy, episode_length=100)

Those libraries hold the params as constants of their own jitted functions (their `self` is
static), so a new M or τ there means a new wrapper or problem and one compile; pass params
explicitly to this module's functions (`env.step(key, state, action, params)`,
`wm_jax.dream.rollout`) to keep them traced.
"""

from __future__ import annotations

import copy
from typing import Any

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from wm_jax.envs import registry
from wm_jax.models import mdn_rnn, vae

REWARD_KINDS = registry.REWARD_KINDS

# Per game: (reward kind, controller inputs), a view of each game's `GameSpec` (dream_reward,
# controller_inputs); step caps are the spec's max_steps (Doom TakeCover 2,100 frames, World
# Models, Appendix; CarRacing 1,000 steps). CarRacing's "model" reward is not in the paper (it
# trained CarRacing's C in the real game): M's reward head pays, and with predict_done the
# episode ends at M's done, so leaving the playfield costs its -100 once, as in the game. That
# needs data that records the game's done (`wm_jax.envs.collect` does;
# `done_records.require_done_records` refuses older stores): an M trained on the World Models
# code's full 1,000-frame rollouts never ends a dream and pays -100 every later step.
GAMES = registry.Table(lambda spec: (spec.dream_reward, spec.controller_inputs))


class DreamNotTrainableError(ValueError):
    """The world model cannot stand in for the game (e.g. CarRacing M without a reward head)."""


@struct.dataclass
class DreamState(environment.EnvState):
    memory: mdn_rnn.LSTMState  # c, h (H,) each
    z: jax.Array  # (Z,) the current latent code
    restart: jax.Array  # () bool: the next step is the episode's first (M's restart input)
    time: jax.Array  # () int32 steps taken


@struct.dataclass
class DreamParams(environment.EnvParams):
    model_params: Any = None  # M's weights (mdn_rnn.init_params layout)
    temperature: jax.Array | float = 1.0  # τ (World Models §4.4)
    initial_mu: jax.Array | None = None  # (N, Z) encodings of real first frames
    initial_logvar: jax.Array | None = None  # (N, Z)
    max_steps_in_episode: jax.Array | int = 2100


class DreamEnv(environment.Environment[DreamState, DreamParams]):
    """M as a gymnax environment; observations are the controller's features."""

    def __init__(
        self,
        config: mdn_rnn.MDNRNNConfig,
        reward: str = "survival",
        inputs: tuple[str, ...] = ("z", "h"),
    ):
        super().__init__()
        if reward not in REWARD_KINDS:
            raise ValueError(f"reward must be one of {REWARD_KINDS}, got {reward!r}")
        if reward == "model" and not config.predict_reward:
            raise DreamNotTrainableError(
                "cannot train in the dream with reward='model': this M has no reward head "
                "(MDNRNNConfig.predict_reward=False). Train M with predict_reward=True, or "
                "train the controller in the real game (wm_jax.es.evolve_real.train_in_real)."
            )
        if inputs[0] != "z" or any(name not in ("z", "c", "h") for name in inputs):
            raise ValueError(f"inputs must start with 'z' and name z, c, h; got {inputs}")
        self.config = config
        self.reward_kind = reward
        self.inputs = tuple(inputs)
        self._params: DreamParams | None = None  # default_params; set by with_params

    # The env is a static argument of jitted functions: hash and compare by value, so two
    # identical dreams share compiled code. Params a dream carries (`with_params`) compare by
    # identity: gymnax's `step(key, state, action)` without params traces `default_params` as
    # constants, so two dreams with different params must never share that compiled code.
    def _key(self):
        return (self.config, self.reward_kind, self.inputs)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return (
            type(other) is type(self)
            and other._key() == self._key()
            and other._params is self._params
        )

    @property
    def name(self) -> str:
        return "Dream"

    @property
    def obs_dim(self) -> int:
        sizes = {"z": self.config.latent_dim, "c": self.config.hidden_size}
        sizes["h"] = self.config.hidden_size
        return sum(sizes[name] for name in self.inputs)

    @property
    def action_dim(self) -> int:
        return self.config.action_dim

    @property
    def num_actions(self) -> int:
        """Action size, as gymnax's continuous envs report it (Pendulum-v1: 1)."""
        return self.config.action_dim

    @property
    def default_params(self) -> DreamParams:
        """The params this dream carries (`with_params`, `make`); a bare dream has none."""
        if self._params is None:
            raise ValueError(
                "a dream has no default params: build them with "
                "DreamEnv.make_params(model_params, initial_mu, initial_logvar, temperature), "
                "and for libraries that read env.default_params (gymnax.make, gymnax's "
                "RolloutWrapper, evosax's GymnaxProblem) give the dream its params with "
                "env.with_params(params), or build both with wm_jax.dream.make(...)"
            )
        return self._params

    def with_params(self, params: DreamParams) -> DreamEnv:
        """A copy of this dream whose `default_params` are `params` (built by `make_params`).

        The copy compares equal only to dreams that carry the same params object.
        """
        if not isinstance(params, DreamParams) or params.initial_mu is None:
            raise TypeError(
                f"with_params takes DreamParams from make_params, got {type(params).__name__}"
            )
        if params.initial_mu.shape[-1] != self.config.latent_dim:
            raise ValueError(
                f"params' initial_mu {params.initial_mu.shape} does not match this dream's "
                f"latent_dim {self.config.latent_dim}"
            )
        env = copy.copy(self)
        env._params = params
        return env

    def make_params(
        self,
        model_params: Any,
        initial_mu: jax.Array,
        initial_logvar: jax.Array,
        temperature: float = 1.0,
        max_steps: int = 2100,
    ) -> DreamParams:
        """Checks the shapes once, on the host, and packs them as traced params.

        Args:
          initial_mu, initial_logvar: (N, Z) V's encodings of N real first frames.
        """
        initial_mu = jnp.asarray(initial_mu, jnp.float32)
        initial_logvar = jnp.asarray(initial_logvar, jnp.float32)
        expected = (initial_mu.shape[0], self.config.latent_dim)
        if initial_mu.ndim != 2 or initial_mu.shape != expected or initial_mu.shape[0] < 1:
            raise ValueError(
                f"initial_mu must be (N >= 1, {self.config.latent_dim}), got {initial_mu.shape}"
            )
        if initial_logvar.shape != initial_mu.shape:
            raise ValueError(
                f"initial_logvar {initial_logvar.shape} must match initial_mu {initial_mu.shape}"
            )
        return DreamParams(
            model_params=model_params,
            temperature=jnp.asarray(temperature, jnp.float32),
            initial_mu=initial_mu,
            initial_logvar=initial_logvar,
            max_steps_in_episode=jnp.asarray(max_steps, jnp.int32),
        )

    def get_obs(self, state: DreamState, params=None, key=None) -> jax.Array:
        parts = {"z": state.z, "c": state.memory.c, "h": state.memory.h}
        return jnp.concatenate([parts[name] for name in self.inputs], axis=-1)

    def reset_env(self, key: jax.Array, params: DreamParams) -> tuple[jax.Array, DreamState]:
        """Start from z ~ N(μ, σ²) of a random real first frame (authors' `_sample_init_z`)."""
        key_index, key_noise = jax.random.split(key)
        index = jax.random.randint(key_index, (), 0, params.initial_mu.shape[0])
        mu, logvar = params.initial_mu[index], params.initial_logvar[index]
        z = mu + jnp.exp(logvar / 2) * jax.random.normal(key_noise, mu.shape)
        state = DreamState(
            memory=mdn_rnn.initial_state(self.config),
            z=z,
            restart=jnp.array(True),
            time=jnp.array(0, jnp.int32),
        )
        return self.get_obs(state), state

    def step_env(
        self, key: jax.Array, state: DreamState, action: jax.Array, params: DreamParams
    ) -> tuple[jax.Array, DreamState, jax.Array, jax.Array, dict]:
        action = jnp.reshape(jnp.asarray(action, jnp.float32), (self.config.action_dim,))
        restart = state.restart if self.config.use_restart else None
        memory, z_next, done_logit, model_reward = mdn_rnn.step(
            key,
            self.config,
            params.model_params,
            state.memory,
            state.z,
            action,
            params.temperature,
            restart=restart,
        )
        # World Models (doomrnn.py): +1 for every step alive, the step that ends it included.
        reward = model_reward if self.reward_kind == "model" else jnp.ones((), jnp.float32)
        terminated = (done_logit > 0) if self.config.predict_done else jnp.array(False)
        state = DreamState(memory=memory, z=z_next, restart=jnp.array(False), time=state.time + 1)
        info = {"done_logit": done_logit, "discount": 1.0 - terminated.astype(jnp.float32)}
        return self.get_obs(state), state, reward, terminated, info

    def is_terminated(self, state: DreamState, params: DreamParams) -> jax.Array:
        # Termination is M's prediction at the transition, reported by step_env; a state alone
        # does not carry it.
        return jnp.array(False)

    def action_space(self, params: DreamParams | None = None) -> spaces.Box:
        return spaces.Box(-1.0, 1.0, (self.config.action_dim,), jnp.float32)

    def observation_space(self, params: DreamParams) -> spaces.Box:
        return spaces.Box(-jnp.inf, jnp.inf, (self.obs_dim,), jnp.float32)


def make_dream(game: str, config: mdn_rnn.MDNRNNConfig) -> tuple[DreamEnv, int]:
    """The dream of a registered `game` (e.g. "doom_take_cover") and its step cap.

    Raises:
      DreamNotTrainableError: a game whose dream pays M's reward (CarRacing, MinAtar) with an M
        that has no reward head.
    """
    spec = registry.game_spec(game)
    if spec.dream_reward == "model" and not config.predict_reward:
        raise DreamNotTrainableError(
            f"cannot train {game} in the dream: its M has no reward head "
            "(MDNRNNConfig.predict_reward=False), so the dream has no reward to maximise. "
            "Train M with predict_reward=True, or evolve the controller in the real game "
            "(wm_jax.es.evolve_real.train_in_real), as the paper did."
        )
    env = DreamEnv(config, reward=spec.dream_reward, inputs=spec.controller_inputs)
    return env, spec.max_steps


def make(
    game: str,
    config: mdn_rnn.MDNRNNConfig,
    model_params: Any,
    initial_mu: jax.Array,
    initial_logvar: jax.Array,
    temperature: float = 1.0,
    max_steps: int | None = None,
) -> tuple[DreamEnv, DreamParams]:
    """`gymnax.make` for a dream: `(env, env_params)`, the env carrying them as `default_params`.

    `make_dream` + `make_params` + `with_params` in one call; `max_steps` defaults to the game's
    step cap. See the module docstring for handing the result to gymnax and evosax.
    """
    env, game_max_steps = make_dream(game, config)
    max_steps = game_max_steps if max_steps is None else max_steps
    params = env.make_params(model_params, initial_mu, initial_logvar, temperature, max_steps)
    return env.with_params(params), params


def render(vae_params: Any, z: jax.Array) -> jax.Array:
    """Decode latent codes to frames with V, for GIFs of dreams.

    Args:
      z: (..., Z)

    Returns:
      (..., 64, 64, 3) uint8
    """
    frames = vae.decode(vae_params, z)
    return jnp.round(jnp.clip(frames, 0.0, 1.0) * 255.0).astype(jnp.uint8)
