"""A noisy heuristic CarRacing driver for collecting V's and M's first data.

Why: a random policy rarely drives along the road, so an M trained only on its rollouts never
sees what driving well pays, and a C trained in that dream learns to idle or to crawl (
experiments/README.md: the idling exploit). The JAX reimplementation that reached 843 in its
dream collected 500 episodes each from a noisy heuristic driver and a too-fast one beside 2,000
random ones; this is that driver, one per episode with its own character.

It steers towards the track centre a few tiles ahead, read from the game's state (the track's
tile list and the car's pose), not from the frame: it is a data-collection policy, never the
agent. Each episode draws its own target speed (slow and safe to too fast for the bends, which
gives M crashes and the -100 of leaving the playfield), steering gain, look-ahead, steering
noise and "lapses": stretches of random-walk driving that wander off the road and come back.
Measured (3 tracks, no noise, look-ahead 3 tiles, speed 40, gain 2): 599, 621, 614 over 1,000
frames; at speed 50: 205-258; at 70: about 0 (off the road at the first fast bend).

Stops (`stop_rate` > 0, `collect.driver_stops`): the driver now and then brakes to a halt on
the road and waits, sometimes before it sets off. Why: neither the random policy (gas 0.15-0.5)
nor the driver ever stands still, so M never sees that a stopped car earns no tiles and pays
-0.1 a frame, and C learns to idle in a dream that pays for it (experiments/README.md: idle
paid +228 in the default run's dream, -93 in the game).
"""

from __future__ import annotations

import math

import numpy as np

from wm_jax.envs.registry import GameSpec


class NoisyDriver:
    """PolicyFactory (spec, seed) -> policy(frame) -> action, bound to the game by `bind(env)`.

    Controller space, as every CarRacing policy here: steer x0, gas (x1 + 1) / 2, brake
    clip(x2, 0, 1) (`wm_jax.envs.car_racing.game_action`).
    """

    def __init__(self, spec: GameSpec, seed: int, stop_rate: float = 0.0):
        del spec
        rng = self._rng = np.random.default_rng(seed)
        self.target_speed = rng.uniform(25.0, 65.0)  # ~40 drives well; 60+ leaves the road
        self.gain = rng.uniform(1.5, 3.0)
        self.look_ahead = int(rng.integers(2, 5))  # tiles
        self.steer_noise = rng.uniform(0.0, 0.08)  # 0.17+ wrecks even a slow driver
        self.lapse_rate = rng.uniform(0.0, 0.004)  # per frame: start a random-walk stretch
        self._lapse_left = 0
        self._noise = 0.0
        self._walk = np.zeros(3)
        self._env = None
        self._points = None  # (N, 2) the track's centre line, fixed for an episode
        # Stops draw from their own stream, so stop_rate=0 plays exactly the episodes it
        # played before stops existed.
        stops = self._stop_rng = np.random.default_rng([seed, 2])
        self.stop_rate = stops.uniform(0.0, stop_rate)  # per frame: start a stop
        self._stop_left = self._stop_length() if stop_rate > 0 and stops.random() < 0.25 else 0

    def _stop_length(self) -> int:
        return int(self._stop_rng.integers(30, 200))  # frames braking, then standing

    def bind(self, env) -> None:
        """The episode's game (a `CarRacingEnv`, after its reset), read for the track and the
        car's pose; the track is built by the reset and read once here."""
        self._env = env
        self._points = np.asarray([(tile[2], tile[3]) for tile in env.game.track])

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        del frame  # the driver reads the game's state
        rng = self._rng
        if self._stop_left == 0 and self.stop_rate > 0 and self._stop_rng.random() < self.stop_rate:
            self._stop_left = self._stop_length()
        if self._stop_left > 0:
            self._stop_left -= 1
            self._walk = np.array([0.0, -1.0, 0.6])  # no gas, brake 0.6 (a standing car stays)
            return self._walk.astype(np.float32)
        if self._lapse_left == 0 and rng.random() < self.lapse_rate:
            self._lapse_left = int(rng.integers(20, 80))
        if self._lapse_left > 0 or self._env is None:
            self._lapse_left = max(0, self._lapse_left - 1)
            self._walk = np.clip(0.8 * self._walk + 0.4 * rng.normal(size=3), -1.0, 1.0)
            return self._walk.astype(np.float32)
        steer, speed = self._steer_and_speed(self._env.game)
        self._noise = 0.8 * self._noise + self.steer_noise * rng.normal()
        steer = float(np.clip(steer + self._noise, -1.0, 1.0))
        gas = 0.2 if speed < self.target_speed else -1.0  # x1 = 0.2: gas 0.6
        brake = 0.2 if speed > 1.2 * self.target_speed else -1.0
        action = np.array([steer, gas, brake], dtype=np.float32)
        self._walk = action.astype(np.float64)
        return action

    def _steer_and_speed(self, game) -> tuple[float, float]:
        hull = game.car.hull
        x, y = hull.position
        points = self._points
        nearest = int(np.argmin(((points - (x, y)) ** 2).sum(axis=1)))
        tx, ty = points[(nearest + self.look_ahead) % len(points)]
        heading = (-math.sin(hull.angle), math.cos(hull.angle))  # Box2D CarRacing's forward
        to = np.array([tx - x, ty - y]) / (math.hypot(tx - x, ty - y) + 1e-8)
        cross = heading[0] * to[1] - heading[1] * to[0]  # > 0: the target is to the left
        speed = float(np.linalg.norm(hull.linearVelocity))
        return float(np.clip(-self.gain * cross, -1.0, 1.0)), speed
