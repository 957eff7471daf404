"""The host loop around CMA-ES generations: its metrics log on resume."""

import json

from wm_jax.es import evolve_loop
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
