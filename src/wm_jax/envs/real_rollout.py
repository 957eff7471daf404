"""The host bridge to the real games: worker processes play, the accelerator thinks.

Each worker process holds one `RealEnv` (`wm_jax.envs.make_env`) and only runs the game. Every
frame, the frames of all workers go through V → C → M in one jitted call with a fixed batch (one
slot per worker), so the network work is batched on the accelerator and the CPUs only run games
(the paper's CarRacing training ran all of this on 64 CPU cores instead). A worker that crashes
or hangs costs its current episode (NaN return), not the run: it is restarted and the slot goes
on with the next episode.

Per frame, as in the authors' code (carracing/model.py): z ~ N(μ, σ²) from V's encoding of the
frame, a = C([z, h]) on M's state *before* the step, then M consumes [z, a] (Doom: and the
restart flag) to update its state. Episode e's randomness is its own key (evaluation:
`fold_in(key, e)`), so results do not depend on the number of workers.

The same loop collects §5 data (`on_record=`): C's action plus exploration noise is played and
kept with its frame, reward and done, so collection with a controller is batched as evaluation
is (`wm_jax.envs.collect`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from wm_jax.core import kernels
from wm_jax.envs.base import PlayedEpisode
from wm_jax.envs.env_pool import EnvPool, WorkerError
from wm_jax.models import controller, mdn_rnn, vae

__all__ = [
    "EnvPool",
    "EpisodeResults",
    "RealModels",
    "WorkerError",
    "evaluate_population_real",
    "make_policy_step",
    "population_evaluator",
]


class RealModels(NamedTuple):
    """The trained V and M through which a controller sees a real game."""

    vae_params: Any
    m_config: mdn_rnn.MDNRNNConfig | None = None  # None for V-only controllers
    m_params: Any = None


class EpisodeResults(NamedTuple):
    returns: np.ndarray  # (P, R) float32, NaN where an episode was lost to a worker failure
    lengths: np.ndarray  # (P, R) int64 frames played


def make_policy_step(
    c_config: controller.ControllerConfig,
    m_config: mdn_rnn.MDNRNNConfig | None,
    sample_z: bool = True,
    noise: float = 0.0,
) -> Callable:
    """The batched V → C → M step for all worker slots, jitted: the one step through which a
    controller plays the real game (evaluation, real-game CMA-ES, §5 collection, play).

    Args:
      noise: standard deviation of Gaussian exploration noise on C's output (§5 collection;
        the paper only says C should explore). The noisy action, clipped to [-1, 1], is the
        one played and the one M consumes, so M's state follows the episode that happened.

    Returns:
      policy_step(episode_keys (W, 2) uint32 key data, vae_params, m_params, flat_params
      (W, D), memory (LSTMState (W, H) or None), frames (W, 64, 64, 3) uint8, restart (W,)
      bool, steps (W,)) -> (actions (W, A), memory). Step t of an episode draws from
      fold_in(episode key, t): z's noise from it, the action noise from fold_in(that, 1).
    """
    if c_config.uses_memory and m_config is None:
        raise ValueError(f"controller inputs {c_config.inputs} need M: pass m_config and m_params")
    if c_config.uses_memory and (
        m_config.latent_dim != c_config.latent_dim
        or m_config.hidden_size != c_config.hidden_size
        or m_config.action_dim != c_config.action_dim
    ):
        raise ValueError(f"controller {c_config} does not match M {m_config}")
    unflatten = controller.unflatten_fn(c_config)

    @kernels.jit_vae  # V's encoder runs in this program (wm_jax.core.kernels)
    def policy_step(key_data, vae_params, m_params, flat_params, memory, frames, restart, steps):
        mu, logvar = vae.encode(vae_params, vae.frames_to_float(frames))
        keys = jax.vmap(lambda k, t: jax.random.fold_in(jax.random.wrap_key_data(k), t))(
            key_data, steps
        )
        if sample_z:  # the authors' code samples z from V's posterior in the real game too
            eps = jax.vmap(lambda k: jax.random.normal(k, mu.shape[-1:]))(keys)
            z = mu + jnp.exp(logvar / 2) * eps
        else:
            z = mu
        if c_config.uses_memory:
            memory = jax.tree.map(lambda x: jnp.where(restart[:, None], 0.0, x), memory)
        inputs = controller.features(c_config, z, memory)
        actions = jax.vmap(lambda flat, x: controller.act(c_config, unflatten(flat), x))(
            flat_params, inputs
        )
        if noise > 0:
            shape = actions.shape[-1:]
            eps = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 1), shape))(keys)
            actions = jnp.clip(actions + noise * eps, -1.0, 1.0)
        if c_config.uses_memory:
            flag = restart if m_config.use_restart else None
            memory, _ = mdn_rnn.forward_step(m_config, m_params, memory, z, actions, flag)
        return actions, memory

    return policy_step


def evaluate_population_real(
    key: jax.Array,
    pool: EnvPool,
    models: RealModels,
    c_config: controller.ControllerConfig,
    flat_params: np.ndarray,
    rollouts_per_member: int,
    seeds: np.ndarray | None = None,
    *,
    max_steps: int | None = None,
    sample_z: bool = True,
    progress: bool = False,
    max_lost_fraction: float = 0.1,
    episode_ids: np.ndarray | None = None,
    on_episode: Callable[[int, float, int], None] | None = None,
    episode_keys: jax.Array | None = None,
    noise: float = 0.0,
    on_record: Callable[[int, PlayedEpisode], None] | None = None,
) -> EpisodeResults:
    """Play `rollouts_per_member` real episodes for every member, all workers at once.

    Args:
      flat_params: (P, D) flat controller parameters.
      seeds: (P, R) game seeds (default: p * R + r).
      max_steps: optional cap below the game's own.
      max_lost_fraction: raise if more episodes than this are lost (a systematic failure).
      episode_ids: (P * R,) the ids that V's sampling keys fold in (default 0, 1, ...): an
        evaluation resumed on its remaining episodes passes their ids, so each episode plays
        exactly as it would have in one uninterrupted call.
      on_episode: called with (index into the P * R episodes, return, length) as each
        episode finishes (to record it at once).
      episode_keys: (P * R,) each episode's own key, instead of fold_in(key, episode_id)
        (§5 collection: the key of the episode's policy seed, as `ControllerPolicy` plays it).
      noise: exploration noise on C's output (`make_policy_step`).
      on_record: called with (index, PlayedEpisode with every frame, action, reward and done)
        as each episode finishes (§5 collection writes it to the store at once).

    Returns:
      EpisodeResults with (P, R) returns (NaN where lost) and lengths.
    """
    flat_params = np.asarray(flat_params, np.float32)
    num_members = flat_params.shape[0]
    num_episodes = num_members * rollouts_per_member
    if seeds is None:
        seeds = np.arange(num_episodes).reshape(num_members, rollouts_per_member)
    seeds = np.asarray(seeds).reshape(-1)
    if seeds.size != num_episodes:
        raise ValueError(f"seeds must be ({num_members}, {rollouts_per_member})")
    if pool.action_dim != c_config.action_dim:
        raise ValueError(
            f"game {pool.name} takes {pool.action_dim} actions, controller gives "
            f"{c_config.action_dim}"
        )
    if episode_ids is None:
        episode_ids = np.arange(num_episodes)
    episode_ids = np.asarray(episode_ids).reshape(-1)
    if episode_keys is None:
        episode_keys = jax.vmap(lambda e: jax.random.fold_in(key, e))(jnp.asarray(episode_ids))
    key_data = np.asarray(jax.random.key_data(episode_keys)).reshape(num_episodes, -1)
    policy_step = _cached_policy_step(c_config, models.m_config, sample_z, float(noise))
    num_slots = pool.num_workers
    cap = pool.max_steps if max_steps is None else min(max_steps, pool.max_steps)

    returns = np.full(num_episodes, np.nan, np.float32)
    lengths = np.zeros(num_episodes, np.int64)
    slot_episode = np.full(num_slots, -1)
    slot_return = np.zeros(num_slots, np.float64)
    slot_steps = np.zeros(num_slots, np.int64)
    frames = np.zeros((num_slots, 64, 64, 3), np.uint8)
    restart = np.ones(num_slots, bool)
    kept: list[list[list]] = [[[], [], [], []] for _ in range(num_slots)]  # frames, actions, ...
    memory = None
    if c_config.uses_memory:
        memory = mdn_rnn.initial_state(models.m_config, (num_slots,))
    next_episode = 0
    lost = 0
    bar = tqdm(total=num_episodes, disable=not progress, desc=f"{pool.name} episodes")

    def lose(slot, err):
        nonlocal lost
        lost += 1
        warnings.warn(f"episode {slot_episode[slot]} lost: {err}", RuntimeWarning, stacklevel=3)
        if lost > max(1, int(max_lost_fraction * num_episodes)):
            raise WorkerError(f"{lost} of {num_episodes} episodes lost; last: {err}") from err
        slot_episode[slot] = -1
        bar.update(1)
        pool.restart(slot)

    def start(slots):
        # Reset every free slot with the next episode: send all, then receive (games reset in
        # parallel). A slot whose reset fails loses that episode and tries the next one.
        nonlocal next_episode
        pending = list(slots)
        while pending:
            sent, retry = [], []
            for slot in pending:
                if next_episode >= num_episodes:
                    slot_episode[slot] = -1
                    continue
                slot_episode[slot] = next_episode
                next_episode += 1
                try:
                    pool.send(slot, "reset", int(seeds[slot_episode[slot]]))
                    sent.append(slot)
                except WorkerError as err:
                    lose(slot, err)
                    retry.append(slot)
            for slot in sent:
                try:
                    frames[slot] = pool.recv(slot)
                except WorkerError as err:
                    lose(slot, err)
                    retry.append(slot)
                    continue
                slot_return[slot], slot_steps[slot], restart[slot] = 0.0, 0, True
                kept[slot] = [[], [], [], []]
            pending = retry

    try:
        start(range(num_slots))
        while (slot_episode >= 0).any():
            active = np.flatnonzero(slot_episode >= 0)
            members = np.maximum(slot_episode, 0) // rollouts_per_member
            actions, memory = policy_step(
                key_data[np.maximum(slot_episode, 0)],
                models.vae_params,
                models.m_params,
                flat_params[members],
                memory,
                frames,
                restart,
                slot_steps,
            )
            actions = np.asarray(actions)
            if on_record is not None:
                for slot in active:
                    kept[slot][0].append(frames[slot].copy())
                    kept[slot][1].append(actions[slot])
            restart[:] = False
            stepped = []
            for slot in active:
                try:
                    pool.send(slot, "step", actions[slot])
                    stepped.append(slot)
                except WorkerError as err:
                    lose(slot, err)
            finished = [slot for slot in active if slot_episode[slot] < 0]
            for slot in stepped:
                try:
                    frame, reward, terminated, truncated = pool.recv(slot)
                except WorkerError as err:
                    lose(slot, err)
                    finished.append(slot)
                    continue
                frames[slot] = frame
                slot_return[slot] += reward
                slot_steps[slot] += 1
                if on_record is not None:
                    kept[slot][2].append(reward)
                    kept[slot][3].append(terminated)
                if terminated or truncated or slot_steps[slot] >= cap:
                    episode = slot_episode[slot]
                    returns[episode], lengths[episode] = slot_return[slot], slot_steps[slot]
                    if on_episode is not None:
                        on_episode(int(episode), float(returns[episode]), int(lengths[episode]))
                    if on_record is not None:
                        on_record(int(episode), _played(float(returns[episode]), kept[slot]))
                    bar.update(1)
                    finished.append(slot)
            start(finished)
    finally:
        bar.close()
    shape = (num_members, rollouts_per_member)
    return EpisodeResults(returns.reshape(shape), lengths.reshape(shape))


def _played(total: float, kept: list[list]) -> PlayedEpisode:
    frames, actions, rewards, dones = kept
    return PlayedEpisode(
        total,
        len(actions),
        np.stack(frames),
        np.stack(actions).astype(np.float32),
        np.asarray(rewards, np.float32),
        np.asarray(dones, bool),
    )


@kernels.cache_per_choice(maxsize=16)
def _cached_policy_step(c_config, m_config, sample_z, noise):
    # One jitted function per (controller, M) config, so repeated generations never retrace.
    return make_policy_step(c_config, m_config, sample_z, noise)


def population_evaluator(
    pool: EnvPool,
    models: RealModels,
    c_config: controller.ControllerConfig,
    **kwargs,
) -> Callable[[jax.Array, np.ndarray, np.ndarray], np.ndarray]:
    """`evaluate_fn(key, flat_params (P, D), seeds (P, R)) -> returns (P, R)` for
    `wm_jax.es.evolve_real.train_in_real`."""

    def evaluate_fn(key, flat_params, seeds):
        seeds = np.asarray(seeds)
        results = evaluate_population_real(
            key, pool, models, c_config, flat_params, seeds.shape[1], seeds, **kwargs
        )
        return results.returns

    return evaluate_fn
