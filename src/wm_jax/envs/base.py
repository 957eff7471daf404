"""One interface for the real games: `RealEnv`, the game registry and frame preprocessing.

Games are registered by import path so that importing `wm_jax.envs` loads neither gymnasium,
ViZDoom nor JAX; `make_env` imports the game's module on first use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import numpy as np
from PIL import Image

FRAME_SIZE = 64
FRAME_SHAPE = (FRAME_SIZE, FRAME_SIZE, 3)


class GameSpec(NamedTuple):
    """What the rest of the library needs to know about a game."""

    name: str
    action_dim: int  # controller outputs, each in [-1, 1]
    max_steps: int  # episode cap
    latent_dim: int  # V's z size (World Models, Appendix)
    hidden_size: int  # M's LSTM size
    # Controller-output sign flips that mirror an action left-right (None: the game is not
    # mirror-symmetric, e.g. CarRacing's tracks all run one way round).
    mirror_signs: tuple[float, ...] | None = None


@runtime_checkable
class RealEnv(Protocol):
    """A host-side game that takes controller outputs and returns 64x64x3 uint8 frames."""

    name: str
    action_dim: int
    max_steps: int

    def reset(self, seed: int) -> np.ndarray:
        """Starts an episode; returns the first frame (64, 64, 3) uint8."""
        ...

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        """Applies a controller output (action_dim,) in [-1, 1].

        Returns:
            frame (64, 64, 3) uint8, reward, terminated (the game ended), truncated (max_steps).
        """
        ...

    def close(self) -> None: ...


# A policy factory builds a fresh per-episode policy: factory(spec, seed) -> policy, and
# policy(frame (64, 64, 3) uint8) -> action (action_dim,) float32 in [-1, 1]. Factories must be
# picklable (a top-level class or function, or a functools.partial of one): collection sends
# them to worker processes.
Policy = Callable[[np.ndarray], np.ndarray]
PolicyFactory = Callable[[GameSpec, int], Policy]


class _Game(NamedTuple):
    spec: GameSpec
    env_path: str  # "module:attribute" of the RealEnv class
    random_policy_path: str  # "module:attribute" of the random-rollout PolicyFactory


_REGISTRY: dict[str, _Game] = {}


def register(spec: GameSpec, env_path: str, random_policy_path: str) -> None:
    """Adds a game under `spec.name`; paths are "module:attribute", imported on first use."""
    _REGISTRY[spec.name] = _Game(spec, env_path, random_policy_path)


def games() -> list[str]:
    """Names of the registered games."""
    return sorted(_REGISTRY)


def _entry(game: str) -> _Game:
    if game not in _REGISTRY:
        raise ValueError(f"unknown game {game!r}; registered: {', '.join(games())}")
    return _REGISTRY[game]


def _load(path: str) -> Any:
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def game_spec(game: str) -> GameSpec:
    """The `GameSpec` of a registered game."""
    return _entry(game).spec


def make_env(game: str, **kwargs: Any) -> RealEnv:
    """Builds a registered game, e.g. make_env("doom_take_cover") or make_env("car_racing")."""
    return _load(_entry(game).env_path)(**kwargs)


def random_policy(game: str) -> PolicyFactory:
    """The game's random-rollout policy factory (World Models §A: data from random rollouts)."""
    return _load(_entry(game).random_policy_path)


def resize_frame(frame: np.ndarray, size: int = FRAME_SIZE) -> np.ndarray:
    """Resizes an (H, W, 3) uint8 frame to (size, size, 3) uint8.

    PIL's BILINEAR widens its triangle filter by the downscale factor, so it averages over the
    source area instead of aliasing; the paper's code used PIL's old default (NEAREST), which
    drops thin features such as far road edges and fireballs.
    """
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 frame, got {frame.shape} {frame.dtype}")
    image = Image.fromarray(np.ascontiguousarray(frame), mode="RGB")
    return np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def check_action(action: np.ndarray, action_dim: int) -> np.ndarray:
    """Validates a controller output and clips it to [-1, 1]; returns float32 (action_dim,)."""
    action = np.asarray(action, dtype=np.float32).reshape(-1)
    if action.shape != (action_dim,):
        raise ValueError(f"expected an action of shape ({action_dim},), got {action.shape}")
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action is not finite: {action}")
    return np.clip(action, -1.0, 1.0)


def discretise(x: float, num_actions: int) -> int:
    """Discretises a scalar in [-1, 1] into `num_actions` equal bins.

    With 3 actions the bins are [-1, -1/3), [-1/3, 1/3), [1/3, 1]: World Models' Doom controller
    maps thirds of its tanh output to left / stay / right.
    """
    index = int(np.floor((float(x) + 1.0) / 2.0 * num_actions))
    return min(max(index, 0), num_actions - 1)


register(
    GameSpec("car_racing", action_dim=3, max_steps=1000, latent_dim=32, hidden_size=256),
    "wm_jax.envs.car_racing:CarRacingEnv",
    "wm_jax.envs.car_racing:RandomWalkPolicy",
)
register(
    GameSpec(
        "doom_take_cover",
        action_dim=1,
        max_steps=2100,
        latent_dim=64,
        hidden_size=512,
        mirror_signs=(-1.0,),  # thirds: left <-> right, stay stays; the room is symmetric
    ),
    "wm_jax.envs.doom:DoomTakeCoverEnv",
    "wm_jax.envs.doom:HeldRandomPolicy",
)
register(
    GameSpec("minatar_breakout", action_dim=1, max_steps=1000, latent_dim=32, hidden_size=256),
    "wm_jax.envs.minatar:MinAtarEnv",
    "wm_jax.envs.minatar:UniformRandomPolicy",
)
