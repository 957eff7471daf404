"""How well M fits the real episodes, teacher-forced, as used in experiments/README.md.

    python experiments/m_diagnostics.py RUN_DIR [RUN_DIR ...] [--episodes N] [--out FILE.json]

Each run's M reads every one of the last N encoded episodes from t = 0 (a zero state, as the
dream starts), with the real actions, and we report per run:
- z NLL per latent dimension, split by episode phase (steps 0-9, 10-99, 100+): M trained on
  random windows rarely sees an episode's first steps from a zero state; the dream always does;
- the done head: the share of real episode ends where its logit is > 0 (recall), and of other
  steps where it is (false alarms);
- the reward head: mean absolute error, overall and on the steps whose reward is <= -10
  (CarRacing's -100 for leaving the playfield), and across episodes the correlation of the
  return M predicts (teacher-forced) with the real one: C is ranked by the first, scored by the
  second.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from wm_jax.data import EpisodeStore, load_encoded
from wm_jax.models import mdn_rnn
from wm_jax.pipeline import config as cfg
from wm_jax.pipeline import run_folder, run_models
from wm_jax.train import mdn_rnn_train

PHASES = ((0, 10), (10, 100), (100, None))


def _mean_std(values: list[float]) -> list[float]:
    return [float(np.mean(values)), float(np.std(values))]


def diagnose(run_dir: Path, episodes: int) -> dict:
    config = cfg.from_dict(json.loads((run_dir / "config.json").read_text()))
    paths = run_folder.RunPaths(run_dir)
    params = run_models.load_mdn_rnn(config, paths)
    m_config = config.mdn_rnn

    @jax.jit
    def teacher_forced(mu, actions):
        z = jnp.asarray(mu)[None]  # (1, T, Z) posterior means: no sampling noise in the measure
        restarts = jnp.zeros(z.shape[:2], bool).at[:, 0].set(True)
        # Step t reads z(t), a(t) and predicts z(t + 1), the done and the reward of action t.
        output = mdn_rnn.forward_sequence(m_config, params, z, actions[None], restarts)
        head = jax.tree.map(lambda x: x[:, :-1], output)  # z(T) is not stored: no last target
        nll = -mdn_rnn_train._mixture_log_prob(head, z[:, 1:]).mean(-1)  # (1, T-1)
        return nll[0], output.done_logit[0], output.reward[0]

    nll_by_phase = {f"{a}-{b or 'end'}": [] for a, b in PHASES}
    done_hits, false_alarms, others, ends, reward_errors, penalty_errors = 0, 0, 0, 0, [], []
    predicted_returns, real_returns = [], []
    for episode in load_encoded(EpisodeStore(paths.encoded))[-episodes:]:
        if len(episode.actions) < 2:
            continue
        outputs = teacher_forced(episode.mu, episode.actions)
        nll, done_logit, reward = (np.asarray(x) for x in outputs)
        steps = np.arange(len(nll))
        for (a, b), name in zip(PHASES, nll_by_phase, strict=True):
            chosen = (steps >= a) & (steps < (b if b is not None else len(nll) + 1))
            nll_by_phase[name] += nll[chosen].tolist()
        dones = np.asarray(episode.dones, bool)
        fired = done_logit > 0
        ends += int(dones.sum())
        done_hits += int((fired & dones).sum())
        others += int((~dones).sum())
        false_alarms += int((fired & ~dones).sum())
        rewards = np.asarray(episode.rewards)
        errors = np.abs(reward - rewards)
        reward_errors += errors.tolist()
        penalty_errors += errors[rewards <= -10].tolist()
        predicted_returns.append(float(reward.sum()))
        real_returns.append(float(rewards.sum()))
    result = {
        "run": str(run_dir),
        "windows": config.mdn_train.windows,
        "m_steps": config.mdn_train.num_steps,
        "z_nll": {name: float(np.mean(v)) if v else None for name, v in nll_by_phase.items()},
    }
    if m_config.predict_done:
        result["done"] = {
            "episode_ends": ends,
            "recall": done_hits / ends if ends else None,
            "false_alarm_rate": false_alarms / max(others, 1),
        }
    if m_config.predict_reward:
        result["reward"] = {
            "mae": float(np.mean(reward_errors)),
            "penalty_steps": len(penalty_errors),
            "penalty_mae": float(np.mean(penalty_errors)) if penalty_errors else None,
            "return_correlation": float(np.corrcoef(predicted_returns, real_returns)[0, 1]),
            "predicted_return": _mean_std(predicted_returns),
            "real_return": _mean_std(real_returns),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--episodes", type=int, default=50)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = [diagnose(run, args.episodes) for run in args.runs]
    text = json.dumps(rows, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
