"""The game registry: one `GameSpec` per game holds everything the library needs to play it.

A game is one call, `wm_jax.register_game(spec)`; the runner's experiments, the presets, the
dream's reward and C's inputs, the probe's fixed actions and the collectors all read the spec.
A spec holds only strings, numbers and tuples (import paths rather than callables), so worker
processes receive it whole and register it there too: a game registered only in the main
process plays the same game in every worker.

Paths are "module:attribute", imported on first use, so importing `wm_jax.envs` loads neither
gymnasium, ViZDoom nor JAX.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

REWARD_KINDS = ("survival", "model")
CONTROLLER_INPUTS = ("z", "c", "h")


def _pairs(value: Any) -> tuple[tuple[str, Any], ...]:
    """A dict (or pairs) as sorted (key, value) pairs: hashable, picklable, order-free."""
    return tuple(sorted(dict(value).items()))


@dataclasses.dataclass(frozen=True, kw_only=True)
class GameSpec:
    """Everything the library needs to know about a game.

    Dicts given for `env_kwargs`, `fixed_actions` and `preset_overrides` are stored as tuples of
    pairs, so a spec hashes and pickles; `dict(spec.fixed_actions)` reads one back.
    """

    name: str  # the game's and its experiment's name, e.g. "minatar_breakout"
    env: str  # "module:attribute" of the RealEnv factory, called as env(**env_kwargs, **kwargs)
    random_policy: str  # "module:attribute" of the random-rollout PolicyFactory (spec, seed)
    # "module:attribute" of a heuristic driver PolicyFactory for `collect.driver_fraction` of
    # the episodes (CarRacing: `car_racing_driver.NoisyDriver`); None: the game has none.
    driver: str | None = None
    action_dim: int  # controller outputs, each in [-1, 1]
    max_steps: int  # episode cap
    env_kwargs: tuple[tuple[str, Any], ...] = ()  # the env factory's keyword arguments
    latent_dim: int = 32  # V's z size (World Models, Appendix: CarRacing 32, Doom 64)
    hidden_size: int = 256  # M's LSTM size (CarRacing 256, Doom 512)
    # What the dream pays: "survival" +1 a step survived (Doom TakeCover), "model" M's reward
    # head (then M must predict reward and done; the dream ends where M predicts the game ends).
    dream_reward: str = "model"
    controller_inputs: tuple[str, ...] = ("z", "h")  # C's features (Doom: z, c, h)
    controller_bias: bool = True  # World Models, Appendix: Doom's 1,088 weights have no bias
    # Fixed actions the probe plays in the dream and in the game: name -> controller output.
    fixed_actions: tuple[tuple[str, tuple[float, ...]], ...] = ()
    probe_episodes: int = 20  # real episodes per fixed action in the report
    # Controller-output sign flips that mirror an action left-right (None: the game is not
    # mirror-symmetric, e.g. CarRacing's tracks all run one way round).
    mirror_signs: tuple[float, ...] | None = None
    min_frames: int = 0  # collection drops shorter random episodes (Doom: 100)
    compresslevel: int = 6  # zlib level of the stored episodes
    # "module:attribute" of the preset builder (spec, scale, seed, train_in) -> ExperimentConfig,
    # and settings ("section.field=value") applied after it, per scale.
    preset: str = "wm_jax.pipeline.presets:dream_game"
    preset_overrides: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def __post_init__(self):
        def store(field: str, value: Any) -> None:  # frozen: normalise once, here
            object.__setattr__(self, field, value)

        fixed = tuple((name, tuple(map(float, a))) for name, a in _items(self.fixed_actions))
        store("fixed_actions", fixed)
        store("env_kwargs", _pairs(self.env_kwargs))
        store("preset_overrides", tuple((s, tuple(o)) for s, o in _pairs(self.preset_overrides)))
        store("controller_inputs", tuple(self.controller_inputs))
        if self.mirror_signs is not None:
            store("mirror_signs", tuple(map(float, self.mirror_signs)))
        _check(self)

    def replace(self, **changes: Any) -> GameSpec:
        return dataclasses.replace(self, **changes)


def _items(value: Any) -> list[tuple[str, Any]]:
    return list(value.items()) if isinstance(value, Mapping) else list(value)


def _check(spec: GameSpec) -> None:
    """A bad spec stops at registration, with the field it is about."""
    where = f"GameSpec {spec.name!r}:"
    for field in ("env", "random_policy", "preset", "driver"):
        if field == "driver" and spec.driver is None:
            continue
        if getattr(spec, field).count(":") != 1:
            raise ValueError(f"{where} {field}={getattr(spec, field)!r} must be 'module:attribute'")
    if spec.action_dim < 1 or spec.max_steps < 1:
        raise ValueError(f"{where} action_dim and max_steps must be >= 1")
    if spec.dream_reward not in REWARD_KINDS:
        raise ValueError(f"{where} dream_reward must be one of {REWARD_KINDS}")
    inputs = spec.controller_inputs
    if not inputs or inputs[0] != "z" or any(name not in CONTROLLER_INPUTS for name in inputs):
        raise ValueError(f"{where} controller_inputs must start with 'z' and name z, c, h")
    for name, action in spec.fixed_actions:
        if len(action) != spec.action_dim:
            raise ValueError(f"{where} fixed action {name!r} must have {spec.action_dim} entries")
    if spec.mirror_signs is not None and len(spec.mirror_signs) != spec.action_dim:
        raise ValueError(f"{where} mirror_signs must have action_dim={spec.action_dim} entries")
    for scale, _ in spec.preset_overrides:
        if scale not in ("smoke", "small", "paper"):
            raise ValueError(f"{where} preset_overrides are per scale (smoke, small, paper)")


_REGISTRY: dict[str, GameSpec] = {}


def register_game(spec: GameSpec, *, replace: bool = False) -> GameSpec:
    """Adds a game (and its experiment) under `spec.name`; returns the spec.

    Registering an equal spec again does nothing; a different spec under a taken name needs
    `replace=True`.
    """
    if not isinstance(spec, GameSpec):
        raise TypeError(f"register_game takes a GameSpec, got {type(spec).__name__}")
    if not replace and _REGISTRY.get(spec.name, spec) != spec:
        raise ValueError(
            f"game {spec.name!r} is registered already with another spec; pass replace=True"
        )
    _REGISTRY[spec.name] = spec
    return spec


def games() -> list[str]:
    """Names of the registered games."""
    return sorted(_REGISTRY)


def game_spec(game: str | GameSpec) -> GameSpec:
    """The `GameSpec` of a registered game.

    Given a spec (as worker processes receive one), registers it in this process first, so the
    main process's spec is the one that plays.
    """
    if isinstance(game, GameSpec):
        return register_game(game, replace=True)
    if game not in _REGISTRY:
        raise ValueError(f"unknown game {game!r}; registered: {', '.join(games())}")
    return _REGISTRY[game]


def load(path: str) -> Any:
    """The attribute a "module:attribute" path names."""
    module, attribute = path.split(":")
    return getattr(importlib.import_module(module), attribute)


def make_env(game: str | GameSpec, **kwargs: Any) -> Any:
    """Builds a registered game, e.g. make_env("doom_take_cover", max_steps=100) -> RealEnv."""
    spec = game_spec(game)
    return load(spec.env)(**(dict(spec.env_kwargs) | kwargs))


def random_policy(game: str | GameSpec) -> Any:
    """The game's random-rollout policy factory (World Models §A: data from random rollouts)."""
    return load(game_spec(game).random_policy)


