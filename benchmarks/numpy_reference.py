"""The original approach: one dream rollout per process, stepped one frame at a time on the CPU.

The authors' CMA-ES workers (WorldModelsExperiments, doomrnn/doomrnn.py `DoomCoverRNNEnv._step`)
each ran one rollout at a time, one process per core: a TF `session.run` of M per frame (batch
1), then the mixture sampled in NumPy with a Python loop over the latent dimensions
(`get_pi_idx`). Here M's LSTM, head and controller are float32 NumPy and the sampling is
vectorised over latent dimensions, which is faster than either of theirs, so the figure is a
generous one for the original approach.

Weights use wm_jax's layouts (`mdn_rnn` fused LSTM kernel over [x, h], gates i, f, g, o; head;
controller `w`, `b`), converted to NumPy arrays by `numpy_weights`.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from typing import Any, NamedTuple

import numpy as np

LOG_SIGMA_MIN = -7.0  # as wm_jax.models.mdn_rnn
LOG_SIGMA_MAX = 2.0
MIN_TEMPERATURE = 1e-6
# BLAS threads per worker: the original ran one single-threaded process per core.
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Sizes(NamedTuple):
    latent_dim: int
    action_dim: int
    hidden_size: int
    num_mixtures: int
    use_restart: bool
    predict_done: bool
    predict_reward: bool  # the return sums M's reward head (CarRacing), else +1 per step (Doom)
    controller_inputs: tuple[str, ...]  # ("z", "h") or ("z", "c", "h")

    @classmethod
    def from_configs(cls, mdn_config, controller_config) -> Sizes:
        """From wm_jax's MDNRNNConfig and ControllerConfig."""
        c = mdn_config
        return cls(
            c.latent_dim,
            c.action_dim,
            c.hidden_size,
            c.num_mixtures,
            c.use_restart,
            c.predict_done,
            c.predict_reward,
            controller_config.inputs,
        )


