"""One process of tests/test_distributed.py: M's training, a dream CMA-ES call, a checkpoint
round trip and a sharded collection, on whatever devices `jax.devices()` lists (one process
with 4 devices, or 2 processes with 2 each). Prints one JSON line of results.

    python tests/distributed_worker.py OUT_DIR [COORDINATOR NUM_PROCESSES PROCESS_ID]
"""

import json
import sys
from pathlib import Path

from wm_jax.core import distributed

if __name__ == "__main__" and len(sys.argv) > 2:
    # Before anything touches a device (importing gymnax does): connect the processes.
    distributed.initialize(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from wm_jax import dream  # noqa: E402
from wm_jax.core import checkpoint, devices  # noqa: E402
from wm_jax.envs import collect  # noqa: E402
from wm_jax.es import evolve  # noqa: E402
from wm_jax.models import controller, mdn_rnn  # noqa: E402
from wm_jax.train import mdn_rnn_train, training_loop  # noqa: E402


def main(out: Path) -> None:
    assert jax.device_count() == 4, jax.devices()
    results = {"process": jax.process_index(), "processes": jax.process_count()}

    # M: 3 steps on batches of 8 sequences split over the 4 devices (each process places its
    # own rows; the LSTM state carried between windows is split by row too).
    mesh = devices.data_mesh(0, 8)
    assert mesh is not None and mesh.size == 4
    config = mdn_rnn.MDNRNNConfig(
        latent_dim=3, action_dim=2, hidden_size=8, num_mixtures=2, predict_done=True
    )
    train_config = mdn_rnn_train.MDNTrainConfig(batch_size=8, seq_len=5, num_steps=3)
    init_state, train_step = mdn_rnn_train.make_train(config, train_config)
    rng = np.random.default_rng(0)  # the same batches on every process

    def batch():
        return mdn_rnn_train.SequenceBatch(
            rng.normal(size=(8, 6, 3)).astype(np.float32),
            rng.normal(size=(8, 6, 3)).astype(np.float32) - 2,
            rng.uniform(-1, 1, (8, 5, 2)).astype(np.float32),
            rng.random((8, 5)) < 0.1,
            rng.random((8, 5)) < 0.1,
            rng.normal(size=(8, 5)).astype(np.float32),
            np.ones((8, 5), bool),
        )

    batches = [batch() for _ in range(3)]
    m_dir = out / "m_checkpoints"
    state, last = training_loop.run(
        "M",
        jax.random.key(3),
        train_step,
        init_state,
        lambda start: batches[start:],
        3,
        checkpoint_dir=m_dir,
        metrics_path=out / "m_metrics.jsonl",
        checkpoint_every=2,
        progress=False,
        log_every=1,
        mesh=mesh,
    )
    kernel = state.params["lstm"]["kernel"]
    results["m_loss"] = last["loss"]
    results["m_kernel_sum"] = float(distributed.to_host(kernel).sum())
    results["m_steps"] = checkpoint.all_steps(m_dir)
    restored, step = checkpoint.restore_latest(m_dir, target=init_state(jax.random.key(0)))
    results["m_restored_step"] = step
    results["m_restored_kernel_sum"] = float(np.asarray(restored.params["lstm"]["kernel"]).sum())

    # C: one jitted call of 2 CMA-ES generations in a random Doom-like dream, the population of 8
    # split over the 4 devices.
    m_config = mdn_rnn.MDNRNNConfig(
        latent_dim=4,
        action_dim=1,
        hidden_size=8,
        num_mixtures=3,
        use_restart=True,
        predict_done=True,
    )
    m_params = mdn_rnn.init_params(jax.random.key(0), m_config)
    env, _ = dream.make_dream("doom_take_cover", m_config)
    params = env.make_params(m_params, jnp.zeros((4, 4)), jnp.zeros((4, 4)), 1.0, 30)
    c_config = controller.ControllerConfig(
        inputs=("z", "c", "h"), latent_dim=4, hidden_size=8, action_dim=1, use_bias=False
    )
    config = evolve.EvolveConfig(
        population_size=8,
        rollouts_per_member=4,
        sigma_init=0.5,
        eval_rollouts=8,
        max_steps=30,
        chunk_size=10,
        generations_per_call=2,
        eval_every=2,
        checkpoint_every=2,
        compact_min_batch=2,
        shard_population=True,
    )
    state = evolve.train_in_dream(
        jax.random.key(0),
        env,
        params,
        c_config,
        config,
        4,
        checkpoint_dir=out / "c_checkpoints",
        log_path=out / "c_log.jsonl",
        progress=False,
    )
    results["c_mean"] = distributed.to_host(state.es_state.mean).tolist()
    results["c_best_eval"] = float(distributed.to_host(state.best_eval_return))
    lowered = evolve.make_dream_evolver(env, c_config, config).run.lower(state, params).as_text()
    results["c_sharded"] = '{"pop"}' in lowered or '{{"pop"}}' in lowered

    # Collection: each process plays its own share of the episode ids into the one store.
    summary = collect.collect(
        "minatar_breakout",
        out / "episodes",
        6,
        workers=1,
        shard=(distributed.process_index(), distributed.process_count()),
        max_frames=20,
        progress=False,
    )
    results["collected"] = summary["stored"] + summary["skipped"]
    distributed.barrier("collected")
    results["episodes_in_store"] = len(list((out / "episodes").glob("*.npz")))
    print("RESULT " + json.dumps(results), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]))
