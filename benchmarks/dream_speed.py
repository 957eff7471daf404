"""Dream throughput: steps/s against batch size for wm_jax's rollout path, a plain `lax.scan` of
the same step, eager torch and the paper's NumPy per process; the step's matmuls alone; and one
Doom CMA-ES generation.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import goals, numpy_reference, peak
from benchmarks.harness import (
    Settings,
    Torch,
    block,
    compile_jit,
    progress,
    random_params,
    time_calls,
    time_interleaved,
)
from wm_jax import dream
from wm_jax.dream import rollout as dream_rollout
from wm_jax.es import evolve
from wm_jax.models import controller, mdn_rnn


@dataclasses.dataclass(frozen=True)
class DreamGame:
    mdn: mdn_rnn.MDNRNNConfig
    controller: controller.ControllerConfig
    temperature: float
    reward: str  # "survival" (+1 per step alive) or "model" (M's reward head)

    @property
    def flops(self) -> dict[str, int]:
        return peak.dream_step_flops(
            self.mdn.latent_dim,
            self.mdn.action_dim,
            self.mdn.hidden_size,
            self.controller.input_dim,
            self.mdn.num_mixtures,
            extra_inputs=int(self.mdn.use_restart),
            extra_outputs=int(self.mdn.predict_done) + int(self.mdn.predict_reward),
        )


# Doom: z 64, LSTM 512, done head, τ 1.15, C [z, c, h] -> 1 tanh, +1 per step survived.
# CarRacing: z 32, LSTM 256, C [z, h] -> 3, and M's reward head (one more output) as the reward:
# the dream a CarRacing controller can be trained in. The reward also keeps the returned figure
# dependent on every step's M (with a constant reward XLA would drop M as dead code).
DREAM_GAMES = {
    "doom": DreamGame(mdn_rnn.DOOM, controller.DOOM, 1.15, "survival"),
    "car_racing": DreamGame(
        dataclasses.replace(mdn_rnn.CAR_RACING, predict_reward=True),
        controller.CAR_RACING,
        1.0,
        "model",
    ),
}


def dream_weights(game: DreamGame, seed: int = 0):
    """Random M and C weights and a bank of 16 initial codes."""
    model_params = random_params(mdn_rnn.init_params, game.mdn, seed)
    policy_params = random_params(controller.init_params, game.controller, seed + 1)
    initial_mu = np.random.default_rng(seed + 2).standard_normal((16, game.mdn.latent_dim))
    return model_params, policy_params, jnp.asarray(initial_mu, jnp.float32)


def jax_dream_fn(game: DreamGame, batch: int, num_steps: int, impl: str) -> Callable:
    """fn(key, model_params, policy_params, initial_mu) -> total return of `batch` rollouts.

    impl "dream": `vmap` over rollouts of `wm_jax.dream.rollout.rollout` (a `lax.scan` over
    steps), the path `wm_jax.es.evolve` uses. impl "batched": one `lax.scan` over steps of
    `mdn_rnn.step` + `controller.act` on (batch, ...) arrays, one key per step for the whole
    batch.
    """
    env = dream.DreamEnv(game.mdn, reward=game.reward, inputs=game.controller.inputs)

    def policy(params, obs):
        return controller.act(game.controller, params, obs)

    if impl == "dream":

        def run(key, model_params, policy_params, initial_mu):
            env_params = env.make_params(
                model_params, initial_mu, jnp.zeros_like(initial_mu), game.temperature, num_steps
            )

            def one(rollout_key):
                return dream_rollout.rollout(
                    rollout_key, env, env_params, policy, policy_params, num_steps
                )

            return jnp.sum(jax.vmap(one)(jax.random.split(key, batch)).episode_return)

        return run

    def run_batched(key, model_params, policy_params, initial_mu):
        key_z, key_steps = jax.random.split(key)
        index = jax.random.randint(key_z, (batch,), 0, initial_mu.shape[0])
        z = initial_mu[index]
        memory = mdn_rnn.initial_state(game.mdn, (batch,))

        def one_step(carry, step_key):
            memory, z, restart, episode_return, alive = carry
            action = policy(policy_params, controller.features(game.controller, z, memory))
            memory, z, done_logit, reward = mdn_rnn.step(
                step_key,
                game.mdn,
                model_params,
                memory,
                z,
                action,
                game.temperature,
                restart if game.mdn.use_restart else None,
            )
            reward = reward if game.reward == "model" else 1.0
            episode_return = episode_return + jnp.where(alive, reward, 0.0)
            if game.mdn.predict_done:
                alive = alive & (done_logit <= 0)
            return (memory, z, jnp.zeros_like(restart), episode_return, alive), None

        carry = (memory, z, jnp.ones((batch,), bool), jnp.zeros((batch,)), jnp.ones((batch,), bool))
        carry, _ = jax.lax.scan(one_step, carry, jax.random.split(key_steps, num_steps))
        return jnp.sum(carry[3])

    return run_batched


def steps_for(settings: Settings, batch: int) -> int:
    low, high = settings.dream_steps_range
    return int(min(max(settings.dream_steps_total // batch, low), high))


def bench_dream(settings: Settings, peak_record: dict, tch: Torch | None) -> dict[str, Any]:
    """Dream steps/s against batch size for wm_jax (two paths), eager torch and NumPy."""
    out: dict[str, Any] = {}
    peak_gflops = peak_record["peak_gflops"]
    for name, game in DREAM_GAMES.items():
        flops = game.flops
        model_params, policy_params, initial_mu = dream_weights(game)
        rows = []
        for batch in settings.batches:
            num_steps = steps_for(settings, batch)
            both = settings.batched_at is None or batch in settings.batched_at
            impls = ("dream", "batched") if both else ("dream",)
            args = (jax.random.key(1), model_params, policy_params, initial_mu)
            calls, compile_s = {}, {}
            for impl in impls:
                fn = jax_dream_fn(game, batch, num_steps, impl)
                compiled, compile_s[impl] = compile_jit(fn, *args)
                calls[impl] = lambda c=compiled: block(c(*args))
            # The two paths' repetitions alternate, so a change of the machine's load moves
            # both (their ratio is a goal).
            timings = time_interleaved(calls, settings.repeats, settings.min_time_s)
            for impl in impls:
                rows.append(dream_row(f"wm_jax:{impl}", batch, num_steps, timings[impl], flops))
                rows[-1]["compile_s"] = compile_s[impl]
                progress(f"dream {name} {rows[-1]['impl']} batch {batch}", rows[-1])
            # torch with every core (the reference setting) and, on a CPU, with one thread: on a
            # busy machine spinning OpenMP threads can cost torch more than they bring.
            cpu_threads = sorted({os.cpu_count() or 1, 1}, reverse=True)
            for threads in (cpu_threads if tch.device == "cpu" else [None]) if tch else []:
                if threads is not None:
                    tch.torch.set_num_threads(threads)
                rows.append(_torch_dream(settings, game, batch, num_steps, tch))
                rows[-1] |= dream_rates(rows[-1]["steps_per_s"], flops)
                progress(f"dream {name} {rows[-1]['impl']} batch {batch}", rows[-1])
            if tch:
                tch.ref.use_all_cores()
        for row in rows:
            row["fraction_of_peak"] = row["gflops"] / peak_gflops
        weights = numpy_reference.numpy_weights(model_params, policy_params)
        sizes = numpy_reference.Sizes.from_configs(game.mdn, game.controller)
        numpy_row = numpy_reference.throughput(
            weights,
            sizes,
            settings.numpy_workers,
            settings.numpy_rollout_steps,
            game.temperature,
            settings.numpy_seconds,
        )
        numpy_row |= {"impl": "numpy_per_process"} | dream_rates(numpy_row["steps_per_s"], flops)
        numpy_row["fraction_of_peak"] = numpy_row["gflops"] / peak_gflops
        progress(f"dream {name} numpy x{numpy_row['workers']} processes", numpy_row)
        out[name] = {
            "flops_per_step": flops,
            "flops_formula": "LSTM 2(in+H)4H + MDN head 2H·out + controller 2·in_c·A (matmuls)",
            "temperature": game.temperature,
            "rows": rows,
            "numpy": numpy_row,
            "peak_steps_per_s": peak_gflops * 1e9 / flops["total"],
        }
        out[name]["gemm_breakdown"] = _gemm_breakdown(name, game, settings, peak_record)
    return out


def dream_rates(steps_per_s: float, flops: dict[str, int]) -> dict[str, float]:
    return {"steps_per_s": steps_per_s, "gflops": steps_per_s * flops["total"] / 1e9}


def dream_row(impl, batch, num_steps, timing, flops) -> dict[str, Any]:
    steps_per_s = batch * num_steps / timing["median_s"]
    return {"impl": impl, "batch": batch, "num_steps": num_steps, **timing} | dream_rates(
        steps_per_s, flops
    )


def _torch_dream(settings, game: DreamGame, batch, num_steps, tch: Torch) -> dict[str, Any]:
    """Eager torch: the same weights, one Python iteration per step over the batch."""
    model_params, policy_params, initial_mu = dream_weights(game)
    model = tch.ref.load_mdn_rnn(tch.ref.MDNRNN.from_config(game.mdn), model_params)
    c = game.controller
    policy = tch.ref.Controller(c.input_dim, c.action_dim, c.use_bias)
    policy = tch.ref.load_controller(policy, policy_params)
    generator = tch.torch.Generator(device=tch.device).manual_seed(0)
    index = np.random.default_rng(0).integers(0, initial_mu.shape[0], batch)
    z0 = tch.tensor(np.asarray(initial_mu)[index])

    def call(steps):
        tch.ref.dream_rollout(
            model, policy, z0, steps, game.temperature, c.inputs, game.reward, generator
        )
        tch.sync()

    # No compile to amortise: steps per call only need to fill min_time_s, so a slow eager
    # step (batch 1 on a loaded machine) does not stretch the run. A 3-step probe sizes it.
    start = time.perf_counter()
    call(3)
    per_step = (time.perf_counter() - start) / 3
    num_steps = int(min(max(round(settings.min_time_s / per_step), 3), num_steps))
    timing = time_calls(functools.partial(call, num_steps), settings.repeats, settings.min_time_s)
    threads = tch.torch.get_num_threads()
    all_cores = tch.device != "cpu" or threads == (os.cpu_count() or 1)
    impl = "torch_eager" if all_cores else f"torch_eager_{threads}thread"
    row = {"impl": impl, "batch": batch, "num_steps": num_steps, **timing}
    row["steps_per_s"] = batch * num_steps / timing["median_s"]
    row["torch_threads"] = threads
    row["torch_device"] = tch.device
    return row


def _gemm_batch(settings: Settings) -> int:
    return goals.GOAL_BATCH if goals.GOAL_BATCH in settings.batches else max(settings.batches)


def dream_gemm_shapes(settings: Settings) -> dict[str, tuple[int, int, int]]:
    """The (m, k, n) of each dream's LSTM and head matmuls at the goal batch, by name."""
    batch, shapes = _gemm_batch(settings), {}
    for name, game in DREAM_GAMES.items():
        hidden = game.mdn.hidden_size
        lstm_k = game.flops["lstm"] // (2 * 4 * hidden)
        shapes[f"{name}_lstm"] = (batch, lstm_k, 4 * hidden)
        shapes[f"{name}_head"] = (batch, hidden, game.flops["mdn_head"] // (2 * hidden))
    return shapes


def _gemm_breakdown(name: str, game: DreamGame, settings: Settings, peak_record) -> dict:
    """The step's two big matmuls alone at the dream's shapes (from the peak measurement): the
    steps/s the step would reach if nothing but its matmuls ran."""
    batch = _gemm_batch(settings)
    lstm = peak_record["gemm_gflops"][f"{name}_lstm"]
    head = peak_record["gemm_gflops"][f"{name}_head"]
    seconds = batch * (game.flops["lstm"] / lstm + game.flops["mdn_head"] / head) / 1e9
    return {
        "batch": batch,
        "lstm_gemm": list(peak_record["gemm_shapes"][f"{name}_lstm"]),
        "lstm_gemm_gflops": lstm,
        "head_gemm": list(peak_record["gemm_shapes"][f"{name}_head"]),
        "head_gemm_gflops": head,
        "matmul_only_steps_per_s": batch / seconds,
    }


def bench_cma(settings: Settings) -> dict[str, Any]:
    """Seconds per CMA-ES generation in the Doom dream (P × R rollouts of `cma_steps` steps)."""
    game = DREAM_GAMES["doom"]
    env = dream.DreamEnv(game.mdn, reward="survival", inputs=game.controller.inputs)
    model_params, _, initial_mu = dream_weights(game)
    # Done head biased off: every rollout runs to the cap, the worst case of a generation.
    head_bias = model_params["head"]["bias"].at[-1].set(-1e3)
    model_params = {**model_params, "head": {**model_params["head"], "bias": head_bias}}
    env_params = env.make_params(
        model_params, initial_mu, jnp.zeros_like(initial_mu), game.temperature, settings.cma_steps
    )
    config = evolve.EvolveConfig(
        population_size=settings.cma_population,
        rollouts_per_member=settings.cma_rollouts,
        max_steps=settings.cma_steps,
        generations_per_call=1,
        eval_every=0,
        checkpoint_every=0,
    )
    evolver = evolve.make_dream_evolver(env, game.controller, config)
    state = jax.jit(evolve.init_state, static_argnums=(1, 2))(
        jax.random.key(0), game.controller, config
    )
    start = time.perf_counter()
    compiled = evolver.run.lower(state, env_params).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def call():
        holder["state"], metrics = compiled(holder["state"], env_params)
        block(metrics)

    timing = time_calls(call, settings.cma_generations, 0.0)
    rollouts = settings.cma_population * settings.cma_rollouts
    steps = rollouts * settings.cma_steps
    record = {
        "population": settings.cma_population,
        "rollouts_per_member": settings.cma_rollouts,
        "max_steps": settings.cma_steps,
        "chunk_size": config.chunk_size,
        "compile_s": compile_s,
        **timing,
        "seconds_per_generation": timing["median_s"],
        "dream_steps_per_s": steps / timing["median_s"],
        "seconds_per_generation_at_2100_steps": timing["median_s"] * 2100 / settings.cma_steps,
        "paper_seconds_per_generation": 54 * 3600 / 1800,  # 1,800 generations in ~54 h
    }
    progress("cma doom generation", record)
    return record