def numpy_weights(mdn_params: Any, controller_params: Any) -> dict[str, np.ndarray]:
    """float32 NumPy copies of wm_jax M and C parameters (picklable for worker processes)."""
    weights = {
        "lstm_kernel": mdn_params["lstm"]["kernel"],
        "lstm_bias": mdn_params["lstm"]["bias"],
        "head_kernel": mdn_params["head"]["kernel"],
        "head_bias": mdn_params["head"]["bias"],
        "controller_w": controller_params["w"],
    }
    if "b" in controller_params:
        weights["controller_b"] = controller_params["b"]
    return {name: np.asarray(value, np.float32) for name, value in weights.items()}


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.logaddexp(np.float32(0.0), x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.float32(0.5) * (np.tanh(np.float32(0.5) * x) + np.float32(1.0))


def lstm_step(weights, sizes: Sizes, c, h, z, action, restart: bool):
    """One step of M's LSTM for one rollout: c, h (H,), z (Z,), action (A,) -> (c, h)."""
    if restart:
        c, h = np.zeros_like(c), np.zeros_like(h)
    parts = [z, action] + ([np.float32([restart])] if sizes.use_restart else [])
    gates = np.concatenate([*parts, h]) @ weights["lstm_kernel"] + weights["lstm_bias"]
    i, f, g, o = np.split(gates, 4)
    c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
    return c, _sigmoid(o) * np.tanh(c)


def mixture(weights, sizes: Sizes, h):
    """M's head: log π, μ, log σ (Z, K) each, done logit and reward (0.0 without their heads)."""
    out = h @ weights["head_kernel"] + weights["head_bias"]
    size = sizes.latent_dim * sizes.num_mixtures * 3
    mix = out[:size].reshape(sizes.latent_dim, 3 * sizes.num_mixtures)
    logits, mu, raw = np.split(mix, 3, axis=-1)
    logits = logits - logits.max(-1, keepdims=True)
    log_pi = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    lower = LOG_SIGMA_MIN + _softplus(raw - np.float32(LOG_SIGMA_MIN))
    log_sigma = LOG_SIGMA_MAX - _softplus(np.float32(LOG_SIGMA_MAX) - lower)
    done_logit = out[size] if sizes.predict_done else np.float32(0.0)
    reward = out[size + int(sizes.predict_done)] if sizes.predict_reward else np.float32(0.0)
    return log_pi, mu, log_sigma, done_logit, reward


def sample_next(rng, log_pi, mu, log_sigma, temperature: float) -> np.ndarray:
    """z(t+1) at τ: component by inverse CDF of softmax(log π / τ), then μ + σ √τ ε."""
    temperature = max(temperature, MIN_TEMPERATURE)
    logits = log_pi / np.float32(temperature)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    cdf = np.cumsum(probs, -1)
    u = rng.random(log_pi.shape[0], dtype=np.float32) * cdf[:, -1]
    component = np.minimum((cdf < u[:, None]).sum(-1), log_pi.shape[1] - 1)
    rows = np.arange(log_pi.shape[0])
    noise = rng.standard_normal(log_pi.shape[0], dtype=np.float32)
    scale = np.float32(math.sqrt(temperature))
    return mu[rows, component] + np.exp(log_sigma[rows, component]) * scale * noise


def act(weights, features: np.ndarray) -> np.ndarray:
    out = features @ weights["controller_w"]
    if "controller_b" in weights:
        out = out + weights["controller_b"]
    return np.tanh(out)


def rollout(weights, sizes: Sizes, z0: np.ndarray, num_steps: int, temperature: float, seed=0):
    """One dream rollout of `num_steps` steps (counting on past done, as a fixed-length scan)."""
    rng = np.random.default_rng(seed)
    c = np.zeros(sizes.hidden_size, np.float32)
    h = np.zeros(sizes.hidden_size, np.float32)
    z = np.asarray(z0, np.float32)
    alive, episode_return = True, 0.0
    for t in range(num_steps):
        features = {"z": z, "c": c, "h": h}
        action = act(weights, np.concatenate([features[name] for name in sizes.controller_inputs]))
        c, h = lstm_step(weights, sizes, c, h, z, action, restart=t == 0)
        log_pi, mu, log_sigma, done_logit, reward = mixture(weights, sizes, h)
        z = sample_next(rng, log_pi, mu, log_sigma, temperature)
        if alive:
            episode_return += float(reward) if sizes.predict_reward else 1.0
        alive = alive and not (sizes.predict_done and done_logit > 0)
    return episode_return


def _worker(args) -> tuple[int, float]:
    weights, sizes, num_steps, temperature, seed, deadline = args
    rng = np.random.default_rng(seed)
    z0 = rng.standard_normal(sizes.latent_dim, dtype=np.float32)
    rollout(weights, sizes, z0, 5, temperature, seed)  # warm-up: first-call costs
    steps, start = 0, time.perf_counter()
    while True:
        rollout(weights, sizes, z0, num_steps, temperature, seed + steps)
        steps += num_steps
        if time.perf_counter() >= start + deadline:
            return steps, time.perf_counter() - start


@contextlib.contextmanager
def _single_threaded_blas():
    """Spawned workers inherit the environment: set BLAS to one thread while they start."""
    saved = {name: os.environ.get(name) for name in _THREAD_VARS}
    os.environ.update({name: "1" for name in _THREAD_VARS})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def throughput(
    weights: dict[str, np.ndarray],
    sizes: Sizes,
    num_workers: int | None = None,
    num_steps: int = 100,
    temperature: float = 1.15,
    seconds: float = 2.0,
) -> dict[str, Any]:
    """Total dream steps/s of `num_workers` processes (default: one per core), each running
    rollouts of `num_steps` steps back to back for about `seconds`.
    """
    num_workers = num_workers or os.cpu_count() or 1
    jobs = [(weights, sizes, num_steps, temperature, 1000 * i, seconds) for i in range(num_workers)]
    with _single_threaded_blas():
        context = multiprocessing.get_context("spawn")  # no fork of a multithreaded JAX process
        with context.Pool(num_workers) as pool:
            results = pool.map(_worker, jobs)
    per_worker = [steps / elapsed for steps, elapsed in results]
    return {
        "steps_per_s": float(sum(per_worker)),
        "per_worker_steps_per_s": per_worker,
        "workers": num_workers,
        "rollout_steps": num_steps,
        "seconds_per_worker": seconds,
    }
