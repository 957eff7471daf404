"""wm_jax: World Models (Ha & Schmidhuber, 2018) in JAX.

V (`wm_jax.models.vae`) compresses frames to z, M (`wm_jax.models.mdn_rnn`) predicts the next z, C
(`wm_jax.models.controller`) acts on [z, h]; `wm_jax.dream` turns M into a jittable environment and
`wm_jax.es.evolve` trains C with CMA-ES in it. A game is one call, `wm_jax.register_game(spec)`
(`wm_jax.envs.registry`).
"""

from wm_jax.envs.registry import GameSpec, minatar_spec, register_game

__version__ = "0.1.0"
__all__ = ["GameSpec", "minatar_spec", "register_game"]
