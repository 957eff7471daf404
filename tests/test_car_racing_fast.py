"""FastCarRacing against stock CarRacing-v3: same observations, rewards and flags, step by step."""

import itertools
import math

import gymnasium as gym
import numpy as np
import pygame
import pytest
from gymnasium.envs.box2d.car_racing import PLAYFIELD, WINDOW_H, WINDOW_W, CarRacing
from gymnasium.utils.env_checker import check_env

from wm_jax.envs import car_racing_fast
from wm_jax.envs.car_racing_fast import FastCarRacing, make_fast_car_racing


@pytest.fixture(autouse=True)
def _headless(monkeypatch):
    monkeypatch.setenv("SDL_VIDEODRIVER", "dummy")


@pytest.fixture
def background_paths(monkeypatch):
    """Counts how often the background was filled directly vs drawn as stock does."""
    counts = {True: 0, False: 0}
    covers = car_racing_fast._background_covers_surface

    def counting(*args):
        result = covers(*args)
        counts[result] += 1
        return result

    monkeypatch.setattr(car_racing_fast, "_background_covers_surface", counting)
    return counts


def stress_actions(seed: int, num_steps: int) -> np.ndarray:
    """Full-throttle straights, hard high-speed turns (spins, off-road) and random actions.

    Returns:
        (num_steps, 3) float32 actions (steer, gas, brake).
    """
    rng = np.random.default_rng(seed)
    actions = rng.uniform([-1.0, 0.0, 0.0], [1.0, 1.0, 0.3], size=(num_steps, 3))
    for start in range(0, num_steps, 60):
        actions[start : start + 25] = [rng.uniform(-0.1, 0.1), 1.0, 0.0]  # build up speed
        steer = rng.choice([-1.0, 1.0])
        actions[start + 25 : start + 45] = [steer, 1.0, 0.0]  # turn at speed: spin, leave road
    return actions.astype(np.float32)


def assert_same_rollout(stock, fast, actions, reset_kwargs):
    """Resets both envs alike, steps both with `actions`, asserts identical outputs.

    Returns:
        Largest hull rotation from the start (radians) and whether the car ever had all
        four wheels off the road.
    """
    obs_stock, _ = stock.reset(**reset_kwargs)
    obs_fast, _ = fast.reset(**reset_kwargs)
    assert np.array_equal(obs_stock, obs_fast)
    start_angle = fast.car.hull.angle
    max_rotation, off_road = 0.0, False
    for t, action in enumerate(actions):
        obs_stock, reward_stock, term_stock, trunc_stock, info_stock = stock.step(action)
        obs_fast, reward_fast, term_fast, trunc_fast, info_fast = fast.step(action)
        assert obs_fast.dtype == obs_stock.dtype and obs_fast.shape == obs_stock.shape
        mismatch = np.argwhere(obs_stock != obs_fast)
        assert len(mismatch) == 0, (
            f"step {t}: {len(mismatch)} differing values, first {mismatch[0]}"
        )
        assert reward_fast == reward_stock, f"step {t}"
        assert (term_fast, trunc_fast) == (term_stock, trunc_stock), f"step {t}"
        assert info_fast == info_stock, f"step {t}"
        max_rotation = max(max_rotation, abs(fast.car.hull.angle - start_angle))
        off_road |= all(not wheel.tiles for wheel in fast.car.wheels)
    return max_rotation, off_road


def test_observations_match_stock_across_seeded_resets(background_paths):
    stock, fast = CarRacing(), FastCarRacing()
    for seed in (0, 1, 2):
        max_rotation, off_road = assert_same_rollout(
            stock, fast, stress_actions(seed, 150), {"seed": seed}
        )
        # The actions must exercise what makes rendering hard: big rotations, grass views.
        assert max_rotation > math.pi / 2, seed
        assert off_road, seed
    # Unseeded reset continues both generators alike.
    assert_same_rollout(stock, fast, stress_actions(3, 60), {})
    # The zoom-in of the first second draws the background as stock; later frames fill it.
    assert background_paths[True] > 0 and background_paths[False] > 0


def leave_playfield(game: CarRacing) -> None:
    """Moves the car (hull and wheels alike) 50 units past the playfield's right edge."""
    shift = PLAYFIELD + 50.0 - game.car.hull.position[0]
    for body in [game.car.hull, *game.car.wheels]:
        body.position = (body.position[0] + shift, body.position[1])


def test_game_ends_match_stock():
    # The ends collection records (wm_jax.envs.collect): off the playfield -100 and done, every
    # tile visited done; both flags and rewards as stock gives them, and the same last frame.
    stock, fast = CarRacing(), FastCarRacing()
    action = np.array([0.0, 0.3, 0.0], dtype=np.float32)
    for end in ("off_playfield", "all_tiles"):
        outs = []
        for env in (stock, fast):
            env.reset(seed=9)
            for _ in range(3):
                assert not env.step(action)[2]
            if end == "off_playfield":
                leave_playfield(env)
            else:
                env.tile_visited_count = len(env.track)
            outs.append(env.step(action))
        (obs_stock, *rest_stock), (obs_fast, *rest_fast) = outs
        assert np.array_equal(obs_stock, obs_fast) and rest_fast == rest_stock, end
        reward, terminated, truncated, info = rest_fast
        assert terminated and not truncated, end
        assert info["lap_finished"] == (end == "all_tiles")
        assert (reward == -100.0) == (end == "off_playfield"), reward


