"""Experiment configuration: one frozen dataclass per stage, presets per experiment and scale.

Sections reuse the model modules' own configs (`vae.VAEConfig`, `mdn_rnn.MDNRNNConfig`,
`evolve.EvolveConfig`, ...), so a field means the same thing everywhere. The command line
changes any field with `--set section.field=value`; a mistyped section or field, or a value
outside its allowed range, stops before any work with a message naming it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from wm_jax.core import kernels
from wm_jax.envs import registry
from wm_jax.es import evolve
from wm_jax.models import mdn_rnn, vae
from wm_jax.train import mdn_rnn_train, vae_train

# Every registered game is an experiment of the same name (`wm_jax.register_game`); both are
# live views of the registry.
EXPERIMENTS = registry.Names()
SCALES = ("smoke", "small", "paper")
STAGES = (
    "collect",
    "train_vae",
    "encode",
    "train_mdn_rnn",
    "train_controller",
    "evaluate",
    "report",
)
GAME_OF = registry.Table(lambda spec: spec.name)


class ConfigError(ValueError):
    """A bad setting; the message names the section and field and what is allowed."""


@dataclasses.dataclass(frozen=True)
class CollectConfig:
    """Random rollouts in the real game (World Models: 10,000 per game)."""

    episodes: int = 10_000
    max_frames: int | None = None  # None: the game's own cap (CarRacing 1,000, Doom 2,100)
    min_frames: int | None = None  # Doom: the paper's code drops episodes under 100 frames
    workers: int = 0  # 0: one per CPU core
    # Not in the paper: this share of the episodes is played by the game's heuristic driver
    # (`GameSpec.driver`, CarRacing only), so M also sees what driving well pays.
    driver_fraction: float = 0.0
    # Not in the paper: the driver's largest per-frame chance to brake to a halt and wait
    # 30-200 frames (each episode draws its own in [0, this]), so M sees that standing still
    # earns nothing. CarRacing's driver only; 0 = never.
    driver_stops: float = 0.0


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Streaming loaders."""

    memory_budget_mb: int = 2048  # frames held in RAM by V's loader (not the whole dataset)
    encode_batch_size: int = 1024
    # Local devices V's and M's training and the encoding split each batch over (weights
    # replicated; `wm_jax.core.devices`). 0: as many as split the batch evenly; 1: one device.
    devices: int = 0
    # Also encode each episode mirrored left-right (frames flipped, actions mirrored), so M
    # learns both sides of the room from one side's data. Not in the paper; Doom only.
    mirror: bool = False


@dataclasses.dataclass(frozen=True)
class ControllerStageConfig:
    """How C is built and where it is trained."""

    kind: str = "linear_zh"  # linear_zh (paper's full model), linear_z, hidden_z (V-only rows)
    train_in: str = "real"  # real (paper, CarRacing) or dream (paper, Doom)
    temperature: float = 1.0  # τ of the dream (World Models §4.4); Doom 1.15
    generations: int = 1800
    initial_frames: int = 1024  # real first frames whose encodings start the dreams


@dataclasses.dataclass(frozen=True)
class EvaluateConfig:
    """Evaluation in the real game on seeds never used in training."""

    episodes: int = 100  # World Models reports 100 episodes / tracks
    workers: int = 0  # 0: one per CPU core
    # Frames per real episode, the random baseline's too; 0: the game's own cap (Doom 2,100,
    # CarRacing 1,000). Only the smoke presets cut it, to keep the tests short.
    max_steps: int = 0
    # After the run (and its §5 rounds), the chosen C (the best round on the selection seeds
    # above, `rounds.best_row`) plays this many *publication* tracks / levels, which no choice
    # looked at (`evaluate.PUBLICATION_SEED_OFFSET`); 0: none.
    publication_episodes: int = 0