class Table(Mapping[str, Any]):
    """A live read-only table over the registered games: `Table(lambda spec: spec.max_steps)`.

    Keeps older per-game tables (`dream.GAMES`, `probe.FIXED_ACTIONS`) readable as views.
    """

    def __init__(self, value_of: Callable[[GameSpec], Any]):
        self._value_of = value_of

    def __getitem__(self, game: str) -> Any:
        if game not in _REGISTRY:
            raise KeyError(game)
        return self._value_of(_REGISTRY[game])

    def __iter__(self) -> Iterator[str]:
        return iter(games())

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __repr__(self) -> str:
        return repr(dict(self))


class Names(Sequence[str]):
    """The registered games' names, sorted, as a live read-only sequence (`config.EXPERIMENTS`)."""

    def __getitem__(self, index):
        return tuple(games())[index]

    def __len__(self) -> int:
        return len(_REGISTRY)

    def __contains__(self, name: object) -> bool:
        return name in _REGISTRY

    def __repr__(self) -> str:
        return repr(tuple(games()))


def minatar_spec(name: str, env_id: str, actions: Sequence[str], **fields: Any) -> GameSpec:
    """The spec of a gymnax MinAtar game, drawn by `wm_jax.envs.minatar` in 64x64x3 frames.

    Args:
      name: the game's name, e.g. "minatar_freeway".
      env_id: gymnax's id, e.g. "Freeway-MinAtar".
      actions: names of gymnax's minimal action set, in its order, e.g. ("noop", "up", "down"):
        C's one output in [-1, 1] picks one in equal bins, and the probe plays each bin.
      fields: any other `GameSpec` field (max_steps defaults to 1,000).
    """
    num = len(actions)
    if num < 2:
        raise ValueError(f"{name}: a MinAtar game has at least 2 actions, got {actions}")
    # Evenly spaced from -1 to 1: output i falls in bin i of `minatar.discretise`.
    fixed = tuple((action, (-1.0 + 2.0 * i / (num - 1),)) for i, action in enumerate(actions))
    return GameSpec(
        **{
            "name": name,
            "env": "wm_jax.envs.minatar:MinAtarEnv",
            "env_kwargs": {"game": name, "env_id": env_id},
            "random_policy": "wm_jax.envs.base:UniformRandomPolicy",
            "action_dim": 1,
            "max_steps": 1000,
            "fixed_actions": fixed,
        }
        | fields
    )


