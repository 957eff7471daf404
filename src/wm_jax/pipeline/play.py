"""Watch a trained agent: `python -m wm_jax.play GAME` plays a few real episodes and a GIF.

The agent is a shipped agent folder (`agents/GAME/` of the repository by default, see
`wm_jax.pipeline.agents`) or a finished run folder. Episodes are played one after another in this
process (`wm_jax.pipeline.evaluate.play_in_process`) by the per-frame V → C → M step of evaluation
(`wm_jax.envs.controller_policy.ControllerPolicy`), on the publication seeds by default.

The GIF shows the first episode as the report does (`wm_jax.pipeline.report.side_by_side`): the real
game | V's reconstruction | M's prediction of that frame, made a step earlier from the previous
frame's z and the action C took (sampled at the run's temperature; the first frame has none).

The returns printed here are for watching: z is sampled with other keys than in
`python -m wm_jax.evaluate`, which re-measures a published score over 100 episodes.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from wm_jax.pipeline import evaluate as evaluation

EPISODES = 3


def default_agent_dir(game: str) -> Path:
    """`agents/GAME/` at the root of the repository this package lives in."""
    return Path(__file__).resolve().parents[2] / "agents" / game


class _Recorder:
    """One episode's policy, counting frames on the progress bar and keeping the first few."""

    def __init__(self, policy: Any, bar: Any, keep: int):
        self.policy, self.bar, self.keep = policy, bar, keep
        self.frames: list[np.ndarray] = []
        self.actions: list[np.ndarray] = []

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        action = self.policy(frame)
        if len(self.frames) < self.keep:
            self.frames.append(np.asarray(frame, np.uint8))
            self.actions.append(np.asarray(action, np.float32))
        self.bar.update()
        return action


def predictions(agent: Any, frames: np.ndarray, actions: np.ndarray) -> tuple[Any, Any]:
    """V's reconstructions and M's predictions of the same frames, each (T, 64, 64, 3) in [0, 1].

    M runs teacher-forced on V's μ and the actions played; its prediction of frame t + 1 is
    sampled from its mixture after step t. Frame 0 has no prediction (black).
    """
    import jax
    import jax.numpy as jnp

    from wm_jax.models import mdn_rnn, vae

    m_config, tau = agent.config.mdn_rnn, agent.config.controller.temperature
    mu, _ = vae.encode(agent.vae_params, vae.frames_to_float(frames))  # (T, Z)
    restarts = (jnp.arange(len(frames)) == 0)[None]  # (1, T)
    output = mdn_rnn.forward_sequence(m_config, agent.m_params, mu[None], actions[None], restarts)
    output = jax.tree.map(lambda x: x[0, :-1], output)  # predicts frames 1 .. T - 1
    z_next = mdn_rnn.sample_next(jax.random.key(agent.config.seed), output, tau)
    predicted = vae.decode(agent.vae_params, z_next)
    black = jnp.zeros((1, *predicted.shape[1:]), predicted.dtype)
    return vae.decode(agent.vae_params, mu), jnp.concatenate([black, predicted])


def play(
    agent: Any,
    seeds: Any,
    gif_path: str | Path | None = None,
    max_frames: int | None = None,
    progress: bool = True,
) -> evaluation.EvaluationResult:
    """Play one real episode per seed, printing each return; the first one becomes a GIF.

    Args:
      agent: a `wm_jax.pipeline.agents.Agent`.
      max_frames: each episode's cap (default: the game's).
    """
    from tqdm.auto import tqdm

    from wm_jax.envs import game_spec
    from wm_jax.pipeline import report

    spec = game_spec(agent.config.game)
    factory = agent.policy()
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    returns, lengths, first = [], [], None
    for i, seed in enumerate(seeds):
        bar = tqdm(
            total=max_frames or spec.max_steps,
            desc=f"episode {i + 1}/{len(seeds)} (seed {seed})",
            unit="frame",
            leave=False,
            disable=not progress,
        )
        recorder = _Recorder(None, bar, keep=report.GIF_FRAMES if i == 0 else 0)

        def policy_for(episode_seed: int, recorder: _Recorder = recorder) -> _Recorder:
            recorder.policy = factory(spec, episode_seed)
            return recorder

        try:
            result = evaluation.play_in_process(spec.name, policy_for, seed[None], max_frames)
        finally:
            bar.close()
        returns.append(float(result.returns[0]))
        lengths.append(int(result.lengths[0]))
        first = recorder if i == 0 else first
        print(f"episode {i + 1}: seed {seed}, return {returns[-1]:.1f} in {lengths[-1]} frames")
    print(f"mean return {np.mean(returns):.1f} ± {np.std(returns):.1f} over {len(seeds)} episodes")
    if gif_path is not None and first.frames:
        frames, actions = np.stack(first.frames), np.stack(first.actions)
        panels = report.side_by_side(frames, *predictions(agent, frames, actions))
        report.write_gif(gif_path, panels, report.GIF_FPS)
        print(f"real | V(real) | M's prediction from the frame before: {gif_path}")
    mean, std = float(np.mean(returns)), float(np.std(returns))
    return evaluation.EvaluationResult(mean, std, np.array(returns), np.array(lengths), seeds)


def main(argv: list[str] | None = None) -> int:
    """`python -m wm_jax.play GAME`: watch a shipped agent play."""
    from wm_jax.core import runtime
    from wm_jax.envs import games
    from wm_jax.pipeline.cli import exit_code

    runtime.tune_malloc()
    parser = argparse.ArgumentParser(
        prog="python -m wm_jax.play",
        description="Watch a trained agent play a few real episodes; writes a GIF of the game "
        "beside V's reconstruction and M's prediction of each frame.",
    )
    parser.add_argument("game", help=f"one of: {', '.join(games())}")
    parser.add_argument(
        "--agent",
        type=Path,
        default=None,
        help="an agent folder (default: agents/GAME/ of the repository) or a finished run folder",
    )
    parser.add_argument("--episodes", type=int, default=EPISODES)
    parser.add_argument(
        "--first-seed",
        type=int,
        default=evaluation.PUBLICATION_SEED_OFFSET,
        help="seeds S, S + 1, ...",
    )
    parser.add_argument("--out", type=Path, default=None, help="the GIF (default: ./GAME.gif)")
    parser.add_argument("--max-frames", type=int, default=None, help="cap each episode")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    def work() -> evaluation.EvaluationResult:
        from wm_jax.pipeline import agents
        from wm_jax.pipeline.config import ConfigError

        if args.game not in games():
            raise ConfigError(f"unknown game {args.game!r}; choose one of {', '.join(games())}")
        if args.episodes < 1 or (args.max_frames is not None and args.max_frames < 1):
            raise ConfigError("--episodes and --max-frames must be >= 1")
        path = args.agent or default_agent_dir(args.game)
        if not path.exists():
            raise agents.AgentError(
                f"{path}: no agent here; export one with python -m wm_jax.agents RUN_DIR {path}, "
                "or pass --agent AGENT_OR_RUN_DIR"
            )
        agent = agents.load(path)
        if agent.config.game != args.game:
            raise ConfigError(f"{path} plays {agent.config.game}, not {args.game}")
        seeds = args.first_seed + np.arange(args.episodes)
        out = args.out or Path(f"{args.game}.gif")
        return play(agent, seeds, out, args.max_frames, progress=not args.no_progress)

    return exit_code(work)


if __name__ == "__main__":
    import sys

    sys.exit(main())
