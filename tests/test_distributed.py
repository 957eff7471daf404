"""Several processes as one program (`wm_jax.core.distributed`): the experiment command on two
local processes talking over 127.0.0.1 (JAX's CPU collectives, gloo), 2 devices each, gives the
one-process results, writes each checkpoint and log once, and collects disjoint shares of the
episodes into one store, in the first collection and in a §5 round; bad settings are one line."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

from wm_jax.core import distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(device_count: int) -> dict:
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={device_count}")
    env["JAX_PLATFORMS"] = "cpu"
    return env


# One §5 round (its new episodes collected by C) and the publication step after the first C.
_ROUND = ["iterate.iterations=1", "iterate.episodes=4", "evaluate.publication_episodes=2"]


def _two_processes(run_dir, settings=()) -> list[tuple[str, str]]:
    """The experiment command on 2 local processes of 2 devices each; their (stdout, stderr)."""
    coordinator = f"127.0.0.1:{_free_port()}"
    command = [sys.executable, "-m", "wm_jax.experiment", "minatar_breakout", "--scale"]
    command += ["smoke", "--run-dir", str(run_dir), "--no-progress"]
    command += [arg for setting in settings for arg in ("--set", setting)] + ["--coordinator"]
    procs = [
        subprocess.Popen(
            [*command, coordinator, "--num-processes", "2", "--process-id", str(i)],
            env=_env(2),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=900) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
    return outs


@pytest.mark.slow
def test_two_processes_run_the_experiment_command_as_one(minatar_smoke_run, tmp_path):
    # `python -m wm_jax.experiment ... --coordinator --num-processes --process-id`, 2 devices
    # each: V's and M's batches and C's population split over the 4 devices of both processes,
    # the episodes collected and encoded in two shares, every later stage restoring V and M
    # from checkpoints process 0 alone wrote, the run folder written by process 0 alone; then
    # a §5 round (C's episodes collected in two shares, M and C over the 4 devices) and the
    # publication step (process 0 plays, the other waits).
    from wm_jax.pipeline import experiment

    run_dir = tmp_path / "run"
    outs = _two_processes(run_dir)
    assert "(2 processes)" in outs[0][0] and "[train_vae] done" in outs[1][0]
    one = json.loads((minatar_smoke_run / "results.json").read_text())
    two = json.loads((run_dir / "results.json").read_text())
    assert two["device"]["processes"] == 2 and two["device"]["count"] == 4
    assert one["device"]["processes"] == 1
    # The one-process, one-device numbers, to float32 summation order.
    for stage in ("vae_final_loss", "mdn_rnn_final_loss"):
        for name, value in one[stage].items():
            assert two[stage][name] == pytest.approx(value, rel=1e-4, abs=1e-5), (stage, name)
    assert two["controller"]["best_fitness"] == pytest.approx(
        one["controller"]["best_fitness"], rel=1e-4, abs=1e-5
    )
    assert two["evaluation"]["returns"] == one["evaluation"]["returns"]
    assert two["stages"]["collect"]["episodes"] == one["stages"]["collect"]["episodes"]
    # Process 0 encoded its half (the other process the rest); the store holds them all.
    encoded = one["stages"]["encode"]["encoded"]
    assert two["stages"]["encode"]["encoded"] == (encoded + 1) // 2
    assert len(list((run_dir / "data" / "encoded").glob("episode_*.npz"))) == encoded
    # Written once: one line per step in V's metrics, one run.log.
    for name in ("train_vae", "train_mdn_rnn", "train_controller"):
        lines = (run_dir / "metrics" / f"{name}.jsonl").read_text().splitlines()
        assert len(lines) == len(
            (minatar_smoke_run / "metrics" / f"{name}.jsonl").read_text().splitlines()
        )
    assert (run_dir / "report" / "report.md").is_file()
    # The same command with a round and the publication resumes the finished run; one process
    # continues a copy of it the same way (the same parent: C's actions are discrete, so a C
    # equal to float32 rounding could still play other episodes).
    reference = tmp_path / "one"
    shutil.copytree(run_dir, reference, symlinks=True)
    outs = _two_processes(run_dir, _ROUND)
    assert "[train_vae] complete, skipped" in outs[0][0]
    experiment.run("minatar_breakout", "smoke", reference, overrides=_ROUND, progress=False)
    one, two = (json.loads((d / "results.json").read_text()) for d in (reference, run_dir))
    round_one, round_two = (d / "iterations" / "iter_1" for d in (reference, run_dir))
    collect_one, collect_two = (
        json.loads((d / "stages" / "collect.json").read_text())["summary"]
        for d in (round_one, round_two)
    )
    for key in ("episodes", "frames", "new_episodes", "new_frames", "linked_episodes"):
        assert collect_two[key] == collect_one[key], key
    assert two["iterations"][1]["m_final_loss"] == pytest.approx(
        one["iterations"][1]["m_final_loss"], rel=1e-4, abs=1e-5
    )
    assert two["iterations"][1]["real"] == one["iterations"][1]["real"]
    assert two["publication"]["mean"] == one["publication"]["mean"]
    assert two["publication"]["episodes"] == 2
    lines = (round_two / "metrics" / "train_controller.jsonl").read_text().splitlines()
    assert len(lines) == len(
        (round_one / "metrics" / "train_controller.jsonl").read_text().splitlines()
    )


@pytest.fixture
def no_jax_env(monkeypatch):
    """None of the three JAX_* variables set (whatever the shell running the tests has)."""
    for name in (
        distributed.ENV_COORDINATOR,
        distributed.ENV_NUM_PROCESSES,
        distributed.ENV_PROCESS_ID,
    ):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_one_process_is_the_default_and_changes_nothing(no_jax_env):
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
def test_bad_settings_are_one_line(no_jax_env, kwargs, env, message):
    for name, value in env.items():
        no_jax_env.setenv(name, value)
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.initialize(**kwargs)
