"""End-to-end `smoke` runs of the experiment runner in the real games, resume, and bad input."""

import json
import shutil

import pytest

from wm_jax.core import checkpoint
from wm_jax.pipeline import config, experiment

RESULT_KEYS = {
    "experiment",
    "scale",
    "seed",
    "versions",
    "device",
    "wall_time_s",
    "vae_final_loss",
    "mdn_rnn_final_loss",
    "controller",
    "evaluation",
}
REPORT_FILES = {
    "report.md",
    "reconstructions.png",
    "losses.png",
    "fitness.png",
    "real_vae_dream.gif",
    "evaluation.png",
}


def _check_run_folder(run_dir, experiment_name, episodes):
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results) >= RESULT_KEYS
    assert results["experiment"] == experiment_name and results["scale"] == "smoke"
    assert set(results["wall_time_s"]) == set(config.STAGES)
    peaks = results["peak_memory_mb"]
    assert set(peaks) == set(config.STAGES)
    assert all(peak["process"] > 100 for peak in peaks.values())  # jax alone is more than that
    assert results["peak_memory_mb_overall"] >= max(p["process"] for p in peaks.values())
    evaluation = results["evaluation"]
    assert evaluation["episodes"] == episodes == len(evaluation["returns"])
    assert evaluation["seeds"][0] >= 10_000_000  # never a training seed
    assert results["controller"]["generations"] == 2
    assert {"loss", "recon", "kl"} <= set(results["vae_final_loss"])
    assert json.loads((run_dir / "config.json").read_text())["experiment"] == experiment_name
    assert {p.name for p in (run_dir / "report").iterdir()} >= REPORT_FILES
    report = (run_dir / "report" / "report.md").read_text()
    for name in REPORT_FILES - {"report.md"}:
        assert f"({name})" in report
    for stage in ("train_vae", "train_mdn_rnn", "train_controller"):
        assert (run_dir / "metrics" / f"{stage}.jsonl").stat().st_size > 0
    return results


@pytest.fixture
def doom_run(doom_smoke_run):
    return doom_smoke_run


def test_doom_smoke_end_to_end(doom_run):
    results = _check_run_folder(doom_run, "doom_take_cover", episodes=2)
    assert results["controller"]["trained_in"] == "dream"
    assert "| 1.15 |" in (doom_run / "report" / "report.md").read_text()  # the paper's table
    assert results["evaluation"]["dream"]["temperature"] == 1.15


def test_resume_continues_an_interrupted_controller_stage(doom_run, capsys):
    # A kill during train_controller: its ES checkpoint of generation 1 survives, the stage
    # never recorded itself complete and the final controller was not written yet.
    (doom_run / "stages" / "train_controller.json").unlink()
    shutil.rmtree(doom_run / "checkpoints" / "controller_final")
    es_dir = doom_run / "checkpoints" / "controller"
    for step in checkpoint.all_steps(es_dir)[1:]:
        shutil.rmtree(es_dir / f"step_{step:09d}")
    assert checkpoint.latest_step(es_dir) == 1
    experiment.run("doom_take_cover", "smoke", doom_run, progress=False)
    out = capsys.readouterr().out
    for stage in ("collect", "train_vae", "encode", "train_mdn_rnn"):
        assert f"[{stage}] complete, skipped" in out
    assert "[train_controller] running" in out
    for stage in ("evaluate", "report"):  # built from the old C: they rerun
        assert f"[{stage}] stale" in out
    stage_record = json.loads((doom_run / "stages" / "train_controller.json").read_text())
    assert stage_record["seconds"] > 0
    rows = [json.loads(line) for line in (doom_run / "metrics" / "train_controller.jsonl").open()]
    assert rows[-1]["generation"] == 2
    assert checkpoint.latest_step(doom_run / "checkpoints" / "controller_final") == 2


def test_resume_with_other_settings_is_refused(doom_run):
    with pytest.raises(config.ConfigError, match="controller.temperature: 1.15 -> 1.3"):
        experiment.run(
            "doom_take_cover",
            "smoke",
            doom_run,
            overrides=["controller.temperature=1.3"],
            progress=False,
        )


def test_bad_set_is_refused_before_any_work(tmp_path, capsys):
    code = experiment.main(
        [
            "doom_take_cover",
            "--scale",
            "smoke",
            "--run-dir",
            str(tmp_path / "r"),
            "--set",
            "controller.train_in=moon",
        ]
    )
    assert code == 2
    assert "controller.train_in='moon'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_help_lists_experiments_scales_stages_and_settings(capsys):
    with pytest.raises(SystemExit):
        experiment.main(["--help"])
    text = capsys.readouterr().out
    for word in (*config.EXPERIMENTS, *config.SCALES, *config.STAGES, "mdn_train:", "seq_len"):
        assert word in text


