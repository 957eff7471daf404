"""Real games behind `RealEnv`: preprocessing, action mapping, headless stepping, MinAtar in JAX."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from wm_jax.envs import car_racing, doom, game_spec, games, make_env, minatar, random_policy
from wm_jax.envs.base import check_action, discretise, resize_frame


def _sizes(spec):
    return (spec.action_dim, spec.max_steps, spec.latent_dim, spec.hidden_size, spec.mirror_signs)


def test_registry():
    assert set(games()) >= {"car_racing", "doom_take_cover", "minatar_breakout", "minatar_asterix"}
    assert _sizes(game_spec("car_racing")) == (3, 1000, 32, 256, None)  # not mirror-symmetric
    assert _sizes(game_spec("doom_take_cover")) == (1, 2100, 64, 512, (-1.0,))
    with pytest.raises(ValueError, match="unknown game 'pong'"):
        make_env("pong")


def test_import_loads_no_game_or_jax():
    code = (
        "import sys, wm_jax.envs, wm_jax.data, wm_jax.envs.collect;"
        "print(sorted({'jax', 'gymnasium', 'vizdoom', 'pygame'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_car_racing_preprocessing_crops_dashboard():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[:84, :48] = (200, 10, 10)  # left of the view red
    frame[:84, 48:] = (10, 10, 200)  # right blue
    frame[84:] = 255  # dashboard white: must not appear
    out = car_racing.preprocess_frame(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :31], np.broadcast_to([200, 10, 10], (64, 31, 3)))
    np.testing.assert_array_equal(out[:, 33:], np.broadcast_to([10, 10, 200], (64, 31, 3)))
    with pytest.raises(ValueError, match="96, 96, 3"):
        car_racing.preprocess_frame(np.zeros((84, 96, 3), np.uint8))


def test_car_racing_dashboard_variant_keeps_the_dashboard():
    frame = np.zeros((96, 96, 3), np.uint8)
    frame[84:] = 255  # the dashboard, white
    out = car_racing.preprocess_frame(frame, dashboard=True)
    assert out.shape == (64, 64, 3)
    assert (out[-7:] == 255).all() and (out[:55] == 0).all()  # rows 84-95 of 96 -> 56-63 of 64
    env = make_env("car_racing_dashboard", max_steps=2)
    assert env.dashboard and not make_env("car_racing", max_steps=2).dashboard
    # The game's dashboard is black (with thin bars); the cropped frame ends in grass or road.
    with_dashboard = env.reset(seed=3)[-4:].mean()
    assert with_dashboard < 0.5 * make_env("car_racing", max_steps=2).reset(seed=3)[-4:].mean()


def test_doom_preprocessing_keeps_whole_view():
    frame = np.full((120, 160, 3), 50, np.uint8)
    frame[-30:] = 220  # the floor's last quarter survives: nothing is cropped
    out = doom.preprocess_frame(frame)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert (out[:46] == 50).all() and (out[-15:] == 220).all()


def test_resize_rejects_bad_frames():
    with pytest.raises(ValueError, match="uint8"):
        resize_frame(np.zeros((96, 96, 3), np.float32))


def test_car_racing_action_mapping():
    np.testing.assert_allclose(car_racing.game_action([0.5, -1.0, -0.3]), [0.5, 0.0, 0.0])
    np.testing.assert_allclose(car_racing.game_action([-1.0, 1.0, 1.0]), [-1.0, 1.0, 1.0])
    np.testing.assert_allclose(car_racing.game_action([0.0, 0.0, 0.5]), [0.0, 0.5, 0.5])
    np.testing.assert_allclose(car_racing.game_action([3.0, 5.0, -2.0]), [1.0, 1.0, 0.0])
    assert car_racing.game_action(np.zeros(3)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        car_racing.game_action([0.0, 0.0])


@pytest.mark.parametrize("shape", [(), (1, 1), (2,), (1, 2)])
def test_actions_of_the_wrong_shape_are_refused_naming_the_expected_one(shape):
    # A batch (1, A) or a bare scalar used to be flattened and played.
    with pytest.raises(ValueError, match=r"shape \(1,\), got shape"):
        check_action(np.zeros(shape), 1)
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        doom.game_action(np.zeros(shape))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        car_racing.game_action(np.zeros((1, *shape, 3)))
    assert check_action(np.array([0.5]), 1).shape == (1,)


def test_doom_action_mapping():
    left, stay, right = [1, 0], [0, 0], [0, 1]
    cases = {-1.0: left, -0.5: left, -0.34: left, -0.33: stay, 0.0: stay, 0.33: stay}
    cases |= {0.34: right, 1.0: right, 7.0: right, -7.0: left}
    for x, buttons in cases.items():
        assert doom.game_action(np.array([x])) == buttons, x
    assert [discretise(x, 3) for x in (-1.0, 0.0, 1.0)] == [0, 1, 2]
    with pytest.raises(ValueError, match="finite"):
        doom.game_action(np.array([np.nan]))


def _play(env, seed, actions):
    frames = [env.reset(seed)]
    for action in actions:
        frame, reward, terminated, truncated = env.step(action)
        frames.append(frame)
        assert isinstance(reward, float) and isinstance(terminated, bool)
        if terminated or truncated:
            break
    return np.stack(frames), terminated, truncated


def test_car_racing_steps_headless(monkeypatch):
    monkeypatch.delenv("SDL_VIDEODRIVER", raising=False)
    env = make_env("car_racing", max_steps=4)
    assert os.environ["SDL_VIDEODRIVER"] == "dummy"
    actions = [np.array([0.0, 0.6, -1.0])] * 6
    frames, terminated, truncated = _play(env, 3, actions)
    assert frames.shape == (5, 64, 64, 3) and frames.dtype == np.uint8
    assert truncated and not terminated
    np.testing.assert_array_equal(_play(env, 3, actions)[0], frames)  # seeded
    env.close()
    with pytest.raises(ValueError, match="renderer"):
        car_racing.CarRacingEnv(renderer="opengl")


@pytest.mark.parametrize("full_episode", [False, True])
def test_car_racing_ends_where_the_game_does(full_episode):
    from test_car_racing_fast import leave_playfield

    env = car_racing.CarRacingEnv(full_episode=full_episode, max_steps=6)
    gas = np.array([0.0, -0.4, -1.0])
    env.reset(3)
    env.step(gas)
    leave_playfield(env._game)
    _, reward, terminated, truncated = env.step(gas)
    assert reward == -100.0 and (terminated, truncated) == (not full_episode, False)
    if full_episode:  # the World Models code's rollouts: the game goes on, -100 a step
        later = [env.step(gas)[1:] for _ in range(4)]
        assert later == [(-100.0, False, False)] * 3 + [(-100.0, False, True)]
    env.reset(3)
    env._game.tile_visited_count = len(env._game.track)  # every tile visited
    _, reward, terminated, truncated = env.step(gas)
    assert reward != -100.0 and (terminated, truncated) == (not full_episode, False)
    env.close()


def test_doom_steps_headless_without_writing_to_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = make_env("doom_take_cover", max_steps=30)
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (40, 1))
    frames, terminated, truncated = _play(env, 11, actions)
    assert frames.shape[1:] == (64, 64, 3) and frames.dtype == np.uint8
    assert terminated or (truncated and len(frames) == 31)
    assert frames.std() > 10  # a rendered view, not a blank screen
    np.testing.assert_array_equal(_play(env, 11, actions)[0], frames)  # seeded
    env.close()
    assert os.listdir(tmp_path) == []
    assert os.getcwd() == str(tmp_path)


def test_random_policies():
    doom_spec = game_spec("doom_take_cover")
    policy = random_policy("doom_take_cover")(doom_spec, 5)
    actions = np.array([policy(None)[0] for _ in range(300)])
    runs = np.diff(np.flatnonzero(np.diff(actions) != 0))
    assert runs.min() >= 1 and runs.max() <= 10  # held 1-10 frames
    assert np.abs(actions).max() <= 1
    car_spec = game_spec("car_racing")
    frame = np.zeros((64, 64, 3), np.uint8)
    first = [random_policy("car_racing")(car_spec, 1)(frame) for _ in range(2)]
    np.testing.assert_array_equal(*first)  # seeded
    walk = random_policy("car_racing")(car_spec, 2)
    actions = np.stack([walk(frame) for _ in range(200)])
    assert actions.shape == (200, 3) and actions.dtype == np.float32
    assert np.abs(actions).max() <= 1 and actions[:, 0].std() > 0.02


def test_road_offset():
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[..., 1] = 204  # grass
    assert car_racing.road_offset(frame) is None
    frame[:, 44:54] = 102  # road to the right
    assert car_racing.road_offset(frame) > 0.9


def test_minatar_render_known_observation():
    obs = jnp.zeros((10, 10, 4)).at[9, 4, 0].set(1.0).at[1:4, :, 3].set(1.0)
    frame = jax.jit(minatar.render)(obs)
    assert frame.shape == (64, 64, 3) and frame.dtype == jnp.uint8
    np.testing.assert_array_equal(
        frame[56:62, 26:32], np.broadcast_to(minatar.PALETTE[1], (6, 6, 3))
    )
    np.testing.assert_array_equal(
        frame[8:26, 2:62], np.broadcast_to(minatar.PALETTE[4], (18, 60, 3))
    )
    assert (frame[:2] == 0).all() and (frame[:, -2:] == 0).all()


def test_minatar_draws_each_channel_in_its_palette_colour():
    num_channels = 7  # Freeway; Breakout and Asterix have 4, Seaquest 10
    obs = jnp.zeros((10, 10, num_channels))
    for channel in range(num_channels):
        obs = obs.at[0, channel, channel].set(1.0)
    frame = np.asarray(minatar.render(obs))
    for channel in range(num_channels):  # cell (0, channel) at pixels 2 + 6 * channel
        np.testing.assert_array_equal(frame[2, 2 + 6 * channel], minatar.PALETTE[channel + 1])
    with pytest.raises(ValueError, match="channels"):
        minatar.render(jnp.zeros((10, 10, len(minatar.PALETTE))))


def test_minatar_asterix_plays_its_five_actions():
    env = make_env("minatar_asterix", max_steps=20)
    assert (env.name, env.game.env_id, env.game.num_actions) == (
        "minatar_asterix",
        "Asterix-MinAtar",
        5,
    )
    fixed = dict(game_spec("minatar_asterix").fixed_actions)
    bins = [int(minatar.discretise(jnp.asarray(a), 5)) for a in fixed.values()]
    assert bins == [0, 1, 2, 3, 4]  # gymnax's minimal action set: noop, left, up, right, down
    frames, _, _ = _play(env, 2, [np.asarray(fixed["up"])] * 25)
    colours = {tuple(c) for c in frames.reshape(-1, 3).tolist()}
    assert tuple(minatar.PALETTE[1]) in colours  # the player
    assert colours <= {tuple(c) for c in minatar.PALETTE[:5].tolist()}
    with pytest.raises(ValueError, match=r"shape \(1,\)"):
        env.step(np.zeros((1, 1)))
    env.close()
    again = make_env("minatar_asterix")  # another env (the probe makes one per action)
    assert again._step is env._step  # compiles nothing again: one jitted step per process


def test_minatar_jit_vmap_scan_matches_real_env():
    game = minatar.MinAtarGame()
    params = game.default_params
    assert int(minatar.discretise(jnp.array([-0.9]), 3)) == 0
    assert int(minatar.discretise(jnp.array([0.9]), 3)) == 2
    num_steps = 30

    def rollout(key, actions):  # the key schedule of MinAtarEnv
        key, key_reset = jax.random.split(key)
        frame, state = game.reset(key_reset, params)

        def body(carry, action):
            key, state = carry
            key, key_step = jax.random.split(key)
            out = game.step(key_step, state, action, params)
            return (key, out.state), (out.final_frame, out.reward, out.terminated | out.truncated)

        return frame, jax.lax.scan(body, (key, state), actions)[1]

    seeds = jnp.arange(3)
    actions = jax.random.uniform(jax.random.key(9), (3, num_steps, 1), minval=-1, maxval=1)
    keys = jax.vmap(jax.random.key)(seeds)
    first, (frames, rewards, done) = jax.jit(jax.vmap(rollout))(keys, actions)
    assert first.shape == (3, 64, 64, 3) and frames.shape == (3, num_steps, 64, 64, 3)
    assert frames.dtype == jnp.uint8 and rewards.dtype == jnp.float32
    colours = {tuple(c) for c in np.asarray(frames).reshape(-1, 3).tolist()}
    assert colours <= {tuple(c) for c in minatar.PALETTE[:5].tolist()}

    env = make_env("minatar_breakout")  # host-side RealEnv over the same jitted game
    np.testing.assert_array_equal(env.reset(1), first[1])
    for t in range(num_steps):  # vmap + scan + jit equals stepping one env
        frame, reward, terminated, truncated = env.step(np.asarray(actions[1, t]))
        np.testing.assert_array_equal(frame, frames[1, t])
        assert reward == rewards[1, t] and (terminated or truncated) == done[1, t]
        if terminated or truncated:
            break
    env.close()


def test_car_racing_fast_renderer_gives_stock_frames():
    pytest.importorskip("wm_jax.envs.car_racing_fast")
    actions = [np.array([0.3, 0.5, -1.0])] * 3
    frames = {}
    for renderer in ("stock", "fast"):
        env = car_racing.CarRacingEnv(renderer=renderer)
        frames[renderer] = _play(env, 4, actions)[0]
        env.close()
    np.testing.assert_array_equal(frames["fast"], frames["stock"])
