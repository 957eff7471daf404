"""CMA-ES in a (fake) real game: it converges, skips lost episodes, keeps training seeds away
from evaluation seeds, and resumes exactly."""

import jax
import numpy as np

from wm_jax.es import evolve, evolve_real
from wm_jax.models import controller


def test_train_in_real_with_a_fake_game(tmp_path):
    """The host loop of real-game CMA-ES, with a quadratic 'game': return = -|x - 0.3|^2."""
    c_config = controller.ControllerConfig(
        kind="linear_z", inputs=("z",), latent_dim=2, action_dim=1
    )
    config = evolve.EvolveConfig(
        population_size=8,
        rollouts_per_member=3,
        sigma_init=0.2,
        eval_every=4,
        eval_rollouts=5,
        generations_per_call=1,
        checkpoint_every=8,
    )
    calls = []

    def evaluate_fn(key, flat_params, seeds):
        calls.append(np.asarray(seeds))
        noise = 0.01 * np.sin(np.asarray(seeds, np.float64))  # deterministic per seed
        returns = -np.sum((np.asarray(flat_params) - 0.3) ** 2, axis=1, keepdims=True) + noise
        returns = returns.astype(np.float32)
        if flat_params.shape[0] > 1:
            returns[0, 0] = np.nan  # a lost episode must not break the update
        return returns

    def run(num_generations, directory):
        return evolve_real.train_in_real(
            jax.random.key(5),
            evaluate_fn,
            c_config,
            config,
            num_generations,
            checkpoint_dir=directory,
            log_path=directory / "log.jsonl",
            progress=False,
        )

    straight = run(24, tmp_path / "a")
    assert np.abs(np.asarray(straight.mean) - 0.3).max() < 0.1
    assert calls[0].shape == (8, 3) and calls[0].max() < evolve.SELECTION_SEED_OFFSET
    assert calls[4].shape == (1, 5) and calls[4].min() == evolve.SELECTION_SEED_OFFSET
    run(8, tmp_path / "b")
    resumed = run(24, tmp_path / "b")
    jax.tree.map(np.testing.assert_array_equal, straight, resumed)


def test_train_seeds_are_distinct_and_below_the_evaluation_seeds():
    seeds = evolve_real.train_seeds(3, 4, 2)
    assert seeds.shape == (4, 2) and len(np.unique(seeds)) == 8 and seeds.min() == 24
    last = evolve.SELECTION_SEED_OFFSET // 8 - 1
    assert evolve_real.train_seeds(last, 4, 2).max() == evolve.SELECTION_SEED_OFFSET - 1
    with np.testing.assert_raises_regex(ValueError, "evaluation seeds"):
        evolve_real.train_seeds(last + 1, 4, 2)
