"""A tiny picklable `RealEnv` for worker-pool tests (NumPy only, so workers start fast)."""

import os

import numpy as np


class CountingGame:
    """Episode length seed % 4 + 3; reward = the action's first entry; frames encode the step.

    `crash_seed`: the worker process dies (os._exit) on the second step of that seed's episode.
    """

    name = "counting"
    max_steps = 50

    def __init__(self, action_dim: int = 1, crash_seed: int | None = None):
        self.action_dim = action_dim
        self.crash_seed = crash_seed
        self.seed = 0
        self.steps = 0

    def _frame(self) -> np.ndarray:
        value = (37 * self.seed + 11 * self.steps) % 256
        return np.full((64, 64, 3), value, np.uint8)

    def reset(self, seed: int) -> np.ndarray:
        self.seed, self.steps = seed, 0
        return self._frame()

    def step(self, action):
        action = np.asarray(action, np.float32).reshape(self.action_dim)
        self.steps += 1
        if self.seed == self.crash_seed and self.steps == 2:
            os._exit(3)
        terminated = self.steps >= self.seed % 4 + 3
        return self._frame(), float(action[0]), terminated, False

    def close(self) -> None:
        pass
