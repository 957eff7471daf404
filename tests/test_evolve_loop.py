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


def _stopping_run(tmp_path, scores, patience, num_generations):
    """run_loop with a fake generation (a counter) and fake evaluations of the mean."""
    c_config = controller.ControllerConfig(latent_dim=2, hidden_size=2, action_dim=1)
    config = evolve.EvolveConfig(
        population_size=4,
        generations_per_call=1,
        eval_every=1,
        checkpoint_every=1,
        stop_after_stale_evals=patience,
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


def test_stop_rule_needs_evaluations():
    with pytest.raises(ValueError, match="stop_after_stale_evals"):
        evolve.EvolveConfig(eval_every=0, stop_after_stale_evals=2)
