"""The host loop around CMA-ES generations: its metrics log on resume."""

import json

import jax
import numpy as np
import pytest

from wm_jax.es import evolve, evolve_loop
from wm_jax.models import controller
from wm_jax.train import training_loop


def _row(generation: int) -> dict:
    returns = {"best_return": 3.0, "mean_return": 2.0, "worst_return": 1.0}
    return {"generation": generation, **returns, "sigma": 0.1, "seconds_per_generation": 0.5}


def test_logger_resumes_on_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "train_controller.jsonl"
    training_loop.append_jsonl(path, [_row(g) for g in range(1, 6)])
    with open(path, "a") as f:
        f.write(json.dumps(_row(6))[:25])  # killed mid-write: no closing brace, no newline
    logger = evolve_loop._Logger(path, start=4, total=10, progress=False)  # checkpoint at 4
    kept = training_loop.read_jsonl(path, "generation")
    assert [row["generation"] for row in kept] == [1, 2, 3, 4]  # 5 is redone, 6 was cut
    logger.log([_row(5), _row(6)])
    logger.close()
    rows = [json.loads(line) for line in path.read_text().splitlines()]  # every line whole
    assert [row["generation"] for row in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0] == _row(1)


def test_logger_starts_a_new_log(tmp_path):
    path = tmp_path / "new" / "log.jsonl"
    logger = evolve_loop._Logger(path, start=0, total=3, progress=False)
    logger.log([_row(1)])
    logger.close()
    assert training_loop.read_jsonl(path, "generation") == [_row(1)]


def _stopping_run(tmp_path, scores, patience, num_generations, stop_at=None):
    """run_loop with a fake generation (a counter) and fake evaluations of the mean."""
    c_config = controller.ControllerConfig(latent_dim=2, hidden_size=2, action_dim=1)
    config = evolve.EvolveConfig(
        population_size=4,
        generations_per_call=1,
        eval_every=1,
        checkpoint_every=1,
        stop_after_stale_evals=patience,
        stop_at_return=stop_at,
    )
    state = evolve.init_state(jax.random.key(0), c_config, config)
    calls = []

    def advance(state):
        es_state = state.es_state.replace(generation_counter=state.es_state.generation_counter + 1)
        return state.replace(es_state=es_state), [_row(int(es_state.generation_counter))]

    def evaluate_mean(state):
        calls.append(state.generation)
        return np.array([scores[state.generation - 1]], np.float32)

    state = evolve_loop.run_loop(
        evolve_loop.restore_or(state, tmp_path / "ckpt"),
        advance,
        evaluate_mean,
        config,
        num_generations,
        tmp_path / "ckpt",
        {},
        tmp_path / "log.jsonl",
        False,
    )
    return state, calls


def test_stops_after_stale_evaluations_and_a_resume_stops_at_the_same_place(tmp_path):
    scores = [5.0, 4.0, 6.0, 6.0, 2.0, 9.0, 9.0, 9.0]  # new bests at 1, 3 and 6
    state, calls = _stopping_run(tmp_path / "a", scores, patience=2, num_generations=8)
    assert state.generation == 5 and calls == [1, 2, 3, 4, 5]  # 4 and 5 do not beat 6
    rows = training_loop.read_jsonl(tmp_path / "a" / "log.jsonl", "generation")
    assert "stopped" in rows[-1] and rows[-1]["generation"] == 5
    # Resumed from its last checkpoint, it stops at once instead of running on.
    again, calls = _stopping_run(tmp_path / "a", scores, patience=2, num_generations=8)
    assert again.generation == 5 and calls == []
    # Without the rule it runs every generation.
    state, _ = _stopping_run(tmp_path / "b", scores, patience=0, num_generations=8)
    assert state.generation == 8
    assert evolve_loop.stale_evaluations(rows) == 2


def test_stops_once_an_evaluation_reaches_the_ceiling_and_a_resume_stays_stopped(tmp_path):
    scores = [5.0, 20.0, 30.0, 99.0, 100.0, 100.0]  # the ceiling (say 100) reached at 4
    state, calls = _stopping_run(tmp_path / "a", scores, 0, num_generations=6, stop_at=98.0)
    assert state.generation == 4 and calls == [1, 2, 3, 4]
    rows = training_loop.read_jsonl(tmp_path / "a" / "log.jsonl", "generation")
    assert "stop_at_return=98.0" in rows[-1]["stopped"] and rows[-1]["generation"] == 4
    assert float(state.best_eval_return) == 99.0  # the mean that reached it is kept
    again, calls = _stopping_run(tmp_path / "a", scores, 0, num_generations=6, stop_at=98.0)
    assert again.generation == 4 and calls == []
    # Never reached: every generation runs.
    state, _ = _stopping_run(tmp_path / "b", scores, 0, num_generations=6, stop_at=101.0)
    assert state.generation == 6


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(stop_after_stale_evals=2), "stop_after_stale_evals"),
        (dict(stop_at_return=2058.0), "stop_at_return"),
    ],
)
def test_stop_rules_need_evaluations(kwargs, field):
    with pytest.raises(ValueError, match=field):
        evolve.EvolveConfig(eval_every=0, **kwargs)


def test_a_stop_rule_without_evaluations_is_one_line_from_the_command_line():
    from wm_jax.pipeline import config as cfg
    from wm_jax.pipeline.presets import preset

    base = preset("doom_take_cover", "small")
    # Doom's small preset sets both rules: the stale-evaluation one is checked first, and with
    # it off the error names stop_at_return.
    with pytest.raises(cfg.ConfigError, match="stop_after_stale_evals=1 must be >= 0 and needs"):
        cfg.apply_overrides(base, ["evolve.eval_every=0"])
    with pytest.raises(cfg.ConfigError, match="stop_at_return=2058.0 needs eval_every"):
        cfg.apply_overrides(base, ["evolve.stop_after_stale_evals=0", "evolve.eval_every=0"])
    with pytest.raises(cfg.ConfigError, match="finite"):
        cfg.apply_overrides(base, ["evolve.stop_at_return=nan"])
    assert cfg.apply_overrides(base, ["evolve.stop_at_return=none"]).evolve.stop_at_return is None