@dataclasses.dataclass(frozen=True)
class IterateConfig:
    """World Models §5, after the first C: collect with C (plus noise), retrain M on all the
    data, re-evolve C in the new dream, evaluate; `iterations` times
    (`wm_jax.pipeline.iterative`)."""

    iterations: int = 0  # 0: the paper's one-shot pipeline
    episodes: int = 0  # new real episodes per iteration (0: collect.episodes)
    noise: float = 0.1  # std of the Gaussian noise on C's actions while collecting
    fresh_controller: bool = False  # re-evolve C from zeros (else from the previous C)
    # Settings of every iteration's run, e.g. "mdn_train.num_steps=1000" (M's steps per
    # iteration) or "data.mirror=true".
    overrides: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    experiment: str
    scale: str
    seed: int
    collect: CollectConfig
    data: DataConfig
    vae: vae.VAEConfig
    vae_train: vae_train.VAETrainConfig
    mdn_rnn: mdn_rnn.MDNRNNConfig
    mdn_train: mdn_rnn_train.MDNTrainConfig
    controller: ControllerStageConfig
    evolve: evolve.EvolveConfig
    evaluate: EvaluateConfig
    iterate: IterateConfig = IterateConfig()
    kernels: kernels.KernelsConfig = kernels.KernelsConfig()  # implementations, not results

    @property
    def game(self) -> str:
        return GAME_OF[self.experiment]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = (
    "collect",
    "data",
    "vae",
    "vae_train",
    "mdn_rnn",
    "mdn_train",
    "controller",
    "evolve",
    "evaluate",
    "iterate",
    "kernels",
)

# Allowed values (choices, or (low, high) inclusive numeric ranges; None = unbounded).
_CHOICES = {
    ("controller", "kind"): ("linear_zh", "linear_z", "hidden_z"),
    ("controller", "train_in"): ("real", "dream"),
    ("mdn_train", "windows"): ("stream", "random"),
    ("mdn_train", "grad_clip_mode"): ("value", "global_norm"),
    ("mdn_rnn", "log_sigma_bound"): ("soft", "none"),
    **{("kernels", name): allowed for name, allowed in kernels.CHOICES.items()},
}
_RANGES = {
    ("controller", "temperature"): (1e-3, 10.0),
    ("vae", "kl_tolerance"): (0.0, None),
    ("vae", "latent_dim"): (1, 1024),
    ("vae_train", "learning_rate"): (1e-8, 1.0),
    ("mdn_train", "learning_rate"): (1e-8, 1.0),
    ("mdn_rnn", "num_mixtures"): (1, 64),
    ("evolve", "sigma_init"): (1e-6, 100.0),
    ("collect", "workers"): (0, 4096),
    ("data", "devices"): (0, 4096),
    ("evaluate", "workers"): (0, 4096),
    ("evaluate", "max_steps"): (0, None),
    ("evaluate", "publication_episodes"): (0, None),
    ("collect", "driver_fraction"): (0.0, 1.0),
    ("collect", "driver_stops"): (0.0, 0.1),
    ("iterate", "iterations"): (0, 1000),
    ("iterate", "episodes"): (0, None),
    ("mdn_rnn", "reward_min"): (None, None),
    ("evolve", "stop_at_return"): (None, None),
    ("kernels", "es_blas_threads"): (-1, 4096),
}
_ZERO_ALLOWED = (
    "eval_every",
    "checkpoint_every",
    "min_frames",
    "done_pos_weight",
    "stop_after_stale_evals",
)


def _check_value(section: str, name: str, value: Any) -> None:
    where = f"{section}.{name}"
    if (section, name) in _CHOICES and value not in _CHOICES[(section, name)]:
        raise ConfigError(f"{where}={value!r}: allowed values are {_CHOICES[(section, name)]}")
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return
    if isinstance(value, float) and not math.isfinite(value):
        # No setting gives NaN or ±inf a meaning: a NaN τ or learning rate passes every range
        # comparison and breaks the run silently, so refuse it here.
        raise ConfigError(f"{where}={value!r}: must be a finite number")
    default = (0, None) if name in _ZERO_ALLOWED or isinstance(value, float) else (1, None)
    low, high = _RANGES.get((section, name), default)
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"{where}={value!r}: must be {bounds}")


