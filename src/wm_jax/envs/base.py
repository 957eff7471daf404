"""One interface for the real games: `RealEnv`, action checks and frame preprocessing.

The registry of games (`GameSpec`, `register_game`, `make_env`) lives in `wm_jax.envs.registry`
and is re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np
from PIL import Image

from wm_jax.envs.registry import (  # noqa: F401  (re-exported: the games' modules import them)
    GameSpec,
    game_spec,
    games,
    load,
    make_env,
    random_policy,
    register_game,
)

FRAME_SIZE = 64
FRAME_SHAPE = (FRAME_SIZE, FRAME_SIZE, 3)


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


class PlayedEpisode(NamedTuple):
    """One real episode (`play_episode`); the per-step arrays only when recorded."""

    total_return: float
    length: int
    frames: np.ndarray | None  # (T, 64, 64, 3) uint8: frames[t] is the frame action t saw
    actions: np.ndarray | None  # (T, A) float32
    rewards: np.ndarray | None  # (T,) float32
    dones: np.ndarray | None  # (T,) bool: the game ended after action t


def play_episode(
    env: RealEnv,
    policy: Policy,
    game_seed: int,
    max_frames: int | None = None,
    record: bool = False,
) -> PlayedEpisode:
    """The one loop that plays a real episode: collection, evaluation in process, play, probe.

    Args:
      policy: frame (64, 64, 3) uint8 -> action (A,) in [-1, 1]; a policy with a `bind(env)`
        method (the CarRacing driver reads the game's state) is bound after the reset.
      max_frames: stop after this many frames (None: when the game ends or truncates).
      record: keep every frame, action, reward and done (collection).
    """
    frame = env.reset(game_seed)
    if hasattr(policy, "bind"):
        policy.bind(env)
    frames, actions, rewards, dones = [], [], [], []
    total, steps, done = 0.0, 0, False
    while not done and (max_frames is None or steps < max_frames):
        action = np.asarray(policy(frame), dtype=np.float32).reshape(env.action_dim)
        if record:
            frames.append(frame)
            actions.append(action)
        frame, reward, terminated, truncated = env.step(action)
        if record:
            rewards.append(reward)
            dones.append(terminated)
        total, steps, done = total + reward, steps + 1, terminated or truncated
    if not record:
        return PlayedEpisode(total, steps, None, None, None, None)
    return PlayedEpisode(
        total,
        steps,
        np.stack(frames),
        np.stack(actions).astype(np.float32),
        np.asarray(rewards, dtype=np.float32),
        np.asarray(dones, dtype=bool),
    )


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
    """Validates a controller output and clips it to [-1, 1]; returns float32 (action_dim,).

    Only shape (action_dim,) is taken: flattening (1, A) or (A, 1) would hide a caller that
    mixed up a batch of actions with one action.
    """
    action = np.asarray(action, dtype=np.float32)
    if action.shape != (action_dim,):
        raise ValueError(
            f"expected a controller output of shape ({action_dim},), got shape {action.shape}"
        )
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


class UniformRandomPolicy:
    """A fresh uniform random controller output every frame (NumPy only: workers stay light)."""

    def __init__(self, spec: GameSpec, seed: int):
        self._rng = np.random.default_rng(seed)
        self._action_dim = spec.action_dim

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        del frame
        return self._rng.uniform(-1.0, 1.0, self._action_dim).astype(np.float32)


class DriverMix:
    """PolicyFactory: each episode is played by the game's heuristic driver (`GameSpec.driver`)
    with probability `fraction`, else by `base` (the random policy, or C while iterating).

    The choice is drawn from the episode's policy seed, so it does not depend on workers or
    shards, and a rerun plays the same episodes. Picklable: it holds a factory, a path and the
    driver's keyword options (CarRacing's `stop_rate`; none are passed when empty).
    """

    def __init__(
        self, base: PolicyFactory, driver: str, fraction: float, options: dict | None = None
    ):
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"driver fraction must be in [0, 1], got {fraction}")
        self.base, self.driver, self.fraction = base, driver, float(fraction)
        self.options = dict(options or {})

    def picks_driver(self, seed: int) -> bool:
        """Whether the episode of policy seed `seed` is the driver's."""
        return bool(np.random.default_rng([seed, 1]).random() < self.fraction)

    def __call__(self, spec: GameSpec, seed: int) -> Policy:
        if self.picks_driver(seed):
            return load(self.driver)(spec, seed, **self.options)
        return self.base(spec, seed)
