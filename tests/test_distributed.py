"""Several processes as one program (`wm_jax.core.distributed`): two local processes talking
over 127.0.0.1 (JAX's CPU collectives, gloo) with 2 devices each give the numbers of one
process with 4 devices, write each checkpoint and log once, and collect disjoint shares of
the episodes into one store; bad settings are one line."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from wm_jax.core import distributed

WORKER = Path(__file__).parent / "distributed_worker.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(device_count: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}")
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _result(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, stdout[-2000:]
    return json.loads(lines[-1].removeprefix("RESULT "))


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(tmp_path):
    one = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path / "one")],
        env=_env(4),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert one.returncode == 0, one.stderr[-3000:]
    coordinator = f"127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(tmp_path / "two"), coordinator, "2", str(i)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    single = _result(one.stdout)
    both = [_result(out) for out, _ in outs]
    assert single["processes"] == 1 and [r["processes"] for r in both] == [2, 2]
    for r in both:
        # M: the loss agrees to float32 summation order (the gradient all-reduce crosses
        # the processes); the weights after 3 Adam steps to the steps' size.
        assert r["m_loss"] == pytest.approx(single["m_loss"], rel=1e-5)
        assert r["m_kernel_sum"] == pytest.approx(single["m_kernel_sum"], abs=1e-2)
        # Checkpoints written once by process 0, restored by each process from the shared folder.
        assert r["m_steps"] == single["m_steps"] == [2, 3] and r["m_restored_step"] == 3
        assert r["m_restored_kernel_sum"] == pytest.approx(r["m_kernel_sum"], abs=1e-6)
        # C: CMA-ES runs replicated and the population is split over the 4 devices of two
        # processes; the mean after 4 generations is the one-process mean.
        assert r["c_sharded"] and single["c_sharded"]
        assert r["c_mean"] == pytest.approx(single["c_mean"], rel=1e-5, abs=1e-6)
        assert r["c_best_eval"] == pytest.approx(single["c_best_eval"])
        assert r["episodes_in_store"] == 6
    # Each process played its own half of the 6 episodes; one process played all 6.
    assert [r["collected"] for r in both] == [3, 3] and single["collected"] == 6
    # Logs are written once, not once per process.
    for name in ("one", "two"):
        assert len((tmp_path / name / "m_metrics.jsonl").read_text().splitlines()) == 3
        assert len((tmp_path / name / "c_log.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
def test_two_processes_run_the_experiment_command_as_one(minatar_smoke_run, tmp_path):
    # `python -m wm_jax.experiment ... --coordinator --num-processes --process-id`, one device
    # each: V's and M's batches and C's population split over both processes, the episodes
    # collected and encoded in two shares, the run folder written by process 0 alone.
    run_dir = tmp_path / "run"
    coordinator = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "wm_jax.experiment", "minatar_breakout", "--scale"]
    command += ["smoke", "--run-dir", str(run_dir), "--no-progress", "--coordinator"]
    procs = [
        subprocess.Popen(
            [*command, coordinator, "--num-processes", "2", "--process-id", str(i)],
            env=_env(1),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    assert "(2 processes)" in outs[0][0] and "[train_vae] done" in outs[1][0]
    one = json.loads((minatar_smoke_run / "results.json").read_text())
    two = json.loads((run_dir / "results.json").read_text())
    assert two["device"]["processes"] == 2 and two["device"]["count"] == 2
    assert one["device"]["processes"] == 1
    # The one-process numbers, to float32 summation order.
    for stage in ("vae_final_loss", "mdn_rnn_final_loss"):
        for name, value in one[stage].items():
            assert two[stage][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (stage, name)
    assert two["controller"]["best_fitness"] == pytest.approx(
        one["controller"]["best_fitness"], rel=1e-4, abs=1e-5
    )
    assert two["evaluation"]["returns"] == one["evaluation"]["returns"]
    assert two["stages"]["collect"]["episodes"] == one["stages"]["collect"]["episodes"]
    # Written once: one line per step in V's metrics, one run.log.
    for name in ("train_vae", "train_mdn_rnn", "train_controller"):
        lines = (run_dir / "metrics" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == len(
            (minatar_smoke_run / "metrics" / f"{name}.jsonl").read_text().splitlines()
        )
    assert (run_dir / "report" / "report.md").is_file()


def test_one_process_is_the_default_and_changes_nothing(monkeypatch):
    for name in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
    ):
        monkeypatch.delenv(name, raising=False)
    assert distributed.initialize() is False
    assert distributed.initialize(num_processes=1) is False
    assert distributed.is_writer() and distributed.process_count() == 1
    assert distributed.share(list(range(5))) == [0, 1, 2, 3, 4]
    distributed.barrier("nothing to wait for")


@pytest.mark.parametrize(
    "kwargs, env, message",
    [
        (dict(coordinator="10.0.0.1:1234"), {}, "need all three of --coordinator"),
        (dict(num_processes=2, process_id=0), {}, "need all three"),
        (dict(coordinator="10.0.0.1", num_processes=2, process_id=0), {}, "expected HOST:PORT"),
        (dict(coordinator="h:1", num_processes=0, process_id=0), {}, "num_processes=0"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), {}, r"process_id=2: .*\[0, 2\)"),
        ({}, {"JAX_NUM_PROCESSES": "two"}, "JAX_NUM_PROCESSES='two' is not an integer"),
        ({}, {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "2"}, "process_id=None"),
    ],
)
def test_bad_settings_are_one_line(monkeypatch, kwargs, env, message):
    for name in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.initialize(**kwargs)
