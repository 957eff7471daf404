"""Speed of wm_jax against eager PyTorch and the paper's NumPy-per-process approach, in one run.

    .venv/bin/python -m benchmarks.run [--quick] [--only dream,cma,vae,mdn,collect,car_racing]

Prints a table and writes, under benchmarks/results/ (or --out-dir), `<machine>-<date>.json` (every
measurement), `<machine>-<date>.md` (ratios against the goals, PASS/MISS) and
`<machine>-<date>-dream.png` (dream steps/s against batch size, log-log); `--quick` and `--only`
runs get a suffix so they never overwrite a full run. Every figure is the median of several
repetitions; compile time is measured and reported apart. See benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import numpy_reference, peak, report
from wm_jax import dream
from wm_jax.core import runtime
from wm_jax.dream import rollout as dream_rollout
from wm_jax.es import evolve
from wm_jax.models import controller, mdn_rnn, vae
from wm_jax.train import mdn_rnn_train, vae_train

SECTIONS = ("dream", "cma", "vae", "mdn", "collect", "car_racing")
RESULTS_DIR = Path(__file__).parent / "results"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Sizes of one run. Rates do not depend on them beyond noise; run time does."""

    name: str
    batches: tuple[int, ...]
    dream_steps_total: int  # steps per call ≈ this / batch, clipped to dream_steps_range
    dream_steps_range: tuple[int, int]
    repeats: int
    min_time_s: float  # each repetition repeats the call until it has run this long
    numpy_seconds: float
    numpy_rollout_steps: int
    numpy_workers: int | None  # None: one per core
    peak_sizes: tuple[int, ...] | None  # None: peak.CPU_SIZES / GPU_SIZES
    batched_at: tuple[int, ...] | None = None  # batches that also time wm_jax:batched (None: all)
    cma_population: int = 64
    cma_rollouts: int = 16
    cma_steps: int = 2100  # Doom's cap; no rollout ends earlier (done head biased off)
    cma_generations: int = 2
    vae_batch: int = 100
    mdn_batch: int = 100
    mdn_seq_len: dict[str, int] = dataclasses.field(
        default_factory=lambda: {"car_racing": 999, "doom": 500}
    )
    collect_frames: int = 300  # per episode
    collect_episodes_per_worker: int = 2
    car_racing_steps: int = 500


FULL = Settings(
    name="full",
    batches=(1, 64, 1024, 16384),
    dream_steps_total=100_000,
    dream_steps_range=(5, 2000),
    repeats=5,
    min_time_s=1.0,
    numpy_seconds=5.0,
    numpy_rollout_steps=1000,
    numpy_workers=None,
    peak_sizes=None,
)
QUICK = dataclasses.replace(
    FULL,
    name="quick",
    batches=(1, 64, 1024),
    dream_steps_total=10_000,
    dream_steps_range=(5, 500),
    repeats=3,
    min_time_s=0.3,
    numpy_seconds=1.5,
    numpy_rollout_steps=100,
    batched_at=(1024,),
    cma_steps=50,
    mdn_seq_len={"car_racing": 100, "doom": 100},
    collect_frames=100,
    collect_episodes_per_worker=1,
    car_racing_steps=100,
)
# Smallest form, for tests/test_benchmarks.py: checks the harness, not the speed.
TINY = dataclasses.replace(
    QUICK,
    name="tiny",
    batches=(2,),
    dream_steps_total=6,
    dream_steps_range=(3, 3),
    batched_at=None,
    repeats=1,
    min_time_s=0.0,
    numpy_seconds=0.1,
    numpy_rollout_steps=3,
    numpy_workers=1,
    peak_sizes=(128,),
    cma_population=4,
    cma_rollouts=2,
    cma_steps=3,
    cma_generations=1,
    vae_batch=2,
    mdn_batch=2,
    mdn_seq_len={"car_racing": 4, "doom": 4},
    collect_frames=5,
    car_racing_steps=5,
)
PRESETS = {s.name: s for s in (FULL, QUICK, TINY)}


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

