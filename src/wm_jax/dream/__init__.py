"""M as an environment (World Models §4.3–4.4): the gymnax-style dream (`env`, re-exported
here: `wm_jax.dream.make(...)`), the batched rollouts CMA-ES evaluates (`rollout`) and a brax
adapter (`brax_dream`)."""

from wm_jax.dream.env import (
    GAMES,
    REWARD_KINDS,
    DreamEnv,
    DreamNotTrainableError,
    DreamParams,
    DreamState,
    make,
    make_dream,
    render,
)

__all__ = [
    "GAMES",
    "REWARD_KINDS",
    "DreamEnv",
    "DreamNotTrainableError",
    "DreamParams",
    "DreamState",
    "make",
    "make_dream",
    "render",
]
