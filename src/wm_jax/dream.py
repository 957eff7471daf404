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
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import struct
from gymnax.environments import environment, spaces

from wm_jax import envs, mdn_rnn, vae

REWARD_KINDS = ("survival", "model")

# Per game: (reward kind, controller inputs); step caps come from `wm_jax.envs.game_spec`
# (Doom TakeCover 2,100 frames, World Models, Appendix; CarRacing 1,000 steps).
GAMES = {
    "doom_take_cover": ("survival", ("z", "c", "h")),
    "car_racing": ("model", ("z", "h")),
    # Not in the paper: the JAX-native demo; M must predict reward and done (its presets do).
    "minatar_breakout": ("model", ("z", "h")),
}


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
                "train the controller in the real game (wm_jax.evolve_real.train_in_real)."
            )
        if inputs[0] != "z" or any(name not in ("z", "c", "h") for name in inputs):
            raise ValueError(f"inputs must start with 'z' and name z, c, h; got {inputs}")
        self.config = config
        self.reward_kind = reward
        self.inputs = tuple(inputs)

    # The env is a static argument of jitted functions: hash and compare by value, so two
    # identical dreams share compiled code.
    def _key(self):
        return (self.config, self.reward_kind, self.inputs)

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return type(other) is type(self) and other._key() == self._key()

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
    def default_params(self) -> DreamParams:
        raise ValueError(
            "a dream has no default params: build them with "
            "DreamEnv.make_params(model_params, initial_mu, initial_logvar, temperature)"
        )

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
    """The dream of `game` ("doom_take_cover" or "car_racing") and its step cap.

    Raises:
      DreamNotTrainableError: CarRacing with an M that has no reward head.
    """
    if game not in GAMES:
        raise ValueError(f"no dream for game {game!r}; known: {sorted(GAMES)}")
    reward, inputs = GAMES[game]
    if reward == "model" and not config.predict_reward:
        raise DreamNotTrainableError(
            f"cannot train {game} in the dream: its M has no reward head "
            "(MDNRNNConfig.predict_reward=False), so the dream has no reward to maximise. "
            "Train M with predict_reward=True, or evolve the controller in the real game "
            "(wm_jax.evolve_real.train_in_real), as the paper did."
        )
    return DreamEnv(config, reward=reward, inputs=inputs), envs.game_spec(game).max_steps


def render(vae_params: Any, z: jax.Array) -> jax.Array:
    """Decode latent codes to frames with V, for GIFs of dreams.

    Args:
      z: (..., Z)

    Returns:
      (..., 64, 64, 3) uint8
    """
    frames = vae.decode(vae_params, z)
    return jnp.round(jnp.clip(frames, 0.0, 1.0) * 255.0).astype(jnp.uint8)


class RolloutResult(NamedTuple):
    episode_return: jax.Array  # () sum of rewards up to and including the done step
    length: jax.Array  # () int32 steps taken until done


class Trajectory(NamedTuple):
    obs: jax.Array  # (T, obs_dim) observation the action was chosen on
    z: jax.Array  # (T, Z) latent code at that observation (for `render`)
    action: jax.Array  # (T, A)
    reward: jax.Array  # (T,)
    done: jax.Array  # (T,) bool, the episode ended at this step
    valid: jax.Array  # (T,) bool, this step belongs to the episode


Policy = Callable[[Any, jax.Array], jax.Array]  # policy(policy_params, obs (obs_dim,)) -> (A,)


def _episode_step(env, env_params, policy, num_steps, carry, t, key, policy_params):
    """One step of an episode's (obs, state, return, length, alive) carry; rewards stop at done
    (the valid mask) and at `num_steps`. Step t uses `fold_in(key, t)`."""
    obs, state, episode_return, length, alive = carry
    alive = alive & (t < num_steps)
    action = policy(policy_params, obs)
    obs, state, reward, terminated, _ = env.step_env(
        jax.random.fold_in(key, t), state, action, env_params
    )
    done = terminated | env.is_truncated(state, env_params)
    episode_return = episode_return + jnp.where(alive, reward, 0.0)
    length = length + alive.astype(jnp.int32)
    return (obs, state, episode_return, length, alive & ~done)