# M training is the paper's M (CarRacing without a reward head: 422,368 parameters).
MDN_GAMES = {"car_racing": mdn_rnn.CAR_RACING, "doom": mdn_rnn.DOOM}


@dataclasses.dataclass(frozen=True)
class Torch:
    """torch, the reference models, the device they run on and how to wait for it."""

    torch: Any
    ref: Any
    device: str

    def sync(self) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def tensor(self, array) -> Any:
        return self.torch.from_numpy(np.array(array)).to(self.device)


def load_torch() -> Torch | None:
    """Torch on all CPU cores, or on CUDA when JAX is on a GPU; None when not importable."""
    try:
        import torch

        from benchmarks import torch_reference
    except Exception:  # absent or broken: every torch figure is skipped
        return None
    torch_reference.use_all_cores()
    device = "cpu"
    if jax.default_backend() == "gpu" and torch.cuda.is_available():
        device = "cuda"
        torch.set_default_device(device)  # the reference builds its tensors on the default device
    return Torch(torch, torch_reference, device)


# ---------------------------------------------------------------------------------------------
# Timing


def time_calls(call: Callable[[], Any], repeats: int, min_time_s: float) -> dict[str, Any]:
    """Median seconds per `call()` (which must block until done) over `repeats` repetitions.

    The first call is a warm-up (its time is reported as warmup_s); each repetition then repeats
    the call until `min_time_s` has passed, so short calls are timed over many runs.
    """
    return time_interleaved({"call": call}, repeats, min_time_s)["call"]


