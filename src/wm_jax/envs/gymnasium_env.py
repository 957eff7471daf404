"""Any wm_jax game as a gymnasium `Env`: `GymnasiumEnv("car_racing")`.

`register()` (run on import) also makes every registered game `gymnasium.make("wm_jax/GAME-v0")`.

The games' own interface (`wm_jax.envs.base.RealEnv`) is what the workers play: `reset(seed)`
returns a frame, `step(action)` four values. A user of the gymnasium ecosystem gets the same game
through this thin `Env`: actions `Box(-1, 1, (A,), float32)` (the controller's outputs, which each
game maps to its own controls), observations `Box(0, 255, (64, 64, 3), uint8)` (the frames V
sees), and the gymnasium 1.x API (`reset(seed=...) -> (obs, info)`, five values from `step`). It
passes `gymnasium.utils.env_checker.check_env` (`tests/test_gymnasium_env.py`), and an action of
the wrong shape is refused with the shape expected.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from wm_jax.envs.base import FRAME_SHAPE
from wm_jax.envs.registry import GameSpec, game_spec, games, make_env

SEED_LIMIT = 2**31  # a reset without a seed draws the game seed from the Env's np_random


class GymnasiumEnv(gymnasium.Env):
    """A registered game (its name or `GameSpec`) behind gymnasium's `Env` API.

    Args:
      game: a game name (`wm_jax.envs.games()`) or a `GameSpec`.
      render_mode: None or "rgb_array" (`render()` returns the last 64×64×3 frame).
      **env_kwargs: passed to the game's constructor (e.g. `max_steps=`).
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, game: str | GameSpec, render_mode: str | None = None, **env_kwargs: Any):
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.game_spec = game_spec(game)
        self.game = make_env(self.game_spec, **env_kwargs)
        self.render_mode = render_mode
        dim = self.game_spec.action_dim
        self.action_space = spaces.Box(-1.0, 1.0, (dim,), np.float32)
        self.observation_space = spaces.Box(0, 255, FRAME_SHAPE, np.uint8)
        self._frame: np.ndarray | None = None

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        game_seed = int(self.np_random.integers(SEED_LIMIT)) if seed is None else int(seed)
        self._frame = self.game.reset(game_seed)
        return self._frame, {"game_seed": game_seed}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        # The game checks the shape ((A,) only) and clips to [-1, 1], as for the workers.
        frame, reward, terminated, truncated = self.game.step(np.asarray(action, np.float32))
        self._frame = frame
        return frame, float(reward), bool(terminated), bool(truncated), {}

    def render(self) -> np.ndarray | None:
        return self._frame if self.render_mode == "rgb_array" else None

    def close(self) -> None:
        self.game.close()


def register() -> list[str]:
    """Register every wm_jax game with gymnasium as "wm_jax/GAME-v0"; returns the ids.

    Call it again after `wm_jax.register_game(...)` to add a new game.
    """
    ids = []
    for name in games():
        env_id = f"wm_jax/{name}-v0"
        if env_id not in gymnasium.registry:
            gymnasium.register(
                id=env_id, entry_point=f"{__name__}:GymnasiumEnv", kwargs={"game": name}
            )
        ids.append(env_id)
    return ids


register()
