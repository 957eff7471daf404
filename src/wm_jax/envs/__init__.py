"""Real games behind one interface: `make_env(game)` returns a `RealEnv` taking controller outputs.

Games: "car_racing" (gymnasium CarRacing), "doom_take_cover" (ViZDoom), "minatar_breakout" and
"minatar_asterix" (gymnax, also jittable via `wm_jax.envs.minatar.MinAtarGame`); another is one
`register_game(GameSpec(...))` (`wm_jax.envs.registry`). Each game's module is imported on
first use, so importing this package loads neither gymnasium, ViZDoom nor JAX. Random-rollout
collection: `wm_jax.envs.collect.collect` or `python -m wm_jax.envs.collect --help`.
"""

from wm_jax.envs.base import (
    FRAME_SHAPE,
    DriverMix,
    Policy,
    PolicyFactory,
    RealEnv,
    UniformRandomPolicy,
    resize_frame,
)
from wm_jax.envs.registry import (
    GameSpec,
    game_spec,
    games,
    make_env,
    minatar_spec,
    random_policy,
    register_game,
)

__all__ = [
    "FRAME_SHAPE",
    "DriverMix",
    "GameSpec",
    "Policy",
    "PolicyFactory",
    "RealEnv",
    "UniformRandomPolicy",
    "game_spec",
    "games",
    "make_env",
    "minatar_spec",
    "random_policy",
    "register_game",
    "resize_frame",
]