def time_interleaved(
    calls: dict[str, Callable[[], Any]], repeats: int, min_time_s: float
) -> dict[str, dict[str, Any]]:
    """`time_calls` for several calls whose repetitions alternate (a, b, a, b, ...)."""
    warmups, counts = {}, {}
    for name, call in calls.items():
        start = time.perf_counter()
        call()
        warmups[name] = time.perf_counter() - start
        counts[name] = max(1, math.ceil(min_time_s / max(warmups[name], 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            for _ in range(counts[name]):
                call()
            times[name].append((time.perf_counter() - start) / counts[name])
    return {
        name: {
            "median_s": statistics.median(times[name]),
            "times_s": times[name],
            "calls_per_repeat": counts[name],
            "warmup_s": warmups[name],
        }
        for name in calls
    }


def time_torch(tch: Torch, call: Callable[[], Any], settings: Settings) -> dict[str, Any]:
    """`time_calls` for torch on the faster of every core and one thread (probed with one call
    each after a warm-up): on a busy machine spinning OpenMP threads can cost torch 10× or more.
    """
    probe: dict[int, float] = {}
    if tch.device == "cpu" and (os.cpu_count() or 1) > 1:
        for threads in (os.cpu_count() or 1, 1):
            tch.torch.set_num_threads(threads)
            call()
            start = time.perf_counter()
            call()
            probe[threads] = time.perf_counter() - start
        tch.torch.set_num_threads(min(probe, key=probe.get))
    timing = time_calls(call, settings.repeats, settings.min_time_s)
    timing |= {"torch_threads": tch.torch.get_num_threads(), "thread_probe_s": probe}
    tch.ref.use_all_cores()
    return timing


def compile_jit(fn: Callable, *args) -> tuple[Callable, float]:
    """(compiled, seconds to trace, lower and compile `jax.jit(fn)` for `args`)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _block(tree) -> None:
    jax.block_until_ready(tree)


# ---------------------------------------------------------------------------------------------
# Dream throughput


def random_params(init: Callable, config: Any, seed: int = 0) -> Any:
    """Weights in `init(key, config)`'s layout, N(0, 1/fan_in) (biases N(0, 0.01)), from NumPy.

    Speed does not depend on the values, and this skips running `init` (M's orthogonal init
    runs XLA's slow CPU QR: seconds per call).
    """
    shapes = jax.eval_shape(lambda key: init(key, config), jax.random.key(0))
    rng = np.random.default_rng(seed)

    def fill(shape):
        fan_in = int(np.prod(shape.shape[:-1])) if len(shape.shape) > 1 else 10_000
        return jnp.asarray(rng.normal(0.0, fan_in**-0.5, shape.shape).astype(np.float32))

    return jax.tree.map(fill, shapes)


def _dream_weights(game: DreamGame, seed: int = 0):
    """Random M and C weights and a bank of 16 initial codes."""
    model_params = random_params(mdn_rnn.init_params, game.mdn, seed)
    policy_params = random_params(controller.init_params, game.controller, seed + 1)
    initial_mu = np.random.default_rng(seed + 2).standard_normal((16, game.mdn.latent_dim))
    return model_params, policy_params, jnp.asarray(initial_mu, jnp.float32)


def _jax_dream_fn(game: DreamGame, batch: int, num_steps: int, impl: str) -> Callable:
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


def _steps_for(settings: Settings, batch: int) -> int:
    low, high = settings.dream_steps_range
    return int(min(max(settings.dream_steps_total // batch, low), high))


def bench_dream(settings: Settings, peak_record: dict, tch: Torch | None) -> dict[str, Any]:
    """Dream steps/s against batch size for wm_jax (two paths), eager torch and NumPy."""
    out: dict[str, Any] = {}
    peak_gflops = peak_record["peak_gflops"]
    for name, game in DREAM_GAMES.items():
        flops = game.flops
        model_params, policy_params, initial_mu = _dream_weights(game)
        rows = []
        for batch in settings.batches:
            num_steps = _steps_for(settings, batch)
            both = settings.batched_at is None or batch in settings.batched_at
            impls = ("dream", "batched") if both else ("dream",)
            args = (jax.random.key(1), model_params, policy_params, initial_mu)
            calls, compile_s = {}, {}
            for impl in impls:
                fn = _jax_dream_fn(game, batch, num_steps, impl)
                compiled, compile_s[impl] = compile_jit(fn, *args)
                calls[impl] = lambda c=compiled: _block(c(*args))
            # The two paths' repetitions alternate, so a change of the machine's load moves
            # both (their ratio is a goal).
            timings = time_interleaved(calls, settings.repeats, settings.min_time_s)
            for impl in impls:
                rows.append(_dream_row(f"wm_jax:{impl}", batch, num_steps, timings[impl], flops))
                rows[-1]["compile_s"] = compile_s[impl]
                _progress(f"dream {name} {rows[-1]['impl']} batch {batch}", rows[-1])
            # torch with every core (the reference setting) and, on a CPU, with one thread: on a
            # busy machine spinning OpenMP threads can cost torch more than they bring.
            cpu_threads = sorted({os.cpu_count() or 1, 1}, reverse=True)
            for threads in (cpu_threads if tch.device == "cpu" else [None]) if tch else []:
                if threads is not None:
                    tch.torch.set_num_threads(threads)
                rows.append(_torch_dream(settings, game, batch, num_steps, tch))
                rows[-1] |= _dream_rates(rows[-1]["steps_per_s"], flops)
                _progress(f"dream {name} {rows[-1]['impl']} batch {batch}", rows[-1])
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
        numpy_row |= {"impl": "numpy_per_process"} | _dream_rates(numpy_row["steps_per_s"], flops)
        numpy_row["fraction_of_peak"] = numpy_row["gflops"] / peak_gflops
        _progress(f"dream {name} numpy x{numpy_row['workers']} processes", numpy_row)
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


def _dream_rates(steps_per_s: float, flops: dict[str, int]) -> dict[str, float]:
    return {"steps_per_s": steps_per_s, "gflops": steps_per_s * flops["total"] / 1e9}


def _dream_row(impl, batch, num_steps, timing, flops) -> dict[str, Any]:
    steps_per_s = batch * num_steps / timing["median_s"]
    return {"impl": impl, "batch": batch, "num_steps": num_steps, **timing} | _dream_rates(
        steps_per_s, flops
    )


def _torch_dream(settings, game: DreamGame, batch, num_steps, tch: Torch) -> dict[str, Any]:
    """Eager torch: the same weights, one Python iteration per step over the batch."""
    model_params, policy_params, initial_mu = _dream_weights(game)
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
    return report.GOAL_BATCH if report.GOAL_BATCH in settings.batches else max(settings.batches)


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


# ---------------------------------------------------------------------------------------------
# CMA-ES generation, V and M training


def bench_cma(settings: Settings) -> dict[str, Any]:
    """Seconds per CMA-ES generation in the Doom dream (P × R rollouts of `cma_steps` steps)."""
    game = DREAM_GAMES["doom"]
    env = dream.DreamEnv(game.mdn, reward="survival", inputs=game.controller.inputs)
    model_params, _, initial_mu = _dream_weights(game)
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
        _block(metrics)

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
    _progress("cma doom generation", record)
    return record


def bench_vae(settings: Settings, tch: Torch | None) -> dict[str, Any]:
    """V training images/s (Adam, batch `vae_batch`), wm_jax vs eager torch."""
    batch = settings.vae_batch
    frames = np.random.default_rng(0).integers(0, 256, (batch, 64, 64, 3), dtype=np.uint8)
    init_state, train_step = vae_train.make_train(
        vae.CAR_RACING, vae_train.VAETrainConfig(batch_size=batch)
    )
    holder = {"state": jax.jit(init_state)(jax.random.key(0))}
    frames_jax = jnp.asarray(frames)
    key = jax.random.key(1)
    start = time.perf_counter()
    compiled = train_step.lower(key, holder["state"], frames_jax).compile()
    compile_s = time.perf_counter() - start

    def call():
        holder["state"], metrics = compiled(key, holder["state"], frames_jax)
        _block(metrics)

    timing = time_calls(call, settings.repeats, settings.min_time_s)
    record: dict[str, Any] = {"batch": batch, "latent_dim": 32}
    record["wm_jax"] = {
        **timing,
        "compile_s": compile_s,
        "images_per_s": batch / timing["median_s"],
    }
    _progress("vae wm_jax", record["wm_jax"])
    if tch is not None:
        tch.torch.manual_seed(0)
        step = tch.ref.make_vae_train_step(tch.ref.ConvVAE(32))
        frames_torch = tch.tensor(frames)

        def torch_call():
            step(frames_torch)
            tch.sync()

        timing = time_torch(tch, torch_call, settings)
        record["torch_eager"] = {**timing, "images_per_s": batch / timing["median_s"]}
        record["ratio_vs_torch"] = (
            record["wm_jax"]["images_per_s"] / record["torch_eager"]["images_per_s"]
        )
        _progress("vae torch", record["torch_eager"])
    return record


def _sequence_batch(
    config: mdn_rnn.MDNRNNConfig, batch: int, seq_len: int
) -> mdn_rnn_train.SequenceBatch:
    rng = np.random.default_rng(0)
    restarts = np.zeros((batch, seq_len), bool)
    if config.use_restart:  # a few episode boundaries inside each sequence, as in Doom data
        restarts[:, 0] = True
        restarts[rng.random((batch, seq_len)) < 1 / 200] = True
    dones = np.zeros_like(restarts)
    dones[:, :-1] = restarts[:, 1:]
    return mdn_rnn_train.SequenceBatch(
        mu=rng.standard_normal((batch, seq_len + 1, config.latent_dim), dtype=np.float32),
        logvar=np.full((batch, seq_len + 1, config.latent_dim), -2.0, np.float32),
        actions=rng.uniform(-1, 1, (batch, seq_len, config.action_dim)).astype(np.float32),
        restarts=restarts,
        dones=dones,
        rewards=np.zeros((batch, seq_len), np.float32),
        mask=~dones,
    )


def bench_mdn(settings: Settings, tch: Torch | None) -> dict[str, Any]:
    """M training timesteps/s (batch × sequence length per step), wm_jax vs eager torch."""
    out: dict[str, Any] = {}
    for name, config in MDN_GAMES.items():
        batch, seq_len = settings.mdn_batch, settings.mdn_seq_len[name]
        train_config = mdn_rnn_train.MDNTrainConfig(batch_size=batch, seq_len=seq_len)
        init_state, train_step = mdn_rnn_train.make_train(config, train_config)
        data = _sequence_batch(config, batch, seq_len)
        data_jax = jax.tree.map(jnp.asarray, data)
        holder = {"state": init_state(jax.random.key(0))}
        key = jax.random.key(1)
        start = time.perf_counter()
        compiled = train_step.lower(key, holder["state"], data_jax).compile()
        compile_s = time.perf_counter() - start

        def call(compiled=compiled, holder=holder, data_jax=data_jax, key=key):
            holder["state"], metrics = compiled(key, holder["state"], data_jax)
            _block(metrics)

        timing = time_calls(call, settings.repeats, settings.min_time_s)
        timesteps = batch * seq_len
        record: dict[str, Any] = {"batch": batch, "seq_len": seq_len}
        record["paper_seq_len"] = 999 if name == "car_racing" else 500
        record["wm_jax"] = {
            **timing,
            "compile_s": compile_s,
            "timesteps_per_s": timesteps / timing["median_s"],
        }
        _progress(f"mdn {name} wm_jax", record["wm_jax"])
        if tch is not None:
            tch.torch.manual_seed(0)
            step = tch.ref.make_mdn_train_step(tch.ref.MDNRNN.from_config(config))
            tensors = [tch.tensor(x) for x in data[:5]]  # mu, logvar, actions, restarts, dones

            def torch_call(step=step, tensors=tensors):
                step(*tensors)
                tch.sync()

            timing = time_torch(tch, torch_call, settings)
            record["torch_eager"] = {**timing, "timesteps_per_s": timesteps / timing["median_s"]}
            record["torch_eager"]["lstm"] = (
                "python loop over time (state reset at restarts)"
                if config.use_restart
                else "nn.LSTM (fused C++ loop)"
            )
            record["ratio_vs_torch"] = (
                record["wm_jax"]["timesteps_per_s"] / record["torch_eager"]["timesteps_per_s"]
            )
            _progress(f"mdn {name} torch", record["torch_eager"])
        out[name] = record
    return out


# ---------------------------------------------------------------------------------------------
# Real games


def bench_collect(settings: Settings) -> dict[str, Any]:
    """Random-rollout collection frames/s per game (wm_jax.envs.collect), 1 and all workers."""
    from wm_jax.envs import collect

    out: dict[str, Any] = {}
    all_workers = os.cpu_count() or 1
    for game in ("car_racing", "doom_take_cover"):
        out[game] = {}
        for workers in sorted({1, all_workers}):
            episodes = workers * settings.collect_episodes_per_worker
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    summary = collect.collect(
                        game,
                        tmp,
                        episodes,
                        workers=workers,
                        max_frames=settings.collect_frames,
                        min_frames=0,
                        progress=False,
                    )
                record = {key: summary[key] for key in ("frames", "seconds", "frames_per_s")}
                record["failed"] = len(summary["failed"])
            except Exception as error:  # a game that cannot start is recorded
                record = {"error": f"{type(error).__name__}: {error}"}
            record |= {
                "workers": workers,
                "episodes": episodes,
                "max_frames": settings.collect_frames,
            }
            out[game][f"workers_{workers}"] = record
            _progress(f"collect {game} x{workers}", record)
    out["note"] = "includes worker start-up and compressed writes; short episodes in --quick"
    return out


def bench_car_racing(settings: Settings) -> dict[str, Any]:
    """Stock vs fast CarRacing frames/s (benchmarks/car_racing_speed.run), 1 and all workers."""
    try:
        from benchmarks import car_racing_speed
    except ImportError as error:
        return {"skipped": f"benchmarks/car_racing_speed.py not importable: {error}"}
    out: dict[str, Any] = {}
    for workers in sorted({1, os.cpu_count() or 1}):
        try:
            out[f"workers_{workers}"] = car_racing_speed.run(settings.car_racing_steps, workers)
        except Exception as error:  # recorded, the run goes on
            out[f"workers_{workers}"] = {"error": f"{type(error).__name__}: {error}"}
        _progress(f"car_racing x{workers}", out[f"workers_{workers}"])
    return out


def _progress(label: str, row: dict[str, Any]) -> None:
    keys = (
        "peak_gflops",
        "steps_per_s",
        "images_per_s",
        "timesteps_per_s",
        "seconds_per_generation",
        "frames_per_s",
        "compile_s",
        "error",
    )
    shown = ", ".join(f"{k} {report.fmt(row[k])}" for k in keys if k in row)
    print(f"  {label}: {shown}", file=sys.stderr, flush=True)


def run(
    settings: Settings,
    only: tuple[str, ...] = SECTIONS,
    out_dir: Path | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Runs the chosen sections and writes the JSON, markdown and plot; returns the record."""
    machine = peak.machine_info() | {"malloc": runtime.malloc_mode()}
    tch = load_torch()
    record: dict[str, Any] = {"machine": machine, "settings": dataclasses.asdict(settings)}
    record["name"] = name or _default_name(machine, settings, only)
    record["torch_device"] = None if tch is None else tch.device
    if tch is None:
        record["note"] = "torch not importable: torch figures skipped."
    record["errors"] = {}
    print(f"benchmarks: {record['name']} ({', '.join(only)})", file=sys.stderr, flush=True)
    if "dream" in only:
        record["peak"] = peak.measure_peak(
            settings.peak_sizes, 2 * settings.repeats, dream_gemm_shapes(settings)
        )
        _progress("matmul peak GFLOP/s", {"peak_gflops": record["peak"]["peak_gflops"]})
    sections: dict[str, Callable[[], Any]] = {
        "dream": lambda: bench_dream(settings, record["peak"], tch),
        "cma": lambda: bench_cma(settings),
        "vae": lambda: bench_vae(settings, tch),
        "mdn": lambda: bench_mdn(settings, tch),
        "collect": lambda: bench_collect(settings),
        "car_racing": lambda: bench_car_racing(settings),
    }
    for section in SECTIONS:
        if section in only:
            start = time.perf_counter()
            try:
                record[section] = sections[section]()
            except Exception as error:  # one broken section must not lose the rest
                record["errors"][section] = f"{type(error).__name__}: {error}"
                print(f"  {section} FAILED: {record['errors'][section]}", file=sys.stderr)
            record.setdefault("section_seconds", {})[section] = time.perf_counter() - start
    record["main_job"] = report.main_job()
    record["goals"] = report.goals(record)
    report.write_outputs(record, out_dir or RESULTS_DIR)
    return record


def _default_name(machine, settings: Settings, only) -> str:
    date = datetime.date.today().isoformat()
    name = f"{peak.machine_slug(machine)}-{date}"
    if settings.name != "full":
        name += f"-{settings.name}"
    if set(only) != set(SECTIONS):
        name += "-" + "+".join(s for s in SECTIONS if s in only)
    return name


def main(argv: list[str] | None = None) -> dict[str, Any]:
    runtime.tune_malloc()  # as the library's entry points do (see wm_jax.core.runtime)
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smaller runs: under 5 min on 2 cores")
    size.add_argument("--tiny", action="store_true", help="smallest form, checks the harness only")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    parser.add_argument("--out-dir", type=Path, default=None, help=f"default {RESULTS_DIR}")
    parser.add_argument("--name", default=None, help="file stem (default <machine>-<date>[-mode])")
    parser.add_argument("--batches", default=None, help="dream batch sizes, e.g. 1,1024,131072")
    parser.add_argument("--cma-steps", type=int, default=None, help="dream steps per CMA rollout")
    args = parser.parse_args(argv)
    settings = TINY if args.tiny else QUICK if args.quick else FULL
    if settings is FULL and jax.default_backend() != "cpu":
        settings = dataclasses.replace(settings, batches=(1, 64, 1024, 16384, 131072, 1048576))
    if args.batches:
        settings = dataclasses.replace(
            settings, batches=tuple(int(b) for b in args.batches.split(","))
        )
    if args.cma_steps:
        settings = dataclasses.replace(settings, cma_steps=args.cma_steps)
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(only) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    record = run(settings, only, args.out_dir, args.name)
    print("\n".join(report.summary_lines(record)))
    print(f"\nwrote {', '.join(record['files'].values())}")
    return record


if __name__ == "__main__":
    main()
