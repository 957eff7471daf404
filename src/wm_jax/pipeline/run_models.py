"""A finished run's models, loaded from its checkpoints: V, M, C, the dream M makes, and the
collection policy of §5 rounds. The stages, the report, the probe, the agents and the commands
read a run through these (one way to load each model)."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from wm_jax import dream
from wm_jax.core import checkpoint
from wm_jax.data import EpisodeStore, load_encoded
from wm_jax.envs import game_spec
from wm_jax.models import controller
from wm_jax.pipeline.config import ExperimentConfig
from wm_jax.pipeline.run_folder import RunPaths
from wm_jax.train import mdn_rnn_train, vae_train


def load_vae(config: ExperimentConfig, paths: RunPaths) -> Any:
    """V's parameters from the run's checkpoint."""
    init_state, _ = vae_train.make_train(config.vae, config.vae_train)
    target = init_state(jax.random.key(0))
    return checkpoint.restore(paths.checkpoints("vae"), target=target).params


def load_mdn_rnn(config: ExperimentConfig, paths: RunPaths) -> Any:
    """M's parameters from the run's checkpoint."""
    init_state, _ = mdn_rnn_train.make_train(config.mdn_rnn, config.mdn_train)
    target = init_state(jax.random.key(0))
    try:
        return checkpoint.restore(paths.checkpoints("mdn_rnn"), target=target).params
    except checkpoint.CheckpointError:
        if target.carry is None:
            raise
        # Checkpoints of M trained on random windows (before streams) carry no LSTM state.
        target = target.replace(carry=None)
        return checkpoint.restore(paths.checkpoints("mdn_rnn"), target=target).params


def controller_config(config: ExperimentConfig) -> controller.ControllerConfig:
    """C for this experiment: the paper's [z, h] (Doom [z, c, h]) or a V-only baseline."""
    kind, spec = config.controller.kind, game_spec(config.game)
    return controller.ControllerConfig(
        kind=kind,
        inputs=spec.controller_inputs if kind == "linear_zh" else ("z",),
        latent_dim=config.vae.latent_dim,
        hidden_size=config.mdn_rnn.hidden_size,
        action_dim=config.mdn_rnn.action_dim,
        use_bias=spec.controller_bias,  # World Models, Appendix: Doom's 1,088 weights, no bias
    )


def initial_codes(paths: RunPaths, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(μ, log σ²) (N, Z) of the first frames of up to `count` real episodes (dream starts)."""
    # Only the first `count` files are read (not the whole store, then cut).
    episodes = load_encoded(EpisodeStore(paths.encoded), limit=count)
    mu = np.stack([episode.mu[0] for episode in episodes])
    logvar = np.stack([episode.logvar[0] for episode in episodes])
    return mu, logvar


def make_dream(config: ExperimentConfig, paths: RunPaths, temperature: float | None = None):
    """(env, env_params) of M's dream, starting from encoded real first frames."""
    env, max_steps = dream.make_dream(config.game, config.mdn_rnn)
    mu, logvar = initial_codes(paths, config.controller.initial_frames)
    tau = config.controller.temperature if temperature is None else temperature
    env_params = env.make_params(
        load_mdn_rnn(config, paths),
        mu,
        logvar,
        temperature=tau,
        max_steps=min(max_steps, config.evolve.max_steps),
    )
    return env, env_params


def real_models(config: ExperimentConfig, paths: RunPaths, c_config):
    """V (and M, when C reads its state) for playing the real game."""
    from wm_jax.envs import real_rollout

    if not c_config.uses_memory:
        return real_rollout.RealModels(load_vae(config, paths))
    return real_rollout.RealModels(
        load_vae(config, paths), config.mdn_rnn, load_mdn_rnn(config, paths)
    )


def load_controller(paths: RunPaths) -> np.ndarray:
    """The trained controller's flat parameters (D,)."""
    restored = checkpoint.restore(paths.checkpoints("controller_final"))
    return np.asarray(restored["flat_params"])


def controller_policy(config: ExperimentConfig, paths: RunPaths, **kwargs: Any):
    """The finished run's V, M and C as a collection policy (`ControllerPolicy`; §5 rounds)."""
    from wm_jax.envs.controller_policy import ControllerPolicy

    c_config = controller_config(config)
    models = real_models(config, paths, c_config)
    return ControllerPolicy(
        c_config,
        load_controller(paths),
        models.vae_params,
        models.m_config,
        models.m_params,
        **kwargs,
    )