def validate(config: ExperimentConfig) -> ExperimentConfig:
    """Check every field's value and the cross-section constraints; returns `config`."""
    if config.experiment not in EXPERIMENTS:
        raise ConfigError(f"experiment {config.experiment!r}: choose one of {EXPERIMENTS}")
    if config.scale not in SCALES:
        raise ConfigError(f"scale {config.scale!r}: choose one of {SCALES}")
    for section in SECTIONS:
        sub = getattr(config, section)
        for field in dataclasses.fields(sub):
            _check_value(section, field.name, getattr(sub, field.name))
    if config.vae.latent_dim != config.mdn_rnn.latent_dim:
        raise ConfigError(
            f"vae.latent_dim={config.vae.latent_dim} and mdn_rnn.latent_dim="
            f"{config.mdn_rnn.latent_dim} must be equal (M models V's latent)"
        )
    spec = registry.game_spec(config.game)
    model_reward = config.controller.train_in == "dream" and spec.dream_reward == "model"
    if model_reward and not (config.mdn_rnn.predict_reward and config.mdn_rnn.predict_done):
        # The dream pays M's reward and ends where the game would (CarRacing: leaving the
        # playfield costs -100 once and ends the episode).
        raise ConfigError(
            f"controller.train_in=dream for {config.game} needs M to predict reward and done: "
            "add --set mdn_rnn.predict_reward=true --set mdn_rnn.predict_done=true"
        )
    for field in ("driver_fraction", "driver_stops"):
        value = getattr(config.collect, field)
        if value > 0 and spec.driver is None:
            raise ConfigError(
                f"collect.{field}={value}: {config.game} has no heuristic driver (GameSpec.driver)"
            )
    if config.mdn_rnn.action_dim != spec.action_dim:
        raise ConfigError(
            f"mdn_rnn.action_dim={config.mdn_rnn.action_dim}: {config.game} takes "
            f"{spec.action_dim} controller outputs"
        )
    if config.data.mirror and spec.mirror_signs is None:
        raise ConfigError(
            f"data.mirror=true: {config.game} is not mirror-symmetric; only games whose "
            "GameSpec has mirror_signs (doom_take_cover) can be mirrored"
        )
    if config.iterate.iterations and config.controller.train_in != "dream":
        raise ConfigError(
            f"iterate.iterations={config.iterate.iterations}: the iterative procedure (§5) "
            "re-evolves C in the dream and needs controller.train_in=dream"
        )
    per_call = config.evolve.generations_per_call
    if config.controller.generations % per_call:
        raise ConfigError(
            f"controller.generations={config.controller.generations} must be a multiple of "
            f"evolve.generations_per_call={per_call}"
        )
    return config


def _parse(section: str, name: str, annotation: Any, text: str) -> Any:
    """Parse `text` as the field's annotated type (int, float, bool, str, tuple, optional)."""
    where = f"{section}.{name}"
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if text.lower() in ("none", "null") and type(None) in args:
            return None
        annotation = next(arg for arg in args if arg is not type(None))
    try:
        if annotation is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if annotation is int:
            return int(text.replace("_", ""))
        if annotation is float:
            return float(text)
        if typing.get_origin(annotation) is tuple:
            return tuple(part.strip() for part in text.split(",") if part.strip())
        return text
    except ValueError:
        raise ConfigError(f"{where}={text!r}: expected {annotation.__name__}") from None


def apply_overrides(config: ExperimentConfig, overrides: list[str]) -> ExperimentConfig:
    """Apply `section.field=value` settings; errors name the section or field and the choices."""
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise ConfigError(f"--set {item!r}: expected section.field=value")
        if section not in SECTIONS:
            raise ConfigError(f"--set {item!r}: unknown section {section!r}; sections: {SECTIONS}")
        sub = getattr(config, section)
        fields = {f.name: f for f in dataclasses.fields(sub)}
        if name not in fields:
            raise ConfigError(
                f"--set {item!r}: unknown field {section}.{name}; fields: {sorted(fields)}"
            )
        annotation = typing.get_type_hints(type(sub))[name]  # resolves string annotations
        value = _parse(section, name, annotation, text.strip())
        _check_value(section, name, value)
        try:
            sub = dataclasses.replace(sub, **{name: value})
        except (ValueError, TypeError) as err:  # the module config's own __post_init__
            raise ConfigError(f"--set {item!r}: {err}") from err
        config = dataclasses.replace(config, **{section: sub})
    return validate(config)


def from_dict(data: dict[str, Any]) -> ExperimentConfig:
    """Rebuild a config from `to_dict()` output (e.g. a run folder's config.json)."""
    kwargs = dict(data)
    hints = typing.get_type_hints(ExperimentConfig)  # each section's class
    for field in dataclasses.fields(ExperimentConfig):
        if field.name in SECTIONS:
            cls = hints[field.name]
            if field.name not in data:  # a section newer than the run: its defaults
                kwargs[field.name] = cls()
                continue
            sub = dict(data[field.name])
            for f in dataclasses.fields(cls):  # JSON turns tuples into lists
                if isinstance(sub.get(f.name), list):
                    sub[f.name] = tuple(sub[f.name])
            kwargs[field.name] = cls(**sub)
    return validate(ExperimentConfig(**kwargs))
