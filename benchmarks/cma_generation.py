"""Seconds per CMA-ES generation in the dream, Doom-sized (World Models, Appendix).

Population 64 × 16 rollouts = 1,024 dream episodes per generation; M is Doom's (z 64, LSTM 512,
restart input, done head) with random weights, τ = 1.15, C = 1,088 parameters. The done bias of
M is calibrated so that episodes under a random controller last about `--target-length` steps
(geometric-like), capped at 2,100.

Modes:
  full     one `lax.scan` of 2,100 steps for every episode (the worst case);
  early    `lax.while_loop` over 50-step scan chunks that stops once every episode is done;
  compact  the same chunks, each run only on the episodes still alive
           (`dream_rollout.rollout_batch`).

Compilation is timed apart (ahead-of-time `lower().compile()`), then `--generations` are timed.

    python benchmarks/cma_generation.py                          # all modes, 1 timed generation
    python benchmarks/cma_generation.py --modes compact --generations 3 --target-length 300
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax import dream
from wm_jax.es import evolve
from wm_jax.models import controller, mdn_rnn


def calibrate_done_bias(env, params, c_config, target_length: int, key) -> float:
    """A done bias giving P(done per step) ≈ 1 / target_length under random controllers."""
    num_rollouts, num_steps = 64, 100
    probe = params.replace(max_steps_in_episode=jnp.asarray(10**6, jnp.int32))
    flat = 0.1 * jax.random.normal(key, (num_rollouts, controller.num_params(c_config)))
    unflatten = controller.unflatten_fn(c_config)

    def logits(key, member):
        def policy(p, obs):
            return controller.act(c_config, p, obs)

        def step(carry, t):
            obs, state = carry
            action = policy(unflatten(member), obs)
            obs, state, _, _, info = env.step_env(jax.random.fold_in(key, t), state, action, probe)
            return (obs, state), info["done_logit"]

        carry = env.reset_env(key, probe)
        return jax.lax.scan(step, carry, jnp.arange(num_steps))[1]

    keys = jax.random.split(key, num_rollouts)
    values = np.asarray(jax.jit(jax.vmap(logits))(keys, flat)).reshape(-1)
    return float(-np.quantile(values, 1.0 - 1.0 / target_length))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--population", type=int, default=64)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--max-steps", type=int, default=2100)
    parser.add_argument("--chunk-size", type=int, default=50)
    parser.add_argument("--temperature", type=float, default=1.15)
    parser.add_argument("--target-length", type=int, default=500)
    parser.add_argument("--generations", type=int, default=1, help="timed after compiling")
    parser.add_argument("--modes", default="full,early,compact")
    parser.add_argument("--out", default=None, help="append the results as JSON lines here")
    args = parser.parse_args()

    m_config = mdn_rnn.DOOM
    c_config = controller.DOOM
    env, _ = dream.make_dream("doom_take_cover", m_config)
    key_m, key_bank, key_probe, key_run = jax.random.split(jax.random.key(0), 4)
    m_params = mdn_rnn.init_params(key_m, m_config)
    initial_mu = jax.random.normal(key_bank, (1000, m_config.latent_dim))
    initial_logvar = jnp.full((1000, m_config.latent_dim), -3.0)
    params = env.make_params(m_params, initial_mu, initial_logvar, args.temperature, args.max_steps)
    bias = calibrate_done_bias(env, params, c_config, args.target_length, key_probe)
    m_params["head"]["bias"] = m_params["head"]["bias"].at[-1].add(bias)
    params = params.replace(model_params=m_params)

    base = evolve.EvolveConfig(
        population_size=args.population,
        rollouts_per_member=args.rollouts,
        max_steps=args.max_steps,
        generations_per_call=1,
        eval_every=0,
        checkpoint_every=0,
    )
    print(
        f"devices {jax.devices()}; population {args.population} × {args.rollouts} rollouts, "
        f"≤ {args.max_steps} steps, τ {args.temperature}, done bias {bias:+.3f}"
    )
    for mode in args.modes.split(","):
        chunk_size = None if mode == "full" else args.chunk_size
        config = dataclasses.replace(base, chunk_size=chunk_size, compact=mode == "compact")
        evolver = evolve.make_dream_evolver(env, c_config, config)
        state = evolve.init_state(key_run, c_config, config)
        start = time.perf_counter()
        run = evolver.run.lower(state, params).compile()
        compile_seconds = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(args.generations):
            state, metrics = jax.block_until_ready(run(state, params))
        seconds = (time.perf_counter() - start) / args.generations
        # Mean episode length of the last generation's members ≈ the mean return (+1 per step).
        result = {
            "mode": mode,
            "chunk_size": chunk_size,
            "seconds_per_generation": round(seconds, 3),
            "compile_seconds": round(compile_seconds, 3),
            "mean_episode_length": round(float(metrics.mean_return[-1]), 1),
            "best_member_mean_length": round(float(metrics.best_return[-1]), 1),
            "population": args.population,
            "rollouts": args.rollouts,
            "max_steps": args.max_steps,
            "temperature": args.temperature,
            "target_length": args.target_length,
            "device": str(jax.devices()[0].platform),
        }
        print(json.dumps(result))
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