# The built-in games. CarRacing: C trained in M's dream needs M's reward and done heads (the
# paper trained it in the real game); its fixed actions are steer = x0, gas = (x1 + 1) / 2,
# brake = clip(x2, 0, 1), and none follows the road for long (standing still pays -0.1 a frame).
register_game(
    GameSpec(
        name="car_racing",
        env="wm_jax.envs.car_racing:CarRacingEnv",
        random_policy="wm_jax.envs.car_racing:RandomWalkPolicy",
        driver="wm_jax.envs.car_racing_driver:NoisyDriver",
        action_dim=3,
        max_steps=1000,
        fixed_actions={
            "idle": (0.0, -1.0, 0.0),
            "straight, full gas": (0.0, 1.0, 0.0),
            "left, half gas": (-1.0, 0.0, 0.0),
            "right, half gas": (1.0, 0.0, 0.0),
            "brake": (0.0, -1.0, 1.0),
        },
        probe_episodes=3,  # up to 1,000 frames at ~350 frames/s per episode
        preset="wm_jax.pipeline.presets:car_racing",
    )
)
# Not in the paper: CarRacing with its dashboard kept in the frames (speed, ABS, steering,
# gyro), so that z holds the speed the reward depends on (`car_racing.preprocess_frame`).
register_game(
    game_spec("car_racing").replace(name="car_racing_dashboard", env_kwargs={"dashboard": True})
)
# Doom TakeCover: World Models §4: C trained only in the dream, which pays +1 a step survived;
# the controller sees [z, c, h] (the authors' `model_state_space == 2`).
register_game(
    GameSpec(
        name="doom_take_cover",
        env="wm_jax.envs.doom:DoomTakeCoverEnv",
        random_policy="wm_jax.envs.doom:HeldRandomPolicy",
        action_dim=1,
        max_steps=2100,  # World Models, Appendix
        latent_dim=64,
        hidden_size=512,
        dream_reward="survival",
        controller_inputs=("z", "c", "h"),
        controller_bias=False,
        fixed_actions={"left": (-1.0,), "stay": (0.0,), "right": (1.0,)},  # thirds
        mirror_signs=(-1.0,),  # thirds: left <-> right, stay stays; the room is symmetric
        min_frames=100,  # World Models code: random episodes under 100 frames dropped
        compresslevel=3,  # level 6 costs ~0.6 ms a frame, more than playing it, for 4% less disk
        preset="wm_jax.pipeline.presets:doom_take_cover",
    )
)
# Not in the paper: JAX-native gymnax games for fast demos; M predicts reward and done.
register_game(minatar_spec("minatar_breakout", "Breakout-MinAtar", ("noop", "left", "right")))
register_game(
    minatar_spec("minatar_asterix", "Asterix-MinAtar", ("noop", "left", "up", "right", "down"))
)