def draw_road(env, zoom, position, angle):
    """The road surface `env._render_road` draws for a car at `position` (as stock `_render`)."""
    trans = pygame.math.Vector2((-position[0] * zoom, -position[1] * zoom)).rotate_rad(angle)
    trans = (WINDOW_W / 2 + trans[0], WINDOW_H / 4 + trans[1])
    env.surf = pygame.Surface((WINDOW_W, WINDOW_H))
    env._render_road(zoom, trans, angle)
    # Rows above car_racing_fast._FIRST_SHOWN_ROW end up under the dashboard.
    return pygame.surfarray.array3d(env.surf)[:, car_racing_fast._FIRST_SHOWN_ROW :]


def test_road_drawing_matches_stock_at_awkward_poses(background_paths):
    stock, fast = CarRacing(), FastCarRacing()
    stock.reset(seed=11)
    fast.reset(seed=11)
    poses = []
    # Rotations of exactly 0/90/180/270 degrees (pygame special-cases them), zoomed out, at the
    # playfield's edge and corner, beyond it.
    edge = PLAYFIELD - 10.0
    positions = [fast.track[i][2:4] for i in (0, 40, 90)]
    positions += [(edge, 0.0), (-edge, edge), (0.0, -PLAYFIELD - 25.0)]
    angles = itertools.cycle([0.0, math.pi / 2, -math.pi, 1.5 * math.pi, 1e-9, 2 * math.pi, 0.7])
    for zoom in (0.6, 4.0, 16.200000000000003):
        poses += [(zoom, position, angle) for position, angle in zip(positions, angles)]
    # The playfield's border grazing a side of the shown surface, d world units inside (d > 0)
    # or outside it: where filling instead of drawing the background stops being exact.
    zoom = 16.200000000000003
    for d in (-1.5, -0.1, 0.1, 1.0):
        poses += [
            (zoom, (PLAYFIELD - WINDOW_W / 2 / zoom + d, 0.0), 0.0),  # right side
            (zoom, (-PLAYFIELD + WINDOW_W / 2 / zoom - d, 0.0), 0.0),  # left side
            (zoom, (0.0, PLAYFIELD - 3 * WINDOW_H / 4 / zoom + d), 0.0),  # last row
            (zoom, (0.0, -PLAYFIELD + car_racing_fast._FIRST_SHOWN_ROW / zoom - d), 0.0),
        ]
    for zoom, position, angle in poses:
        expected, actual = (
            draw_road(stock, zoom, position, angle),
            draw_road(fast, zoom, position, angle),
        )
        assert np.array_equal(expected, actual), (zoom, position, angle)
    assert background_paths[True] > 0 and background_paths[False] > 0


def test_domain_randomize_matches_stock():
    stock, fast = CarRacing(domain_randomize=True), FastCarRacing(domain_randomize=True)
    max_rotation, off_road = assert_same_rollout(stock, fast, stress_actions(7, 200), {"seed": 7})
    assert max_rotation > math.pi / 2 and off_road
    assert not np.array_equal(fast.bg_color, [102, 204, 102])  # colours really randomised
    # Same track family, colours kept: options={"randomize": False}.
    assert_same_rollout(
        stock, fast, stress_actions(8, 100), {"seed": 8, "options": {"randomize": False}}
    )


def test_lap_complete_percent_is_honoured():
    # With 0 % required, touching the start tile at the first step completes the lap.
    stock = CarRacing(lap_complete_percent=0.0)
    fast = FastCarRacing(lap_complete_percent=0.0)
    assert_same_rollout(stock, fast, stress_actions(4, 20), {"seed": 4})
    fast.reset(seed=4)
    _, _, terminated, _, info = fast.step(np.array([0.0, 0.5, 0.0], dtype=np.float32))
    assert terminated and info["lap_finished"]


def test_discrete_actions_and_rgb_array_render_match_stock():
    stock = CarRacing(render_mode="rgb_array", continuous=False)
    fast = FastCarRacing(render_mode="rgb_array", continuous=False)
    actions = np.random.default_rng(5).integers(0, 5, size=60)
    actions[10:30] = 3  # gas
    assert_same_rollout(stock, fast, actions, {"seed": 5})
    frame_stock, frame_fast = stock.render(), fast.render()
    assert frame_fast.shape == (400, 600, 3)
    assert np.array_equal(frame_stock, frame_fast)


def test_human_render_mode_matches_stock():
    # Human mode draws to a (dummy) window at 50 FPS: keep it short. Closing runs pygame.quit(),
    # which must not leave FastCarRacing with a dead cached font.
    stock, fast = CarRacing(render_mode="human"), FastCarRacing(render_mode="human")
    assert_same_rollout(stock, fast, stress_actions(6, 10), {"seed": 6})
    stock.close()
    fast.close()
    assert not car_racing_fast._font_cache  # pygame.quit() dropped the cached font
    stock, fast = CarRacing(), FastCarRacing()
    assert_same_rollout(stock, fast, stress_actions(6, 5), {"seed": 6})


def test_check_env_passes():
    check_env(FastCarRacing(), skip_render_check=True)


def test_make_fast_car_racing_wraps_like_gymnasium_make():
    stock = gym.make("CarRacing-v3")
    fast = make_fast_car_racing()
    assert isinstance(fast.unwrapped, FastCarRacing)
    assert fast.spec.max_episode_steps == stock.spec.max_episode_steps == 1000
    assert fast.spec.id == car_racing_fast.FAST_CAR_RACING_ID

    def wrapper_types(env):
        types = []
        while isinstance(env, gym.Wrapper):
            types.append(type(env))
            env = env.env
        return types

    assert wrapper_types(fast) == wrapper_types(stock)
    fast_kwargs = make_fast_car_racing(domain_randomize=True, lap_complete_percent=0.5)
    assert fast_kwargs.unwrapped.domain_randomize
    assert fast_kwargs.unwrapped.lap_complete_percent == 0.5
    obs, _ = fast.reset(seed=0)
    assert obs.shape == (96, 96, 3)
