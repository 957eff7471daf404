"""CarRacing (gymnasium's Box2D `CarRacing`) behind `RealEnv`, and its random-rollout policy."""

from __future__ import annotations

import os

import numpy as np

from wm_jax.envs.base import GameSpec, check_action, game_spec, resize_frame

DASHBOARD_ROW = 84  # World Models code: frame[0:84] drops the speed/ABS dashboard at the bottom


def preprocess_frame(frame: np.ndarray, dashboard: bool = False) -> np.ndarray:
    """(96, 96, 3) uint8 game frame -> (64, 64, 3) uint8, bilinear resize.

    The World Models code crops the dashboard (speed, ABS, steering and gyro bars) away; with
    `dashboard` the whole frame is kept, so z can hold the car's speed, which the dream's reward
    (tiles passed per frame) depends on and which a cropped frame barely shows.
    """
    if frame.shape != (96, 96, 3):
        raise ValueError(f"expected a (96, 96, 3) CarRacing frame, got {frame.shape}")
    return resize_frame(frame if dashboard else frame[:DASHBOARD_ROW])


def game_action(action: np.ndarray) -> np.ndarray:
    """Controller output x in [-1, 1]^3 -> (steer, gas, brake), as in World Models' CarRacing.

    steer = x0, gas = (x1 + 1) / 2, brake = clip(x2, 0, 1).
    """
    x = check_action(action, 3)
    return np.array([x[0], (x[1] + 1.0) / 2.0, np.clip(x[2], 0.0, 1.0)], dtype=np.float32)


class CarRacingEnv:
    """CarRacing with 64x64 frames and controller-space actions.

    The game's own ends (gymnasium CarRacing-v3, which `FastCarRacing` inherits unchanged):
    leaving the playfield gives reward -100 (instead of that step's -0.1 + tiles) and
    terminated; every tile visited, or the start tile reached after `lap_complete_percent` of
    them, gives terminated. A step cap is a truncation, not an end.

    Args:
        renderer: "fast" (default: `FastCarRacing`, pixel-identical to gymnasium's and about
            3x faster) or "stock" (gymnasium's own CarRacing).
        full_episode: ignore the game's own termination and run to `max_steps`, as the World
            Models code did when it collected rollouts (off the playfield, every later step then
            pays -100). Our collection does not (see `wm_jax.envs.collect`).
        max_steps: episode cap (truncated=True at this step).
        dashboard: keep the dashboard in the frames (see `preprocess_frame`); the
            `car_racing_dashboard` game sets it.
        **game_kwargs: passed to the CarRacing constructor (e.g. domain_randomize).
    """

    name = "car_racing"

    def __init__(
        self,
        renderer: str = "fast",
        full_episode: bool = False,
        max_steps: int | None = None,
        dashboard: bool = False,
        **game_kwargs,
    ):
        # Headless: pygame reads these when CarRacing's module imports it and draws off screen.
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        if renderer == "stock":
            from gymnasium.envs.box2d.car_racing import CarRacing
        elif renderer == "fast":
            from wm_jax.envs.car_racing_fast import FastCarRacing as CarRacing
        else:
            raise ValueError(f"renderer must be 'stock' or 'fast', got {renderer!r}")
        spec = game_spec(self.name)
        self.action_dim = spec.action_dim
        self.max_steps = spec.max_steps if max_steps is None else int(max_steps)
        self.full_episode = full_episode
        self.dashboard = bool(dashboard)
        self._game = CarRacing(continuous=True, **game_kwargs)
        self._steps = 0

    @property
    def game(self):
        """The gymnasium CarRacing underneath (track, car), read by `car_racing_driver`."""
        return self._game

    def reset(self, seed: int) -> np.ndarray:
        frame, _ = self._game.reset(seed=int(seed))
        self._steps = 0
        return preprocess_frame(frame, self.dashboard)

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        frame, reward, terminated, _, _ = self._game.step(game_action(action))
        self._steps += 1
        terminated = bool(terminated) and not self.full_episode
        truncated = self._steps >= self.max_steps and not terminated
        return preprocess_frame(frame, self.dashboard), float(reward), terminated, truncated

    def close(self) -> None:
        self._game.close()


def road_offset(frame: np.ndarray, dashboard: bool = False) -> float | None:
    """Where the road ahead lies, -1 (left) to 1 (right) of the car; None when none is seen.

    Reads a (64, 64, 3) frame: the car sits at rows 51-57, columns 31-32; road tiles are grey
    (102-107 in every channel), grass green and kerbs red/white.
    """
    # Rows 39-66 of the game's 96: 30-50 of a cropped frame, 26-44 of one with the dashboard.
    band = (frame[26:44] if dashboard else frame[30:50]).astype(np.int16)
    road = (np.abs(band[..., 0] - band[..., 1]) < 20) & (band[..., 0] > 80) & (band[..., 0] < 130)
    columns = np.nonzero(road)[1]
    return None if columns.size < 5 else float(np.clip((columns.mean() - 31.5) / 8.0, -1, 1))


class RandomWalkPolicy:
    """Random-rollout driver: a mean-reverting random walk in controller space with a gas bias.

    Why not the World Models code's random linear controller: on the frames of an untrained V
    its output is nearly constant, so the car drives straight off the road at the first bend.
    A pure walk is no better: the car is on the road in 0-10% of the frames after the opening
    zoom. So each episode draws a `road_pull` in [0, 1] that mixes a steer towards the grey road
    seen ahead into the walk (0: the pure walk, which leaves the road at once; 1: follows it for
    a while and drifts off under the noise), plus its own steering noise and gas level. The data
    then holds road driving, bends, drifting off, grass and finding the road again: measured on
    8 episodes of 500 frames, 41% of the frames after the zoom show the car on the road.
    """

    def __init__(self, spec: GameSpec, seed: int):
        self._dashboard = bool(dict(spec.env_kwargs).get("dashboard", False))
        self._rng = np.random.default_rng(seed)
        self._steer_sigma = self._rng.uniform(0.05, 0.3)
        self._gas_mean = self._rng.uniform(-0.7, 0.0)  # gas = (x1 + 1) / 2: 0.15 to 0.5
        self._road_pull = self._rng.uniform(0.0, 1.0)
        self._x = np.array([0.0, self._gas_mean, -1.0], dtype=np.float64)

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        rng = self._rng
        steer, gas, brake = self._x
        offset = road_offset(frame, self._dashboard)
        target = 0.0 if offset is None else self._road_pull * offset
        noise = self._steer_sigma * (1.0 - 0.6 * self._road_pull)
        steer = 0.7 * steer + 0.3 * target + noise * rng.normal()
        gas = 0.9 * gas + 0.1 * self._gas_mean + 0.1 * rng.normal()
        brake = 0.95 * brake + 0.05 * -0.7 + 0.1 * rng.normal()  # brake = clip(x2, 0, 1): rare
        self._x = np.clip([steer, gas, brake], -1.0, 1.0)
        return self._x.astype(np.float32)
