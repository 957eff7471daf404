"""Experiment configuration: presets, overrides and their errors."""

import dataclasses
import json

import pytest

from wm_jax.pipeline import config as cfg
from wm_jax.pipeline.presets import preset


@pytest.mark.parametrize("experiment", cfg.EXPERIMENTS)
@pytest.mark.parametrize("scale", cfg.SCALES)
def test_presets_round_trip_through_json(experiment, scale):
    config = preset(experiment, scale, seed=3)
    data = json.loads(json.dumps(config.to_dict()))
    assert cfg.from_dict(data) == config


def test_paper_scale_holds_the_papers_numbers():
    doom = preset("doom_take_cover", "paper")
    assert doom.collect.episodes == 10_000 and doom.collect.min_frames == 100
    assert doom.vae.latent_dim == 64 and doom.mdn_rnn.hidden_size == 512
    assert doom.mdn_rnn.predict_done and doom.mdn_rnn.use_restart
    assert doom.controller.train_in == "dream" and doom.controller.temperature == 1.15
    assert doom.evolve.population_size == 64 and doom.evolve.rollouts_per_member == 16
    assert doom.evolve.sigma_init == 0.1 and doom.evaluate.episodes == 100
    car = preset("car_racing", "paper")
    assert car.vae.latent_dim == 32 and car.mdn_rnn.hidden_size == 256
    assert car.mdn_train.seq_len == 999 and car.mdn_train.batch_size == 100
    assert car.controller.train_in == "dream"  # ours; the paper's real-game C is one flag away
    assert preset("car_racing", "paper", train_in="real").controller.train_in == "real"


