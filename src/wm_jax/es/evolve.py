"""CMA-ES for the controller, trained in the dream (World Models §3.3, §4.4, Appendix).

A whole generation (ask → population × rollouts × steps → tell) is one jitted function, and
`generations_per_call` generations run inside one `lax.scan`; the Python loop around it
(`wm_jax.es.evolve_loop`) only logs and checkpoints (brax's ppo `train.py`, purejaxrl). The
configuration and state here also serve training in the real game (`wm_jax.es.evolve_real`).

One generation is `wm_jax.es.generation.step` (shared with the real game): evosax minimises,
so fitness = − mean return over a member's rollouts, and generation g's randomness is
`fold_in(key, g)`, so a run restored from a checkpoint continues exactly as if it had never
stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from evosax.algorithms import CMA_ES
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wm_jax import dream
from wm_jax.core import distributed, kernels
from wm_jax.core.devices import even_split
from wm_jax.dream import rollout as dream_rollout
from wm_jax.es import evolve_loop
from wm_jax.es import generation as es_generation
from wm_jax.models import controller

# Real-game seeds: training episodes use [0, SELECTION_SEED_OFFSET), the every-`eval_every`
# evaluations of the ES mean [SELECTION_SEED_OFFSET, TRAIN_SEED_LIMIT), and the final evaluation
# (`wm_jax.pipeline.evaluate`) TRAIN_SEED_LIMIT onwards, so it never sees a track or level seen
# in training.
SELECTION_SEED_OFFSET = 9_000_000
TRAIN_SEED_LIMIT = 10_000_000


@dataclasses.dataclass(frozen=True)
class EvolveConfig:
    """World Models, Appendix: population 64, 16 rollouts each, σ0 0.1, eval every 25 gens."""

    population_size: int = 64
    rollouts_per_member: int = 16
    sigma_init: float = 0.1
    eval_every: int = 25  # evaluate the ES mean every N generations (0: never)
    eval_rollouts: int = 1024
    max_steps: int = 2100  # dream steps per rollout (static scan bound)
    chunk_size: int | None = 50  # early exit: steps per scan chunk; None: one full-length scan
    compact: bool = True  # with chunk_size: run each chunk on the live episodes only
    compact_min_batch: int = 32  # smallest batch a compacted chunk runs on (per device)
    generations_per_call: int = 5  # generations per jitted call (the host logs in between)
    checkpoint_every: int = 25  # generations (0: never)
    keep_checkpoints: int = 2
    # Split the population over the devices (every process's, when several are connected,
    # `wm_jax.core.distributed`). None (the default): over as many as split
    # the population and eval_rollouts evenly, when there are several; True: over all of them
    # (an error if they do not split); False: one device.
    shard_population: bool | None = None
    # Stop early once this many evaluations of the ES mean in a row have not beaten the best
    # one (0: never; needs eval_every). A dream C that found its exploit stops improving within
    # a few generations (Doom's first C: at the dream's cap by generation 10 of 60).
    stop_after_stale_evals: int = 0
    # Stop once an evaluation of the ES mean scores at least this (None: never; needs
    # eval_every). A dream with a ceiling cannot pay C more than it: Doom's pays +1 a step up to
    # max_steps, and its first C scored 2,081 of the 2,100 at its first evaluation (generation
    # 10 of 60) and no better in the 50 generations after it (experiments/README.md).
    stop_at_return: float | None = None

    def __post_init__(self):
        for name in ("eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value < 0 or value % self.generations_per_call:
                raise ValueError(
                    f"EvolveConfig.{name}={value} must be a multiple of generations_per_call="
                    f"{self.generations_per_call} (the host only acts between jitted calls)"
                )
        if self.stop_after_stale_evals < 0 or (self.stop_after_stale_evals and not self.eval_every):
            raise ValueError(
                f"EvolveConfig.stop_after_stale_evals={self.stop_after_stale_evals} must be >= 0 "
                "and needs eval_every > 0 (it counts evaluations of the ES mean)"
            )
        if self.stop_at_return is not None and not self.eval_every:
            raise ValueError(
                f"EvolveConfig.stop_at_return={self.stop_at_return} needs eval_every > 0 (it "
                "compares evaluations of the ES mean)"
            )
        if self.population_size < 2 or self.rollouts_per_member < 1:
            raise ValueError("population_size must be >= 2 and rollouts_per_member >= 1")


PAPER = EvolveConfig()
# For tests and smoke runs: seconds, not hours.
TINY = EvolveConfig(
    population_size=8,
    rollouts_per_member=2,
    eval_every=5,
    eval_rollouts=8,
    max_steps=50,
    chunk_size=10,
    generations_per_call=5,
    checkpoint_every=5,
    compact_min_batch=4,
)


@struct.dataclass
class EvolveState:
    es_state: Any  # evosax CMA_ES State (flat solutions of size D)
    key: jax.Array  # (2,) uint32 key data of the run (raw, so checkpoints can hold it)
    best_eval_return: jax.Array  # () best mean return of the ES mean at an evaluation
    best_eval_params: jax.Array  # (D,) the ES mean that scored it

    @property
    def generation(self) -> int:
        return int(self.es_state.generation_counter)

    @property
    def mean(self) -> jax.Array:
        return self.es_state.mean


def make_strategy(config: EvolveConfig, num_dims: int) -> tuple[CMA_ES, Any]:
    """evosax 0.3 CMA_ES over flat (D,) solutions, with σ0 = config.sigma_init."""
    strategy = CMA_ES(config.population_size, solution=jnp.zeros((num_dims,), jnp.float32))
    params = strategy.default_params.replace(std_init=jnp.asarray(config.sigma_init))
    return strategy, params


def init_state(
    key: jax.Array, c_config: controller.ControllerConfig, config: EvolveConfig
) -> EvolveState:
    """CMA-ES from the zero vector (the authors' code starts at zeros)."""
    num_dims = controller.num_params(c_config)
    strategy, es_params = make_strategy(config, num_dims)
    key_init, key_run = jax.random.split(key)
    es_state = strategy.init(key_init, jnp.zeros((num_dims,), jnp.float32), es_params)
    # evosax leaves some fields weakly typed; strong types keep the state's jit signature equal
    # to that of later states and of restored checkpoints (no second compile).
    es_state = jax.tree.map(lambda x: jnp.asarray(x, dtype=x.dtype), es_state)
    return EvolveState(
        es_state=es_state,
        key=jax.random.key_data(key_run),
        best_eval_return=jnp.array(-jnp.inf, jnp.float32),
        best_eval_params=jnp.zeros((num_dims,), jnp.float32),
    )


def evaluate_population_dream(
    key: jax.Array,
    env: dream.DreamEnv,
    env_params: dream.DreamParams,
    c_config: controller.ControllerConfig,
    flat_params: jax.Array,
    num_rollouts: int,
    num_steps: int,
    chunk_size: int | None = None,
    compact: bool = False,
    mesh: Mesh | None = None,
    compact_min_batch: int = 32,
) -> dream_rollout.RolloutResult:
    """`vmap` over members of `vmap` over rollouts of one dream episode each.

    Rollout (p, r) uses key `split(key, P * R)[p * R + r]`, so splitting the same episodes into
    other (P, R) shapes gives the same numbers, and so do all three ways of running them:
    `chunk_size=None` (one full-length scan), `chunk_size` (chunks until every episode is done)
    and `chunk_size` with `compact` (chunks over the live episodes only,
    `dream_rollout.rollout_batch`).

    Args:
      flat_params: (P, D) flat controller parameters.
      mesh: with `compact`, a 1-D "pop" mesh: each device compacts its own share of episodes.

    Returns:
      RolloutResult with (P, R) fields.
    """
    if env.obs_dim != c_config.input_dim:
        raise ValueError(
            f"the dream observes {env.obs_dim} features {env.inputs}, the controller expects "
            f"{c_config.input_dim} {c_config.inputs}"
        )
    num_members = flat_params.shape[0]
    keys = jax.random.split(key, num_members * num_rollouts)
    unflatten = controller.unflatten_fn(c_config)

    if compact and chunk_size is not None and chunk_size < num_steps:

        def policy_flat(flat, obs):
            return controller.act(c_config, unflatten(flat), obs)

        def run(keys, episode_params, env_params):
            return dream_rollout.rollout_batch(
                keys,
                env,
                env_params,
                policy_flat,
                episode_params,
                num_steps,
                chunk_size,
                compact_min_batch,
            )

        if mesh is not None:
            pop = PartitionSpec("pop")
            # Each device loops over its own episodes; check_vma off because the initial LSTM
            # state is device-invariant zeros while later states vary per device.
            run = jax.shard_map(
                run,
                mesh=mesh,
                in_specs=(pop, pop, PartitionSpec()),
                out_specs=pop,
                check_vma=False,
            )
        episode_params = jnp.repeat(flat_params, num_rollouts, axis=0)  # (P * R, D)
        results = run(keys, episode_params, env_params)
        return jax.tree.map(lambda x: x.reshape(num_members, num_rollouts), results)

    def policy(params, obs):
        return controller.act(c_config, params, obs)

    def member(member_keys, flat):
        params = unflatten(flat)

        def one(rollout_key):
            return dream_rollout.rollout(
                rollout_key, env, env_params, policy, params, num_steps, chunk_size
            )

        return jax.vmap(one)(member_keys)

    return jax.vmap(member)(keys.reshape(num_members, num_rollouts), flat_params)


class DreamEvolver(NamedTuple):
    """Jitted pieces of dream training (from `make_dream_evolver`)."""

    run: Callable  # run(state, env_params) -> (state, GenerationMetrics of (G,) arrays)
    evaluate_mean: Callable  # evaluate_mean(state, env_params) -> (eval_rollouts,) returns
    strategy: CMA_ES
    es_params: Any


def _population_mesh(config: EvolveConfig) -> Mesh | None:
    if config.shard_population is False:
        return None
    devices = np.array(jax.devices())  # every process's, when several are connected
    if config.shard_population is None:
        count = even_split(devices.size, config.population_size, config.eval_rollouts)
        return None if count == 1 else Mesh(devices[:count], ("pop",))
    if config.population_size % devices.size:
        raise ValueError(
            f"population_size {config.population_size} is not divisible by the "
            f"{devices.size} devices it is sharded over"
        )
    return Mesh(devices, ("pop",))


@kernels.cache_per_choice(maxsize=8)
def make_dream_evolver(
    env: dream.DreamEnv, c_config: controller.ControllerConfig, config: EvolveConfig
) -> DreamEvolver:
    """Builds the jitted `run` (several generations in one `lax.scan`) and `evaluate_mean`.

    Cached on its (hashable, static) arguments, so calling `train_in_dream` again, e.g. to
    resume, reuses the compiled functions.
    """
    num_dims = controller.num_params(c_config)
    strategy, es_params = make_strategy(config, num_dims)
    mesh = _population_mesh(config)

    def shard(x):
        # The population axis (first) over the 1-D "pop" mesh; everything else replicated.
        if mesh is None:
            return x
        spec = PartitionSpec("pop", *([None] * (x.ndim - 1)))
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))

    def replicate(x):
        # CMA-ES itself runs replicated, so it does the very arithmetic of an unsharded run:
        # C's eigenbasis is degenerate early on, and a last-bit difference in C would rotate it
        # and change every later sample.
        if mesh is None:
            return x
        return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec()))

    def evaluate(key, env_params, flat_params, num_rollouts):
        results = evaluate_population_dream(
            key,
            env,
            env_params,
            c_config,
            shard(flat_params),
            num_rollouts,
            config.max_steps,
            config.chunk_size,
            config.compact,
            mesh,
            config.compact_min_batch,
        )
        return jax.tree.map(shard, results)

    def generation(state: EvolveState, env_params):
        def fitness(key, population):
            returns = evaluate(key, env_params, population, config.rollouts_per_member)
            return returns.episode_return  # (P, R)

        return es_generation.step(strategy, es_params, state, fitness, replicate)

    @jax.jit
    def run(state: EvolveState, env_params: dream.DreamParams):
        return jax.lax.scan(
            lambda s, _: generation(s, env_params), state, None, config.generations_per_call
        )

    num_groups = 1 if mesh is None else mesh.size
    if config.eval_rollouts % num_groups:
        raise ValueError(f"eval_rollouts must be divisible by {num_groups} devices")

    @jax.jit
    def evaluate_mean(state: EvolveState, env_params: dream.DreamParams) -> jax.Array:
        key = es_generation.evaluation_key(state.key, state.es_state.generation_counter)
        flat = jnp.broadcast_to(state.es_state.mean, (num_groups, num_dims))
        returns = evaluate(key, env_params, flat, config.eval_rollouts // num_groups)
        return returns.episode_return.reshape(-1)

    return DreamEvolver(run, evaluate_mean, strategy, es_params)


def train_in_dream(
    key: jax.Array,
    env: dream.DreamEnv,
    env_params: dream.DreamParams,
    c_config: controller.ControllerConfig,
    config: EvolveConfig,
    num_generations: int,
    *,
    checkpoint_dir: str | Path | None = None,
    log_path: str | Path | None = None,
    progress: bool = True,
) -> EvolveState:
    """Evolve C in the dream for `num_generations` (resuming from `checkpoint_dir` if it holds one).

    Returns:
      The final EvolveState: `.mean` is the CMA-ES mean (the authors' submitted controller),
      `.best_eval_params` the mean that scored best at an evaluation, `.es_state.best_solution`
      the best single member.
    """
    evolver = make_dream_evolver(env, c_config, config)
    state = evolve_loop.restore_or(init_state(key, c_config, config), checkpoint_dir)
    if num_generations % config.generations_per_call:
        raise ValueError(
            f"num_generations={num_generations} must be a multiple of generations_per_call="
            f"{config.generations_per_call}"
        )

    mesh = _population_mesh(config)
    # The inputs replicated over the mesh's devices (global arrays with several processes): a
    # state built or restored on the host sits on one device, which a sharded program refuses
    # (found on 4 host devices: the default shards the population).
    replicated = None if mesh is None else NamedSharding(mesh, PartitionSpec())

    def place(tree):
        return tree if replicated is None else distributed.put_tree(tree, replicated)

    env_params = place(env_params)

    def advance(state):
        state, metrics = evolver.run(place(state), env_params)
        return state, es_generation.host_rows(metrics)

    return evolve_loop.run_loop(
        state,
        advance,
        lambda s: evolver.evaluate_mean(place(s), env_params),
        config,
        num_generations,
        checkpoint_dir,
        evolve_loop.checkpoint_config("dream", c_config, config, reward=env.reward_kind),
        log_path,
        progress,
    )