def test_car_racing_smoke_end_to_end(tmp_path, capsys):
    from wm_jax.data.encode import params_fingerprint
    from wm_jax.pipeline import agents

    run_dir = tmp_path / "car"
    publish = ["evaluate.publication_episodes=2"]
    experiment.run("car_racing", "smoke", run_dir, overrides=publish, progress=False)
    results = _check_run_folder(run_dir, "car_racing", episodes=2)
    assert results["controller"]["trained_in"] == "dream"  # the default: C only in the dream
    assert "906 ± 21" in (run_dir / "report" / "report.md").read_text()
    # The chosen C then plays publication seeds, disjoint from the selection seeds above.
    published = results["publication"]
    assert published["episodes"] == 2 and published["first_seed"] == 20_000_000
    assert published["agent"] == str(run_dir) and published["iteration"] == 0
    record = json.loads((run_dir / "publication" / "seeds-20000000-2.json").read_text())
    assert record["seed_set"] == "publication" and record["mean"] == published["mean"]
    assert min(record["returns"]) > -1000 and len(record["returns"]) == 2
    # Its episodes are kept under C's digest: a rerun resumes them, another C never does.
    digest = params_fingerprint(agents.load(run_dir).c_flat)[:12]
    assert (run_dir / "publication" / f"seeds-20000000-2.{digest}.jsonl").is_file()
    capsys.readouterr()
    again = experiment.run("car_racing", "smoke", run_dir, overrides=publish, progress=False)
    assert again["publication"]["mean"] == published["mean"]
    assert "[evaluate] complete, skipped" in capsys.readouterr().out


def test_temperature_sweep_reuses_one_m(doom_run):
    from wm_jax.pipeline import sweep

    rows = sweep.sweep(doom_run, temperatures=(0.5,), progress=False)
    assert rows[0]["temperature"] == 0.5 and rows[0]["real"]["episodes"] == 2
    tau_run = doom_run / "sweep" / "tau_0.50"
    assert (tau_run / "checkpoints" / "mdn_rnn").resolve() == (
        doom_run / "checkpoints" / "mdn_rnn"
    ).resolve()
    assert json.loads((tau_run / "config.json").read_text())["controller"]["temperature"] == 0.5
    table = (doom_run / "sweep" / "temperature_table.md").read_text()
    assert "| 0.50 | 2 |" in table and "2060 ± 277" in table
    # The run's own τ is its own row, not retrained; the table keeps the earlier call's row.
    rows = sweep.sweep(doom_run, temperatures=(1.15,), progress=False)
    assert [row["source"] for row in rows] == ["."]
    assert not (doom_run / "sweep" / "tau_1.15").exists()
    own = json.loads((doom_run / "results.json").read_text())["evaluation"]
    assert rows[0]["real"]["mean"] == own["mean"]
    table = (doom_run / "sweep" / "temperature_table.md").read_text()
    assert "| 0.50 | 2 |" in table and "| 1.15 | 2 |" in table and "| sweep/tau_0.50 |" in table


def test_sweep_of_a_missing_run_is_refused_clearly(tmp_path, capsys):
    from wm_jax.pipeline import sweep

    with pytest.raises(SystemExit) as exit_:
        sweep.main([str(tmp_path / "nothing")])
    assert exit_.value.code == 2
    assert "nothing" in capsys.readouterr().err


def test_interrupted_stage_keeps_its_wall_time(tmp_path, monkeypatch):
    from wm_jax.pipeline import stages

    def interrupted(config, paths, progress=True):
        raise KeyboardInterrupt

    monkeypatch.setattr(stages, "collect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        experiment.run("doom_take_cover", "smoke", tmp_path / "r", progress=False)
    partial = json.loads((tmp_path / "r" / "stages" / "collect.partial.json").read_text())
    assert partial["seconds"] >= 0
    assert not (tmp_path / "r" / "stages" / "collect.json").exists()


def test_minatar_smoke_end_to_end(minatar_smoke_run):
    # The JAX-native game: M predicts reward and done, so C is trained in the dream.
    results = _check_run_folder(minatar_smoke_run, "minatar_breakout", episodes=2)
    assert results["controller"]["trained_in"] == "dream"


def test_an_agent_is_re_measured_on_publication_seeds(doom_run, capsys):
    from wm_jax.pipeline import evaluate

    assert evaluate.main([str(doom_run), "--episodes", "2", "--workers", "1", "--no-progress"]) == 0
    record = json.loads((doom_run / "evaluation" / "seeds-20000000-2.json").read_text())
    assert record["first_seed"] == 20_000_000 and record["seed_set"] == "publication"
    assert record["episodes"] == 2 and len(record["returns"]) == 2
    assert "over 2 episodes" in capsys.readouterr().out
    assert evaluate.main([str(doom_run / "nothing")]) == 2
    assert "no agent here" in capsys.readouterr().err
