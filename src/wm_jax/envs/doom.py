"""ViZDoom's Take Cover behind `RealEnv`, and its random-rollout policy."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from pathlib import Path

import numpy as np

from wm_jax.envs.base import GameSpec, check_action, discretise, game_spec, resize_frame

# Buttons of take_cover.cfg, in its order: MOVE_LEFT, MOVE_RIGHT.
BUTTONS = ([1, 0], [0, 0], [0, 1])  # left, stay, right
_CHDIR_LOCK = threading.Lock()  # the working directory is process-wide


def preprocess_frame(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 game frame -> (64, 64, 3) uint8, the whole view, bilinear resize.

    The paper cropped the HUD (its wrapper rendered one in the bottom sixth). Today's
    take_cover.cfg sets render_hud = false, and we force it off, so the view has no HUD: the
    ceiling at the top, the far wall with the monsters in the middle and the floor, across which
    the fireballs approach, at the bottom. All of it is game state, so nothing is cropped; the
    4:3 view is squeezed to 64x64 as the paper's 640x400 crop was.
    """
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) Doom frame, got {frame.shape}")
    return resize_frame(frame)


def game_action(action: np.ndarray) -> list[int]:
    """Controller output x in [-1, 1]^1 -> buttons; thirds are left / stay / right."""
    return list(BUTTONS[discretise(check_action(action, 1)[0], 3)])


class DoomTakeCoverEnv:
    """ViZDoom Take Cover: reward +1 per frame survived, no frame skip, capped at max_steps.

    Args:
        resolution: a `vizdoom.ScreenResolution` name; low is fast and we downscale to 64 anyway.
        max_steps: episode cap (World Models: 2,100 frames).
    """

    name = "doom_take_cover"

    def __init__(self, resolution: str = "RES_160X120", max_steps: int | None = None):
        import vizdoom

        spec = game_spec(self.name)
        self.action_dim = spec.action_dim
        self.max_steps = spec.max_steps if max_steps is None else int(max_steps)
        game = vizdoom.DoomGame()
        game.load_config(os.path.join(vizdoom.scenarios_path, "take_cover.cfg"))
        game.set_window_visible(False)
        game.set_screen_format(vizdoom.ScreenFormat.RGB24)
        game.set_screen_resolution(getattr(vizdoom.ScreenResolution, resolution))
        game.set_render_hud(False)
        game.set_sound_enabled(False)
        # ViZDoom writes _vizdoom.ini (this setting) and an empty _vizdoom/ folder (into the
        # working directory at init): keep both in a private folder removed by close().
        self._work_dir = tempfile.mkdtemp(prefix="wm_jax_vizdoom_")
        game.set_doom_config_path(os.path.join(self._work_dir, "_vizdoom.ini"))
        with _CHDIR_LOCK, contextlib.chdir(self._work_dir):
            game.init()
        self._game = game
        self._frame: np.ndarray | None = None
        self._steps = 0

    def reset(self, seed: int) -> np.ndarray:
        self._game.set_seed(int(seed) % 2**32)
        self._game.new_episode()
        self._steps = 0
        self._frame = preprocess_frame(self._game.get_state().screen_buffer)
        return self._frame

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool]:
        if self._frame is None:
            raise RuntimeError("call reset() before step()")
        reward = self._game.make_action(game_action(action))
        self._steps += 1
        terminated = self._game.is_episode_finished()
        if not terminated:
            self._frame = preprocess_frame(self._game.get_state().screen_buffer)
        # After death ViZDoom has no screen: the last frame is returned again.
        truncated = self._steps >= self.max_steps and not terminated
        return self._frame, float(reward), terminated, truncated

    def leftovers(self) -> tuple[list[int], list[str]]:
        """(pids, paths) to remove if this process dies without close().

        ViZDoom's engine is a child process that outlives a killed parent (holding its pipes
        open); its command line names our private folder, which finds it.
        """
        pids = []
        for entry in os.scandir("/proc") if os.path.isdir("/proc") else []:
            with contextlib.suppress(OSError):
                cmdline = Path(entry.path, "cmdline").read_bytes()
                if entry.name.isdigit() and self._work_dir.encode() in cmdline:
                    pids.append(int(entry.name))
        return pids, [self._work_dir]

    def close(self) -> None:
        self._game.close()
        shutil.rmtree(self._work_dir, ignore_errors=True)


class HeldRandomPolicy:
    """World Models' Doom rollouts: a uniform random action held for a random 1-10 frames."""

    def __init__(self, spec: GameSpec, seed: int):
        self._rng = np.random.default_rng(seed)
        self._action_dim = spec.action_dim
        self._action = np.zeros(spec.action_dim, dtype=np.float32)
        self._hold = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        del frame
        if self._hold == 0:
            self._action = self._rng.uniform(-1.0, 1.0, self._action_dim).astype(np.float32)
            self._hold = int(self._rng.integers(1, 11))
        self._hold -= 1
        return self._action.copy()