def rollout(
    key: jax.Array,
    env: DreamEnv,
    env_params: DreamParams,
    policy: Policy,
    policy_params: Any,
    num_steps: int,
    chunk_size: int | None = None,
) -> RolloutResult:
    """One dream episode of at most `num_steps` steps; the return stops at done (valid mask).

    With `chunk_size`, steps run as a `lax.scan` of `chunk_size` inside a `lax.while_loop` that
    stops once the episode is done; under `vmap` the loop runs until every episode of the batch
    is done. Without it, one `lax.scan` of `num_steps` (the worst case). Step t uses the key
    `fold_in(key_steps, t)`, so both give identical numbers.
    """
    key_reset, key_steps = jax.random.split(key)
    obs, state = env.reset_env(key_reset, env_params)

    def one_step(carry, t):
        return _episode_step(
            env, env_params, policy, num_steps, carry, t, key_steps, policy_params
        ), None

    carry = (obs, state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.array(True))
    if chunk_size is None or chunk_size >= num_steps:
        carry, _ = jax.lax.scan(one_step, carry, jnp.arange(num_steps))
    else:
        num_chunks = math.ceil(num_steps / chunk_size)

        def cond(loop):
            chunk, carry = loop
            return (chunk < num_chunks) & carry[-1]

        def body(loop):
            chunk, carry = loop
            steps = chunk * chunk_size + jnp.arange(chunk_size)
            carry, _ = jax.lax.scan(one_step, carry, steps)
            return chunk + 1, carry

        _, carry = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry))
    return RolloutResult(episode_return=carry[2], length=carry[3])


def rollout_batch(
    keys: jax.Array,
    env: DreamEnv,
    env_params: DreamParams,
    policy: Policy,
    policy_params: Any,
    num_steps: int,
    chunk_size: int,
    min_bucket: int = 32,
) -> RolloutResult:
    """A batch of dream episodes that stops spending compute on the ones already done.

    Same numbers as `vmap(rollout)` over the batch, but each `chunk_size`-step chunk runs only
    on the episodes still alive: they are gathered to the front and the chunk runs on the
    smallest of the sizes B, B/2, B/4, ... (≥ `min_bucket`) that holds them all, one compiled
    branch per size under `lax.switch`. A plain "stop when all are done" loop rarely stops
    early for 1,024 episodes (the longest one decides); this cuts the work to about the steps
    actually lived.

    Args:
      keys: (B,) one key per episode (episode i gives the same result as `rollout(keys[i])`).
      policy_params: pytree with a leading (B,) axis, one policy per episode.

    Returns:
      RolloutResult with (B,) fields.
    """
    batch = keys.shape[0]
    split = jax.vmap(jax.random.split)(keys)
    key_reset, key_steps = split[:, 0], split[:, 1]
    obs, state = jax.vmap(env.reset_env, in_axes=(0, None))(key_reset, env_params)
    num_chunks = math.ceil(num_steps / chunk_size)
    sizes = [batch]
    while sizes[-1] // 2 >= min_bucket and sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)

    def one_step(carry, t, key, params):
        return _episode_step(env, env_params, policy, num_steps, carry, t, key, params)

    def run_chunk(size, chunk, carry):
        alive = carry[-1]
        index = jnp.argsort(~alive, stable=True)[:size]  # alive episodes first
        sub = jax.tree.map(lambda x: x[index], (carry, key_steps, policy_params))
        sub_carry, sub_keys, sub_params = sub

        def scan_step(sub_carry, t):
            step = jax.vmap(one_step, in_axes=(0, None, 0, 0))
            return step(sub_carry, t, sub_keys, sub_params), None

        steps = chunk * chunk_size + jnp.arange(chunk_size)
        sub_carry, _ = jax.lax.scan(scan_step, sub_carry, steps)
        return jax.tree.map(lambda full, part: full.at[index].set(part), carry, sub_carry)

    def cond(loop):
        chunk, carry = loop
        return (chunk < num_chunks) & jnp.any(carry[-1])

    def body(loop):
        chunk, carry = loop
        num_alive = jnp.sum(carry[-1])
        # sizes descend: the branch is the last size that still holds every live episode.
        branch = jnp.sum(jnp.asarray(sizes) >= num_alive) - 1
        branches = [functools.partial(run_chunk, size) for size in sizes]
        return chunk + 1, jax.lax.switch(branch, branches, chunk, carry)

    carry = (
        obs,
        state,
        jnp.zeros((batch,), jnp.float32),
        jnp.zeros((batch,), jnp.int32),
        jnp.ones((batch,), bool),
    )
    _, carry = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry))
    return RolloutResult(episode_return=carry[2], length=carry[3])


def rollout_trajectory(
    key: jax.Array,
    env: DreamEnv,
    env_params: DreamParams,
    policy: Policy,
    policy_params: Any,
    num_steps: int,
) -> Trajectory:
    """Like `rollout`, but keeps every step (for GIFs via `render(vae_params, traj.z)`)."""
    key_reset, key_steps = jax.random.split(key)
    obs, state = env.reset_env(key_reset, env_params)

    def one_step(carry, t):
        obs, state, alive = carry
        action = policy(policy_params, obs)
        next_obs, next_state, reward, terminated, _ = env.step_env(
            jax.random.fold_in(key_steps, t), state, action, env_params
        )
        done = terminated | env.is_truncated(next_state, env_params)
        out = Trajectory(obs, state.z, action, reward, done, alive)
        return (next_obs, next_state, alive & ~done), out

    _, trajectory = jax.lax.scan(one_step, (obs, state, jnp.array(True)), jnp.arange(num_steps))
    return trajectory
