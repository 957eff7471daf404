"""Real games behind one interface: `make_env(game)` returns a `RealEnv` taking controller outputs.

Games: "car_racing" (gymnasium CarRacing), "doom_take_cover" (ViZDoom) and "minatar_breakout"
(gymnax, also jittable via `wm_jax.envs.minatar.MinAtarGame`). Each game's module is imported on
first use, so importing this package loads neither gymnasium, ViZDoom nor JAX. Random-rollout
collection: `wm_jax.envs.collect.collect` or `python -m wm_jax.envs.collect --help`.
"""

from wm_jax.envs.base import (
    FRAME_SHAPE,
    GameSpec,
    Policy,
    PolicyFactory,
    RealEnv,
    game_spec,
    games,
    make_env,
    random_policy,
    register,
    resize_frame,
)

__all__ = [
    "FRAME_SHAPE",
    "GameSpec",
    "Policy",
    "PolicyFactory",
    "RealEnv",
    "game_spec",
    "games",
    "make_env",
    "random_policy",
    "register",
    "resize_frame",
]
