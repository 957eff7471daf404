"""Episodes in the dream: one, a batch that compacts to the live ones, and a recorded one.

gymnax's `RolloutWrapper` idea for `wm_jax.dream.DreamEnv`: the policy and its parameters are
arguments, so `vmap` over policies (CMA-ES members) and over keys (rollouts) is free. Rewards
stop at done (the valid mask) and at `num_steps`; step t of an episode uses `fold_in(key, t)`,
so a chunked, compacted batch gives the same numbers as one full-length scan per episode.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from wm_jax.dream import DreamEnv, DreamParams


class RolloutResult(NamedTuple):
    episode_return: jax.Array  # () sum of rewards up to and including the done step
    length: jax.Array  # () int32 steps taken until done


class Trajectory(NamedTuple):
    obs: jax.Array  # (T, obs_dim) observation the action was chosen on
    z: jax.Array  # (T, Z) latent code at that observation (for `render`)
    action: jax.Array  # (T, A)
    reward: jax.Array  # (T,)
    done: jax.Array  # (T,) bool, the episode ended at this step
    valid: jax.Array  # (T,) bool, this step belongs to the episode


Policy = Callable[[Any, jax.Array], jax.Array]  # policy(policy_params, obs (obs_dim,)) -> (A,)


def _episode_step(env, env_params, policy, num_steps, carry, t, key, policy_params):
    """One step of an episode's (obs, state, return, length, alive) carry; rewards stop at done
    (the valid mask) and at `num_steps`. Step t uses `fold_in(key, t)`."""
    obs, state, episode_return, length, alive = carry
    alive = alive & (t < num_steps)
    action = policy(policy_params, obs)
    obs, state, reward, terminated, _ = env.step_env(
        jax.random.fold_in(key, t), state, action, env_params
    )
    done = terminated | env.is_truncated(state, env_params)
    episode_return = episode_return + jnp.where(alive, reward, 0.0)
    length = length + alive.astype(jnp.int32)
    return (obs, state, episode_return, length, alive & ~done)


def _run_chunks(run_chunk: Callable, num_chunks: int, carry: tuple) -> tuple:
    """`carry = run_chunk(chunk, carry)` for chunk 0, 1, ... while a chunk is left and any
    episode is alive (`carry[-1]`, a flag or a (B,) mask)."""

    def cond(loop):
        chunk, carry = loop
        return (chunk < num_chunks) & jnp.any(carry[-1])

    def body(loop):
        chunk, carry = loop
        return chunk + 1, run_chunk(chunk, carry)

    _, carry = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), carry))
    return carry


def rollout(
    key: jax.Array,
    env: DreamEnv,
    env_params: DreamParams,
    policy: Policy,
    policy_params: Any,
    num_steps: int,
    chunk_size: int | None = None,
) -> RolloutResult:
    """One dream episode of at most `num_steps` steps; the return stops at done (valid mask).

    With `chunk_size`, steps run as a `lax.scan` of `chunk_size` inside a `lax.while_loop` that
    stops once the episode is done; under `vmap` the loop runs until every episode of the batch
    is done. Without it, one `lax.scan` of `num_steps` (the worst case). Step t uses the key
    `fold_in(key_steps, t)`, so both give identical numbers.
    """
    key_reset, key_steps = jax.random.split(key)
    obs, state = env.reset_env(key_reset, env_params)

    def one_step(carry, t):
        return _episode_step(
            env, env_params, policy, num_steps, carry, t, key_steps, policy_params
        ), None

    carry = (obs, state, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32), jnp.array(True))
    if chunk_size is None or chunk_size >= num_steps:
        carry, _ = jax.lax.scan(one_step, carry, jnp.arange(num_steps))
    else:

        def run_chunk(chunk, carry):
            steps = chunk * chunk_size + jnp.arange(chunk_size)
            return jax.lax.scan(one_step, carry, steps)[0]

        carry = _run_chunks(run_chunk, math.ceil(num_steps / chunk_size), carry)
    return RolloutResult(episode_return=carry[2], length=carry[3])


def rollout_batch(
    keys: jax.Array,
    env: DreamEnv,
    env_params: DreamParams,
    policy: Policy,
    policy_params: Any,
    num_steps: int,
    chunk_size: int,
    min_bucket: int = 32,
) -> RolloutResult:
    """A batch of dream episodes that stops spending compute on the ones already done.

    Same numbers as `vmap(rollout)` over the batch, but each `chunk_size`-step chunk runs only
    on the episodes still alive: they are gathered to the front and the chunk runs on the
    smallest of the sizes B, B/2, B/4, ... (≥ `min_bucket`) that holds them all, one compiled
    branch per size under `lax.switch`. A plain "stop when all are done" loop rarely stops
    early for 1,024 episodes (the longest one decides); this cuts the work to about the steps
    actually lived.

    Args:
      keys: (B,) one key per episode (episode i gives the same result as `rollout(keys[i])`).
      policy_params: pytree with a leading (B,) axis, one policy per episode.

    Returns:
      RolloutResult with (B,) fields.
    """
    batch = keys.shape[0]
    split = jax.vmap(jax.random.split)(keys)
    key_reset, key_steps = split[:, 0], split[:, 1]
    obs, state = jax.vmap(env.reset_env, in_axes=(0, None))(key_reset, env_params)
    sizes = [batch]
    while sizes[-1] // 2 >= min_bucket and sizes[-1] % 2 == 0:
        sizes.append(sizes[-1] // 2)

    def one_step(carry, t, key, params):
        return _episode_step(env, env_params, policy, num_steps, carry, t, key, params)

    def run_compacted(size, chunk, carry):
        alive = carry[-1]
        index = jnp.argsort(~alive, stable=True)[:size]  # alive episodes first
        sub = jax.tree.map(lambda x: x[index], (carry, key_steps, policy_params))
        sub_carry, sub_keys, sub_params = sub

        def scan_step(sub_carry, t):
            step = jax.vmap(one_step, in_axes=(0, None, 0, 0))
            return step(sub_carry, t, sub_keys, sub_params), None

        steps = chunk * chunk_size + jnp.arange(chunk_size)
        sub_carry, _ = jax.lax.scan(scan_step, sub_carry, steps)
        return jax.tree.map(lambda full, part: full.at[index].set(part), carry, sub_carry)

    def run_chunk(chunk, carry):
        num_alive = jnp.sum(carry[-1])
        # sizes descend: the branch is the last size that still holds every live episode.
        branch = jnp.sum(jnp.asarray(sizes) >= num_alive) - 1
        branches = [functools.partial(run_compacted, size) for size in sizes]
        return jax.lax.switch(branch, branches, chunk, carry)

    carry = (
        obs,
        state,
        jnp.zeros((batch,), jnp.float32),
        jnp.zeros((batch,), jnp.int32),
        jnp.ones((batch,), bool),
    )
    carry = _run_chunks(run_chunk, math.ceil(num_steps / chunk_size), carry)
    return RolloutResult(episode_return=carry[2], length=carry[3])


def rollout_trajectory(
    key: jax.Array,
    env: DreamEnv,
    env_params: DreamParams,
    policy: Policy,
    policy_params: Any,
    num_steps: int,
) -> Trajectory:
    """Like `rollout`, but keeps every step (for GIFs via `render(vae_params, traj.z)`)."""
    key_reset, key_steps = jax.random.split(key)
    obs, state = env.reset_env(key_reset, env_params)

    def one_step(carry, t):
        obs, state, alive = carry
        action = policy(policy_params, obs)
        next_obs, next_state, reward, terminated, _ = env.step_env(
            jax.random.fold_in(key_steps, t), state, action, env_params
        )
        done = terminated | env.is_truncated(next_state, env_params)
        out = Trajectory(obs, state.z, action, reward, done, alive)
        return (next_obs, next_state, alive & ~done), out

    _, trajectory = jax.lax.scan(one_step, (obs, state, jnp.array(True)), jnp.arange(num_steps))
    return trajectory
