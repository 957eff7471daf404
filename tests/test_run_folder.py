"""The run folder's bookkeeping: the chain of stage records, the lock, the log, and the one-line
errors of the runner. The stages are replaced by fakes, so these tests take milliseconds."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wm_jax.core import checkpoint
from wm_jax.pipeline import config, experiment, report, run_folder, stages

EXPERIMENT = "minatar_breakout"


@pytest.fixture
def fake_stages(monkeypatch):
    """Every stage replaced by one that logs its call; `behaviour[stage]` can change it."""
    calls: list[str] = []
    behaviour = {}

    def fake(name):
        def stage(cfg, paths, progress=True):
            calls.append(name)
            if name in behaviour:
                behaviour[name](paths)
            return {"calls": calls.count(name)}

        return stage

    for name in config.STAGES[:-1]:
        monkeypatch.setattr(stages, name, fake(name))
    monkeypatch.setattr(report, "make_report", fake("report"))
    return calls, behaviour


def _run(run_dir, **kwargs):
    return experiment.run(EXPERIMENT, "smoke", run_dir, progress=False, **kwargs)


def test_a_complete_run_is_skipped_and_each_record_names_its_inputs(tmp_path, fake_stages):
    calls, _ = fake_stages
    _run(tmp_path / "r")
    assert calls == list(config.STAGES)
    records = {s: run_folder.read_record(tmp_path / "r", s) for s in config.STAGES}
    assert records["collect"]["inputs"] == {}
    assert records["encode"]["inputs"] == {
        "collect": records["collect"]["id"],
        "train_vae": records["train_vae"]["id"],
    }
    calls.clear()
    _run(tmp_path / "r")
    assert calls == []


def test_interrupted_stages_x_never_leaves_the_old_later_stages(tmp_path, fake_stages, capsys):
    # Issue 13, reproduction 1: `--stages train_vae`, Ctrl-C during V, then a plain rerun.
    calls, behaviour = fake_stages
    run_dir = tmp_path / "r"
    _run(run_dir)
    behaviour["train_vae"] = lambda paths: (_ for _ in ()).throw(KeyboardInterrupt)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        _run(run_dir, stages=["train_vae"])
    assert calls == ["train_vae"]
    for stage in config.STAGES[1:]:  # forgotten before V started
        assert run_folder.read_record(run_dir, stage) is None
    del behaviour["train_vae"]
    calls.clear()
    capsys.readouterr()
    results = _run(run_dir)
    assert calls == list(config.STAGES[1:])
    assert "[collect] complete, skipped" in capsys.readouterr().out
    assert set(results["wall_time_s"]) == set(config.STAGES)


def test_a_stage_built_from_another_version_of_its_inputs_is_stale(tmp_path, fake_stages):
    calls, _ = fake_stages
    run_dir = tmp_path / "r"
    _run(run_dir)
    # train_mdn_rnn recorded again (say, by a process that did not know the chain) with a
    # new id: every later stage was built from the old M and must rerun.
    record = run_folder.read_record(run_dir, "train_mdn_rnn")
    run_folder.write_record(run_dir, "train_mdn_rnn", record["summary"], 1.0, record["inputs"])
    calls.clear()
    _run(run_dir)
    assert calls == ["train_controller", "evaluate", "report"]


def test_partial_outputs_of_an_attempt_on_older_inputs_are_wiped(tmp_path, fake_stages):
    calls, behaviour = fake_stages
    run_dir = tmp_path / "r"
    leftover = stages.RunPaths(run_dir).checkpoints("mdn_rnn") / "step_000000007"

    def killed_mid_m(paths):
        leftover.mkdir(parents=True)
        raise KeyboardInterrupt

    behaviour["train_mdn_rnn"] = killed_mid_m
    with pytest.raises(KeyboardInterrupt):
        _run(run_dir)
    assert leftover.is_dir()
    # Encode is redone before M resumes: M's half-trained checkpoint belongs to old codes.
    record = run_folder.read_record(run_dir, "encode")
    run_folder.write_record(run_dir, "encode", record["summary"], 1.0, record["inputs"])
    seen = []
    behaviour["train_mdn_rnn"] = lambda paths: seen.append(leftover.exists())
    _run(run_dir)
    assert seen == [False]


def test_a_second_process_gets_one_line_naming_the_holder(tmp_path, fake_stages, capsys):
    run_dir = tmp_path / "r"
    with run_folder.RunLock(run_dir):
        code = experiment.main([EXPERIMENT, "--scale", "smoke", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: ") and f"pid {os.getpid()}" in err[0]
    assert str(run_dir) in err[0]
    # The lock of a process that died (the file stays; the kernel dropped its flock).
    (run_dir / ".lock").write_text("pid 999999 on elsewhere\n")
    assert experiment.main([EXPERIMENT, "--scale", "smoke", "--run-dir", str(run_dir)]) == 0


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_full_disk_is_one_error_line_and_the_traceback_goes_to_run_log(
    tmp_path, fake_stages, capsys, wrapped
):
    _, behaviour = fake_stages
    run_dir = tmp_path / "r"

    def disk_full(paths):
        err = OSError(errno.ENOSPC, "No space left on device", str(paths.checkpoints("vae")))
        if not wrapped:
            raise err
        raise RuntimeError("orbax: async write failed") from err  # as orbax/asyncio wrap it

    behaviour["train_vae"] = disk_full
    code = experiment.main([EXPERIMENT, "--scale", "smoke", "--run-dir", str(run_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "checkpoints/vae" in err[0] and "disk is full" in err[0]
    log = (run_dir / "run.log").read_text()
    assert "Traceback" in log and "No space left on device" in log
    assert "[collect] done" in log  # the console output is kept too
    assert json.loads(run_folder.record_path(run_dir, "train_vae", "partial").read_text())


def test_a_run_dir_that_is_a_file_is_one_error_line(tmp_path, capsys):
    path = tmp_path / "file"
    path.write_text("")
    code = experiment.main([EXPERIMENT, "--scale", "smoke", "--run-dir", str(path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ")
    assert str(path) in err[0] and "--run-dir" in err[0]


def test_a_missing_checkpoint_names_the_stage_that_rebuilds_it(tmp_path, fake_stages, capsys):
    _, behaviour = fake_stages
    run_dir = tmp_path / "r"
    _run(run_dir)

    def needs_controller(paths):
        checkpoint.restore(paths.checkpoints("controller_final"))

    behaviour["evaluate"] = needs_controller
    argv = [EXPERIMENT, "--scale", "smoke", "--run-dir", str(run_dir), "--stages", "evaluate"]
    assert experiment.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "controller_final" in err[0]
    assert "--stages train_controller" in err[0]


def test_interrupt_with_stages_says_how_to_resume(tmp_path, fake_stages, capsys):
    _, behaviour = fake_stages
    behaviour["train_vae"] = lambda paths: (_ for _ in ()).throw(KeyboardInterrupt)
    argv = [EXPERIMENT, "--scale", "smoke", "--run-dir", str(tmp_path / "r")]
    assert experiment.main(argv + ["--stages", "train_vae"]) == 130
    assert "without --stages" in capsys.readouterr().err
    assert experiment.main(argv) == 130
    assert "rerun the same command" in capsys.readouterr().err


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    run_dir = tmp_path / "r"
    script = textwrap.dedent(
        f"""
        import sys, time
        from wm_jax.pipeline import experiment
        from wm_jax.pipeline import stages
        def slow(cfg, paths, progress=True):
            print("collecting", flush=True)
            time.sleep(60)
        stages.collect = slow
        sys.exit(experiment.main(["{EXPERIMENT}", "--scale", "smoke", "--run-dir", "{run_dir}"]))
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in child.stdout:
        if "collecting" in line:
            break
    time.sleep(0.2)
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 143, err
    assert "interrupted" in err
    partial = json.loads(run_folder.record_path(run_dir, "collect", "partial").read_text())
    assert partial["seconds"] > 0
    assert "Terminated" in (Path(run_dir) / "run.log").read_text()


@pytest.mark.parametrize(
    "code, advice",
    [
        (errno.EACCES, "choose a --run-dir you can write"),
        (errno.EROFS, "read-only"),
        (errno.ENOTDIR, "not a folder"),
        (errno.ENOSPC, "disk is full"),
    ],
)
def test_os_errors_become_one_line_naming_the_path_and_what_to_do(code, advice):
    from wm_jax.pipeline import cli

    err = OSError(code, os.strerror(code), "/runs/r/checkpoints/vae")
    message = cli.user_error(RuntimeError("wrapped").with_traceback(None))
    assert message is None  # a bug keeps its traceback
    wrapped = RuntimeError("orbax failed")
    wrapped.__cause__ = err
    message = cli.user_error(wrapped)
    assert "/runs/r/checkpoints/vae" in message and advice in message and "\n" not in message
