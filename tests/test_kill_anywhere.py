"""A smoke pipeline interrupted at many moments (mid-stage, mid-checkpoint-write, mid-
evaluation, and one real SIGKILL mid-V), resumed after each, ends with the same numbers as a run
never interrupted."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from wm_jax.core import checkpoint
from wm_jax.pipeline import evaluate, experiment, run_folder

pytestmark = pytest.mark.slow
EXPERIMENT = "minatar_breakout"


def _numbers(run_dir):
    """What a run computed (no wall times, no paths)."""
    results = json.loads((run_dir / "results.json").read_text())
    stages = results["stages"]
    return {
        "collect": {k: stages["collect"][k] for k in ("episodes", "frames")},
        "vae": results["vae_final_loss"],
        "mdn_rnn": results["mdn_rnn_final_loss"],
        "controller": {k: v for k, v in results["controller"].items() if k != "seconds"},
        "returns": results["evaluation"]["returns"],
        "dream": results["evaluation"].get("dream"),
    }


@pytest.fixture(scope="module")
def uninterrupted(minatar_smoke_run):
    return _numbers(minatar_smoke_run)


class _Interrupt:
    """Raises KeyboardInterrupt at the `at`-th call of `fn` that `match`es (after the call
    when `after`), once."""

    def __init__(self, fn, at, match=lambda *a, **k: True, after=True):
        self.fn, self.at, self.match, self.after, self.count = fn, at, match, after, 0

    def __call__(self, *args, **kwargs):
        hit = self.match(*args, **kwargs)
        if hit:
            self.count += 1
        if hit and self.count == self.at and not self.after:
            raise KeyboardInterrupt
        result = self.fn(*args, **kwargs)
        if hit and self.count == self.at and self.after:
            raise KeyboardInterrupt
        return result


def _in(folder):
    return lambda directory, *a, **k: os.sep + folder in str(directory)


def _sigkill_during_v(run_dir):
    """Start the runner in a child process and SIGKILL it once V has written a checkpoint."""
    script = textwrap.dedent(
        f"""
        import sys
        from wm_jax.pipeline import experiment
        sys.exit(experiment.main(["{EXPERIMENT}", "--scale", "smoke", "--run-dir",
                                  "{run_dir}", "--no-progress"]))
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    for line in child.stdout:
        if "[train_vae] running" in line:
            break
    deadline = time.time() + 120  # kill once V has written a checkpoint, mid-stage
    v_dir = run_dir / "checkpoints" / "vae"
    while checkpoint.latest_step(v_dir) is None and time.time() < deadline:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    assert checkpoint.latest_step(v_dir) is not None
    assert not run_folder.record_path(run_dir, "train_vae").exists()


def test_killed_and_interrupted_anywhere_then_resumed_gives_the_same_numbers(
    tmp_path, monkeypatch, uninterrupted
):
    # One folder, killed or interrupted at every moment below in turn (each resume picks up
    # where the last attempt stopped), then one plain run: the numbers of a run never stopped.
    run_dir = tmp_path / "run"
    _sigkill_during_v(run_dir)  # a real SIGKILL mid-V, no handler runs
    save, write_json = checkpoint.save, checkpoint.atomic_write_json
    moments = [
        # V (resumed after the kill): just after its next checkpoint (the steps after it are
        # lost and redone).
        ("save", _Interrupt(save, 1, _in("vae"))),
        # M: inside its first checkpoint write, before meta.json marks it complete.
        ("write", _Interrupt(write_json, 1, lambda p, *a: "mdn_rnn" in str(p), after=False)),
        # M again: after its second checkpoint.
        ("save", _Interrupt(save, 2, _in("mdn_rnn"))),
        # C: after the first generation's ES checkpoint.
        ("save", _Interrupt(save, 1, _in("controller"))),
        # Evaluation: after the first real episode is recorded.
        ("episode", _Interrupt(evaluate.append_jsonl, 1)),
    ]
    for where, trap in moments:
        with monkeypatch.context() as patch:
            if where == "save":
                patch.setattr(checkpoint, "save", trap)
            elif where == "write":
                patch.setattr(checkpoint, "atomic_write_json", trap)
            else:
                patch.setattr(evaluate, "append_jsonl", trap)
            with pytest.raises(KeyboardInterrupt):
                experiment.run(EXPERIMENT, "smoke", run_dir, progress=False)
        assert trap.count >= trap.at, (where, trap.count)  # the moment was reached
    experiment.run(EXPERIMENT, "smoke", run_dir, progress=False)
    assert _numbers(run_dir) == uninterrupted
    for stage in experiment.cfg.STAGES:
        assert run_folder.is_current(run_dir, stage, experiment.UPSTREAM[stage])
        assert not run_folder.record_path(run_dir, stage, "started").exists()
