"""The real games as gymnasium Envs: gymnasium's own checker passes, spaces match the frames and
actions, seeds reproduce, and a wrong action shape is refused."""

import gymnasium
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from wm_jax.envs import game_spec
from wm_jax.envs.gymnasium_env import GymnasiumEnv

GAMES = ["minatar_breakout", "car_racing", "doom_take_cover"]


@pytest.mark.parametrize("game", GAMES)
def test_gymnasiums_env_checker_passes(game):
    env = GymnasiumEnv(game, render_mode="rgb_array")
    try:
        check_env(env, skip_render_check=False)
        assert env.action_space.shape == (game_spec(game).action_dim,)
        assert env.observation_space.shape == (64, 64, 3)
    finally:
        env.close()


@pytest.mark.parametrize("game", ["minatar_breakout", "car_racing"])
def test_seeded_episodes_repeat_and_actions_of_the_wrong_shape_are_refused(game):
    env = GymnasiumEnv(game)
    try:
        first, info = env.reset(seed=7)
        assert info["game_seed"] == 7
        action = np.zeros(env.action_space.shape, np.float32)
        steps = [env.step(action)[:4] for _ in range(5)]
        again, _ = env.reset(seed=7)
        np.testing.assert_array_equal(first, again)
        for frame, reward, *_ in steps:
            other, other_reward, *_ = env.step(action)
            np.testing.assert_array_equal(frame, other)
            assert reward == other_reward
        with pytest.raises(ValueError, match=r"shape \(\d,\)"):
            env.step(np.zeros((1, *env.action_space.shape), np.float32))
    finally:
        env.close()


def test_bad_render_mode_is_refused():
    with pytest.raises(ValueError, match="render_mode"):
        GymnasiumEnv("minatar_breakout", render_mode="human")


def test_every_game_is_a_gymnasium_make_away():
    env = gymnasium.make("wm_jax/minatar_breakout-v0")
    try:
        frame, _ = env.reset(seed=3)
        frame, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert frame.shape == (64, 64, 3) and frame.dtype == np.uint8
        assert isinstance(reward, float) and isinstance(terminated, bool)
    finally:
        env.close()
    assert "wm_jax/doom_take_cover-v0" in gymnasium.registry
