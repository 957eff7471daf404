"""JAX-native games for fast tests and demos: gymnax MinAtar games drawn as 64x64x3 frames.

`MinAtarGame` is functional (`reset(key, params)`, `step(key, state, action, params)`) so it
jits, vmaps and scans; `MinAtarEnv` wraps it as a host-side `RealEnv` so the collection and data
path can run on it too. Each observation channel is drawn in its own palette colour, so every
MinAtar game renders (Breakout and Asterix 4 channels, Freeway 7, Seaquest 10); a game is
registered with `wm_jax.register_game(wm_jax.minatar_spec(name, env_id, actions))`.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.envs.base import (
    FRAME_SIZE,
    UniformRandomPolicy,  # noqa: F401  (its home before wm_jax.envs.base)
    check_action,
    game_spec,
)

CELL = 6  # pixels per MinAtar cell: 10 cells -> 60 pixels, padded to 64
# Background, then one colour per observation channel (MinAtar games have at most 10).
PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 230, 230],
        [240, 200, 40],
        [200, 90, 40],
        [60, 160, 230],
        [90, 200, 90],
        [220, 60, 60],
        [170, 90, 210],
        [250, 140, 180],
        [130, 130, 130],
        [40, 210, 200],
    ],
    dtype=np.uint8,
)


class MinAtarStep(NamedTuple):
    frame: jax.Array  # (64, 64, 3) uint8; the next episode's first frame when the step ended one
    state: Any  # gymnax state (auto-reset when done, as gymnax does)
    reward: jax.Array  # () float32
    terminated: jax.Array  # () bool: the game ended
    truncated: jax.Array  # () bool: max_steps_in_episode reached
    final_frame: jax.Array  # (64, 64, 3) uint8: the frame this step produced, before any reset


def render(obs: jax.Array) -> jax.Array:
    """MinAtar observation (10, 10, C) -> (64, 64, 3) uint8; a later channel covers an earlier."""
    num_channels = obs.shape[-1]
    if num_channels >= len(PALETTE):
        raise ValueError(f"at most {len(PALETTE) - 1} channels have a colour, got {num_channels}")
    # Index of the last active channel, 0 where none is: picks a palette row per cell.
    priority = jnp.max((obs > 0) * jnp.arange(1, num_channels + 1), axis=-1)
    cells = jnp.asarray(PALETTE[: num_channels + 1])[priority]  # (10, 10, 3)
    image = jnp.repeat(jnp.repeat(cells, CELL, axis=0), CELL, axis=1)
    pad = (FRAME_SIZE - image.shape[0]) // 2
    return jnp.pad(image, ((pad, pad), (pad, pad), (0, 0)))


def discretise(action: jax.Array, num_actions: int) -> jax.Array:
    """Controller output (1,) in [-1, 1] -> action index, in equal bins (as Doom's thirds)."""
    x = jnp.clip(action[..., 0], -1.0, 1.0)
    return jnp.clip(jnp.floor((x + 1.0) / 2.0 * num_actions), 0, num_actions - 1).astype(jnp.int32)


class MinAtarGame:
    """A gymnax MinAtar game with controller-space actions and 64x64x3 uint8 frames."""

    def __init__(self, env_id: str = "Breakout-MinAtar"):
        import gymnax

        self.env_id = env_id
        self.env, self.default_params = gymnax.make(env_id)
        self.num_actions = self.env.num_actions

    def reset(self, key: jax.Array, params: Any) -> tuple[jax.Array, Any]:
        """Returns (frame (64, 64, 3) uint8, state)."""
        obs, state = self.env.reset(key, params)
        return render(obs), state

    def step(self, key: jax.Array, state: Any, action: jax.Array, params: Any) -> MinAtarStep:
        """Applies a controller output (1,) in [-1, 1]; resets on done, as gymnax does."""
        obs, state, reward, terminated, truncated, info = self.env.step(
            key, state, discretise(action, self.num_actions), params
        )
        return MinAtarStep(
            frame=render(obs),
            state=state,
            reward=jnp.asarray(reward, jnp.float32),
            terminated=jnp.asarray(terminated, bool),
            truncated=jnp.asarray(truncated, bool),
            final_frame=render(info["final_observation"]),
        )


@functools.cache
def _compiled(env_id: str) -> tuple[MinAtarGame, Any, Any]:
    """One game and its jitted reset and step per process: a new env (the probe builds one per
    fixed action, evaluation one for the random baseline) compiles nothing again; params are
    traced, so another step cap reuses them too."""
    game = MinAtarGame(env_id)
    return game, jax.jit(game.reset), jax.jit(game.step)


class MinAtarEnv:
    """`MinAtarGame` as a host-side `RealEnv`, one jitted step at a time.

    Args:
      game: the registered name whose `GameSpec` gives the action size and step cap.
      env_id: gymnax's id of the game.
      max_steps: the episode cap (default: the spec's).
    """

    def __init__(
        self,
        game: str = "minatar_breakout",
        env_id: str = "Breakout-MinAtar",
        max_steps: int | None = None,
    ):
        spec = game_spec(game)
        self.name = spec.name
        self.action_dim = spec.action_dim
        self.max_steps = spec.max_steps if max_steps is None else int(max_steps)
        self.game, self._reset, self._step = _compiled(env_id)
        self._params = self.game.default_params.replace(max_steps_in_episode=self.max_steps)
        self._key = self._state = None

    def reset(self, seed: int) -> np.ndarray:
        self._key, key_reset = jax.random.split(jax.random.key(seed))
        frame, self._state = self._reset(key_reset, self._params)
        return np.asarray(frame)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        if self._state is None:
            raise RuntimeError("call reset() before step()")
        action = jnp.asarray(check_action(action, self.action_dim))
        self._key, key_step = jax.random.split(self._key)
        out = self._step(key_step, self._state, action, self._params)
        self._state = out.state
        return (
            np.asarray(out.final_frame),
            float(out.reward),
            bool(out.terminated),
            bool(out.truncated),
        )

    def close(self) -> None:
        self._state = None
