"""The dream as a brax `Env`, so brax's trainers (PPO, SAC, ES, ...) can train in it.

brax is an optional dependency (`pip install -e ".[brax]"`; the tests install it).

    env = BraxDream(dream_env, dream_params)
    with jax_compat():   # brax 0.14.2 PPO on jax >= 0.10; jax is left as it was after
        make_policy, params, metrics = brax.training.agents.ppo.train.train(
            environment=env, episode_length=2100, ...)

M's weights are held by the adapter (brax envs carry their system the same way); `done` is M's
termination only, and brax's `EpisodeWrapper(episode_length)` provides truncation, so PPO's
`truncation` bookkeeping stays right. brax's `AutoResetWrapper` restarts an episode from that
env slot's first state (same initial z), as it does for every brax env.

Libraries that take brax envs by name (`brax.envs.create`, evosax's `BraxProblem`) get the dream
through brax's own registry; `create` passes its extra kwargs (evosax: `backend="spring"`) on to
the constructor, which accepts and ignores a physics backend:

    env, env_params = wm_jax.dream.make("doom_take_cover", m_config, m_params, mu, logvar)
    brax.envs.register_environment("wm_dream", functools.partial(BraxDream, env, env_params))
    problem = evosax.problems.BraxProblem("wm_dream", policy, episode_length=100)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax import dream

try:
    from brax.envs.base import Env, State
except ImportError as err:  # brax is an optional extra: only this adapter needs it
    raise ImportError(
        "wm_jax.dream.brax_dream needs brax: pip install -e '.[brax]' (or pip install brax)"
    ) from err


class BraxDream(Env):
    """brax view of a `dream.DreamEnv` with fixed `DreamParams`.

    Args:
      env_params: the dream's params; by default the ones the dream carries
        (`dream.make`, `DreamEnv.with_params`).
      backend: brax's physics pipeline ("spring", "mjx", ...), which `brax.envs.create` and
        evosax's `BraxProblem` (default `env_kwargs={"backend": "spring"}`) pass to every env.
        The dream has no physics, M is its dynamics: any backend name is accepted and ignored.
    """

    def __init__(
        self,
        env: dream.DreamEnv,
        env_params: dream.DreamParams | None = None,
        backend: str | None = None,
    ):
        del backend  # no physics to pick: M is the dream's dynamics
        self.env = env
        self.env_params = env.default_params if env_params is None else env_params

    def reset(self, rng: jax.Array) -> State:
        # brax passes raw uint32 keys (jax.random.PRNGKey); the dream takes either kind.
        rng, key_reset = jax.random.split(rng)
        obs, dream_state = self.env.reset_env(key_reset, self.env_params)
        zero = jnp.zeros((), jnp.float32)
        return State(
            pipeline_state=dream_state,
            obs=obs,
            reward=zero,
            done=zero,
            metrics={},
            info={"rng": rng},
        )

    def step(self, state: State, action: jax.Array) -> State:
        rng, key_step = jax.random.split(state.info["rng"])
        obs, dream_state, reward, terminated, _ = self.env.step_env(
            key_step, state.pipeline_state, action, self.env_params
        )
        info = {**state.info, "rng": rng}
        return state.replace(
            pipeline_state=dream_state,
            obs=obs,
            reward=jnp.asarray(reward, jnp.float32),
            done=terminated.astype(jnp.float32),
            info=info,
        )

    @property
    def observation_size(self) -> int:
        return self.env.obs_dim

    @property
    def action_size(self) -> int:
        return self.env.action_dim

    @property
    def backend(self) -> str:
        return "dream"


def _device_put_replicated(x, devices):
    """Stack `x` once per device along a new leading axis, one slice on each (pmap input)."""
    devices = list(devices)
    mesh = jax.sharding.Mesh(np.array(devices), ("devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("devices"))

    def put(leaf):
        leaf = jnp.asarray(leaf)
        shards = [jax.device_put(leaf[None], device) for device in devices]
        return jax.make_array_from_single_device_arrays(
            (len(devices), *leaf.shape), sharding, shards
        )

    return jax.tree.map(put, x)


@contextlib.contextmanager
def jax_compat() -> Iterator[bool]:
    """Inside the block, jax has `device_put_replicated` again; yields True if it was added.

    brax 0.14.2's PPO (`training/agents/ppo/train.py`, `training/pmap.py`) calls
    `jax.device_put_replicated`, which jax 0.10 removed. The function is put back only for the
    block and removed after it, so the rest of the process sees jax as installed; on a jax that
    still has it nothing changes. Drop this once brax stops calling it.
    """
    added = not hasattr(jax, "device_put_replicated")
    if added:
        jax.device_put_replicated = _device_put_replicated
    try:
        yield added
    finally:
        if added:
            del jax.device_put_replicated