def test_overrides_parse_types():
    config = cfg.apply_overrides(
        preset("doom_take_cover", "smoke"),
        [
            "controller.temperature=1.3",
            "collect.max_frames=none",
            "evolve.shard_population=true",
            "mdn_train.num_steps=1_000",
        ],
    )
    assert config.controller.temperature == 1.3
    assert config.collect.max_frames is None
    assert config.evolve.shard_population is True
    assert config.mdn_train.num_steps == 1000


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("controller.train_in=moon", r"controller.train_in='moon'.*\('real', 'dream'\)"),
        ("vae.latnt_dim=3", r"unknown field vae.latnt_dim.*latent_dim"),
        ("foo.x=1", r"unknown section 'foo'.*controller"),
        ("vae_train.num_epochs=-1", r"vae_train.num_epochs=-1: must be >= 1"),
        ("evolve.population_size=abc", r"evolve.population_size='abc': expected int"),
        ("controller.temperature=0", r"controller.temperature=0.0: must be in"),
        ("evolve.shard_population=maybe", r"evolve.shard_population='maybe': expected bool"),
        ("temperature=1", r"expected section.field=value"),
        ("vae.latent_dim=16", r"vae.latent_dim=16 and mdn_rnn.latent_dim=64 must be equal"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(cfg.ConfigError, match=message):
        cfg.apply_overrides(preset("doom_take_cover", "smoke"), [override])


def test_car_racing_in_the_dream_needs_reward_and_done_heads():
    car = preset("car_racing", "smoke")
    with pytest.raises(cfg.ConfigError, match="mdn_rnn.predict_done=true"):
        cfg.apply_overrides(car, ["mdn_rnn.predict_done=false"])
    car = preset("car_racing", "smoke", train_in="real")
    with pytest.raises(cfg.ConfigError, match="mdn_rnn.predict_done=true"):
        cfg.apply_overrides(car, ["controller.train_in=dream", "mdn_rnn.predict_reward=1"])
    heads = ["mdn_rnn.predict_reward=1", "mdn_rnn.predict_done=1"]
    config = cfg.apply_overrides(car, ["controller.train_in=dream", *heads])
    assert config.mdn_rnn.predict_reward and config.mdn_rnn.predict_done


def test_only_mirror_symmetric_games_can_be_mirrored():
    with pytest.raises(cfg.ConfigError, match="data.mirror=true: car_racing is not mirror"):
        cfg.apply_overrides(preset("car_racing", "smoke"), ["data.mirror=true"])
    doom = cfg.apply_overrides(preset("doom_take_cover", "smoke"), ["data.mirror=true"])
    assert doom.data.mirror


def test_unknown_experiment_and_scale():
    with pytest.raises(cfg.ConfigError, match="unknown experiment"):
        preset("pong")
    with pytest.raises(cfg.ConfigError, match="unknown scale"):
        preset("doom_take_cover", "huge")


def test_configs_are_frozen():
    config = preset("doom_take_cover", "smoke")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 4


@pytest.mark.parametrize(
    "override",
    [
        "controller.temperature=nan",
        "vae.kl_tolerance=inf",
        "evolve.sigma_init=nan",
        "mdn_train.grad_clip=nan",
        "vae_train.learning_rate=-inf",
    ],
)
def test_nan_and_inf_are_refused_naming_the_field(override):
    field = override.split("=")[0]
    with pytest.raises(cfg.ConfigError, match=f"{field}=.*must be a finite number"):
        cfg.apply_overrides(preset("doom_take_cover", "smoke"), [override])


def test_a_config_json_with_nan_is_refused():
    data = preset("doom_take_cover", "smoke").to_dict()
    data["controller"]["temperature"] = float("nan")
    with pytest.raises(cfg.ConfigError, match="controller.temperature"):
        cfg.from_dict(data)


def test_car_racing_trains_c_in_the_dream_by_default_and_the_paper_way_is_one_flag_away():
    from wm_jax.pipeline import experiment

    dream = experiment.build_config("car_racing", "small", 0, [])
    assert dream.controller.train_in == "dream"
    assert dream.mdn_rnn.predict_reward and dream.mdn_rnn.predict_done
    assert dream.evolve.rollouts_per_member == 8
    assert dream.mdn_rnn.reward_min == -1.0  # the playfield's -100 floored (presets.car_racing)
    # Three §5 rounds of C's own episodes (the first data's driver share is not theirs).
    assert dream.iterate.iterations == 3 and dream.iterate.fresh_controller
    assert dream.evaluate.episodes == 20 and dream.evaluate.publication_episodes == 100
    assert "collect.driver_fraction=0" in dream.iterate.overrides
    real = experiment.build_config("car_racing", "small", 0, ["controller.train_in=real"])
    assert real.controller.train_in == "real"
    # Sized for the real game: one rollout per member, the paper's M without extra heads.
    assert real.evolve.rollouts_per_member == 1 and real.evolve.population_size == 16
    assert not real.mdn_rnn.predict_done
    assert real.collect == preset("car_racing", "small", train_in="real").collect


def test_doom_small_stops_only_its_first_controller_early():
    # The first C only points the §5 round's data collection; the round's C evolves in full.
    from wm_jax.pipeline.iterative import iteration_config

    first = preset("doom_take_cover", "small")
    assert first.evolve.stop_after_stale_evals == 1 and first.evolve.stop_at_return == 2058.0
    round_ = iteration_config(first, first.mdn_train.num_steps, 1, list(first.iterate.overrides))
    assert round_.evolve.stop_after_stale_evals == 0 and round_.evolve.stop_at_return is None
    assert round_.data.mirror and round_.evolve.eval_every == first.evolve.eval_every


def test_expected_wall_time_counts_the_iterations_asked_for():
    from wm_jax.pipeline.presets import expected_wall_time

    assert expected_wall_time("doom_take_cover", "small") == (
        "expected wall time on a 2-core CPU: about 38 min"
    )
    two = expected_wall_time("doom_take_cover", "small", iterations=2)
    assert "about 82 min" in two and "× 2" in two
    assert "not measured" in expected_wall_time("minatar_breakout", "small")
    # C trained in the real game is another pipeline (no §5 rounds), timed apart.
    assert "about 24 min" in expected_wall_time("car_racing", "small", train_in="real")
    assert "about 49 min" in expected_wall_time("car_racing", "small")


@pytest.mark.parametrize("experiment", ["doom_take_cover", "car_racing"])
def test_show_config_lines_are_settings_that_rebuild_the_config(experiment, capsys):
    from wm_jax.pipeline import experiment as runner

    config = preset(experiment, "small")
    lines = runner.config_lines(config)
    settings = [line for line in lines if "." in line.partition("=")[0]]
    assert len(settings) == sum(len(dataclasses.fields(getattr(config, s))) for s in cfg.SECTIONS)
    assert cfg.apply_overrides(config, settings) == config  # every value parses back
    assert runner.main([experiment, "--show-config", "--set", "controller.temperature=0.5"]) == 0
    assert "controller.temperature=0.5" in capsys.readouterr().out.splitlines()
