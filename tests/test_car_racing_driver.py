"""The heuristic CarRacing driver and the per-episode mix of collection policies."""

import numpy as np
import pytest

from wm_jax.envs import DriverMix, collect, game_spec, make_env, random_policy
from wm_jax.envs.car_racing import RandomWalkPolicy
from wm_jax.envs.car_racing_driver import NoisyDriver
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline.presets import preset


def _tile_reward(policy_factory, seed, frames=150):
    spec = game_spec("car_racing")
    env = make_env("car_racing")
    try:
        episode = collect.run_episode(env, policy_factory, spec, seed, 0, frames)
    finally:
        env.close()
    return float(episode.rewards.sum()), episode


def _steady_driver(spec, seed):
    """The driver's careful character: no noise, no lapses, a safe speed."""
    driver = NoisyDriver(spec, seed)
    driver.target_speed, driver.steer_noise, driver.lapse_rate = 35.0, 0.0, 0.0
    return driver


def test_the_driver_follows_the_road_where_the_random_policy_does_not():
    # A car on the road collects tiles (+1000/N each, -0.1 a frame); 400 frames of 1,000.
    driven, episode = _tile_reward(_steady_driver, seed=3, frames=400)
    random_walk, _ = _tile_reward(RandomWalkPolicy, seed=3, frames=400)
    assert episode.actions.shape == (400, 3) and np.all(np.abs(episode.actions) <= 1.0)
    assert driven > 1.5 * random_walk and driven > 150.0, (driven, random_walk)


def test_driver_mix_picks_per_episode_seed_and_its_extremes_are_pure():
    spec = game_spec("car_racing")
    base = random_policy("car_racing")
    never = DriverMix(base, spec.driver, 0.0)
    always = DriverMix(base, spec.driver, 1.0)
    half = DriverMix(base, spec.driver, 0.5)
    seeds = range(200)
    assert not any(isinstance(never(spec, s), NoisyDriver) for s in seeds)
    assert all(isinstance(always(spec, s), NoisyDriver) for s in seeds)
    picks = [isinstance(half(spec, s), NoisyDriver) for s in seeds]
    assert 70 < sum(picks) < 130
    assert picks == [isinstance(half(spec, s), NoisyDriver) for s in seeds]  # reproducible
    with pytest.raises(ValueError, match="driver fraction"):
        DriverMix(base, spec.driver, 1.5)


def test_driver_fraction_is_refused_for_a_game_without_a_driver():
    with pytest.raises(cfg.ConfigError, match="collect.driver_fraction=0.5: doom_take_cover"):
        cfg.apply_overrides(preset("doom_take_cover", "smoke"), ["collect.driver_fraction=0.5"])
    with pytest.raises(cfg.ConfigError, match="collect.driver_fraction"):
        cfg.apply_overrides(preset("car_racing", "smoke"), ["collect.driver_fraction=2"])


def test_driver_stops_stand_the_car_still_and_leave_its_character_alone():
    spec = game_spec("car_racing")
    stopping = NoisyDriver(spec, 5, stop_rate=0.05)
    plain = NoisyDriver(spec, 5)
    # Stops draw from their own stream: the episode's character is the one it had before.
    assert (stopping.target_speed, stopping.gain, stopping.lapse_rate) == (
        plain.target_speed,
        plain.gain,
        plain.lapse_rate,
    )
    assert plain.stop_rate == 0.0 and 0.0 < stopping.stop_rate <= 0.05

    def factory(spec, seed):
        return NoisyDriver(spec, seed, stop_rate=0.05)

    _, episode = _tile_reward(factory, seed=5, frames=400)
    stopped = np.all(episode.actions == np.array([0.0, -1.0, 0.6], np.float32), axis=1)
    assert stopped.any(), "no stop in 400 frames at a per-frame rate of 0.05 at most"
    # After braking, a standing car earns no tile: every frame pays the game's -0.1.
    runs = np.flatnonzero(np.diff(np.concatenate([[0], stopped.astype(int), [0]])))
    starts, ends = runs[::2], runs[1::2]
    longest = int(np.argmax(ends - starts))
    assert ends[longest] - starts[longest] >= 30
    tail = episode.rewards[ends[longest] - 10 : ends[longest]]
    np.testing.assert_allclose(tail, -0.1, atol=1e-6)


def test_driver_mix_passes_the_driver_its_options():
    spec = game_spec("car_racing")
    mix = DriverMix(random_policy("car_racing"), spec.driver, 1.0, {"stop_rate": 0.01})
    assert 0.0 < mix(spec, 3).stop_rate <= 0.01
    assert DriverMix(random_policy("car_racing"), spec.driver, 1.0)(spec, 3).stop_rate == 0.0


def test_driver_stops_are_refused_for_a_game_without_a_driver():
    with pytest.raises(cfg.ConfigError, match="collect.driver_stops=0.01: doom_take_cover"):
        cfg.apply_overrides(preset("doom_take_cover", "smoke"), ["collect.driver_stops=0.01"])
