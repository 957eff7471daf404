"""The trained agent as a collection policy: V → C → M, batched over the game pool.

The iterative training procedure (World Models §5) collects new real rollouts with the current
controller instead of a random policy. `ControllerPolicy` is a `PolicyFactory`
(`wm_jax.envs.base`) for `wm_jax.envs.collect.collect`, which plays it through
`play_batched`: every worker's frame goes through one jitted V → C → M step on the accelerator
(`wm_jax.envs.real_rollout`), exactly as in evaluation. Called per episode (`factory(spec,
seed)`), it is the same step with a batch of one (`python -m wm_jax.play`), and plays the same
episode: z ~ N(μ, σ²) from V, a = C([z, (c,) h]) on M's state before the step, then M consumes
[z, a] (Doom: and the restart flag). Episode randomness comes from the policy seed's key only.

Exploration: C's output plus Gaussian noise of standard deviation `noise`, clipped to [-1, 1].
The paper only says the controller should explore while collecting; noise on the action is the
simplest choice that keeps it close to the trained behaviour (Doom's thirds: σ = 0.1 changes the
chosen action only near the bin edges at ±1/3).
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from wm_jax.core import kernels
from wm_jax.models import controller, mdn_rnn

if TYPE_CHECKING:
    from wm_jax.envs.base import GameSpec, PlayedEpisode, Policy


class ControllerPolicy:
    """A picklable PolicyFactory: `factory(spec, seed) -> policy(frame) -> action (A,)`.

    Args:
      c_config: the controller's static description.
      flat_params: (D,) the controller's flat parameters.
      vae_params: V's parameters (any pytree; kept as numpy arrays).
      m_config, m_params: M, for controllers that read its state (None for V-only ones).
      noise: standard deviation of the Gaussian exploration noise added to C's output.
      sample_z: sample z from V's posterior (the authors' code does) instead of using μ.
      platform: the JAX platform each worker runs on ("cpu" by default: every collector worker
        is a process of its own, and N processes would each claim an accelerator's memory for
        a batch of one); None leaves JAX's default. Only set in child processes.
    """

    def __init__(
        self,
        c_config: controller.ControllerConfig,
        flat_params: Any,
        vae_params: Any,
        m_config: mdn_rnn.MDNRNNConfig | None = None,
        m_params: Any = None,
        *,
        noise: float = 0.0,
        sample_z: bool = True,
        platform: str | None = "cpu",
    ):
        if noise < 0:
            raise ValueError(f"noise must be >= 0, got {noise}")
        self.c_config = c_config
        self.flat_params = np.asarray(flat_params, np.float32).reshape(-1)
        if self.flat_params.shape != (controller.num_params(c_config),):
            raise ValueError(
                f"flat_params has {self.flat_params.shape}, expected "
                f"({controller.num_params(c_config)},) for {c_config}"
            )
        if c_config.uses_memory and (m_config is None or m_params is None):
            raise ValueError(f"controller inputs {c_config.inputs} need M: pass m_config, m_params")
        self.vae_params = _to_numpy(vae_params)
        self.m_config = m_config if c_config.uses_memory else None
        self.m_params = _to_numpy(m_params) if c_config.uses_memory else None
        self.noise = float(noise)
        self.sample_z = sample_z
        self.platform = platform
        self._device = None  # (step, vae_params, m_params) on the device, built on first use

    def __getstate__(self) -> dict[str, Any]:
        # Parameters travel as numpy arrays; the jitted step is rebuilt in the worker.
        return self.__dict__ | {"_device": None}

    def __repr__(self) -> str:  # the collector records it in the store's meta.json
        return (
            f"ControllerPolicy(kind={self.c_config.kind}, inputs={','.join(self.c_config.inputs)}, "
            f"params={self.flat_params.size}, noise={self.noise})"
        )

    def _runtime(self):
        if self._device is None:
            import jax

            if self.platform is not None and multiprocessing.parent_process() is not None:
                # A collector worker: nothing has touched JAX's backends here yet.
                jax.config.update("jax_platforms", self.platform)
            step = _policy_step(self.c_config, self.m_config, self.sample_z, self.noise)
            self._device = (step, jax.device_put(self.vae_params), jax.device_put(self.m_params))
        return self._device

    def __call__(self, spec: GameSpec, seed: int) -> Policy:
        """A fresh policy for one episode; z samples and noise depend on `seed` only."""
        if spec.action_dim != self.c_config.action_dim:
            raise ValueError(
                f"game {spec.name} takes {spec.action_dim} actions, the controller gives "
                f"{self.c_config.action_dim}"
            )
        return _EpisodePolicy(self, int(seed))

    def play_batched(
        self,
        pool: Any,
        game_seeds: Sequence[int],
        policy_seeds: Sequence[int],
        on_record: Callable[[int, PlayedEpisode], None],
        max_frames: int | None = None,
    ) -> np.ndarray:
        """Plays episode i on game seed game_seeds[i] with policy_seeds[i]'s randomness, all
        of the pool's workers at once; `on_record(i, episode)` as each one ends. Returns the
        (N,) returns, NaN where a worker failure lost the episode."""
        import jax

        from wm_jax.envs import real_rollout

        results = real_rollout.evaluate_population_real(
            jax.random.key(0),  # unused: every episode has its own key
            pool,
            real_rollout.RealModels(self.vae_params, self.m_config, self.m_params),
            self.c_config,
            self.flat_params[None],
            len(game_seeds),
            np.asarray(game_seeds)[None],
            max_steps=max_frames,
            sample_z=self.sample_z,
            episode_keys=jax.random.wrap_key_data(_episode_key_data(policy_seeds)),
            noise=self.noise,
            on_record=on_record,
        )
        return results.returns[0]


class _EpisodePolicy:
    """One episode's state: M's memory, the step counter and the episode's key."""

    def __init__(self, factory: ControllerPolicy, seed: int):

        self.factory = factory
        self.step_fn, self.vae_params, self.m_params = factory._runtime()
        self.key_data = _episode_key_data([seed])
        self.flat = factory.flat_params[None]  # (1, D)
        self.memory = None
        if factory.c_config.uses_memory:
            self.memory = mdn_rnn.initial_state(factory.m_config, (1,))
        self.steps = 0

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        frame = np.asarray(frame, np.uint8)
        if frame.shape != (64, 64, 3):
            raise ValueError(f"expected a (64, 64, 3) uint8 frame, got {frame.shape}")
        actions, self.memory = self.step_fn(
            self.key_data,
            self.vae_params,
            self.m_params,
            self.flat,
            self.memory,
            frame[None],
            np.array([self.steps == 0]),  # restart: M's state starts from zeros
            np.array([self.steps], np.int32),
        )
        self.steps += 1
        return np.asarray(actions[0], np.float32)


def _episode_key_data(policy_seeds: Sequence[int]) -> np.ndarray:
    """(N, 2) uint32: the key data of each episode's key, from its policy seed alone (the same
    whether the episode plays alone or batched)."""
    import jax

    seeds = np.asarray(policy_seeds, np.int64) % 2**32
    return np.asarray(jax.random.key_data(jax.vmap(jax.random.key)(seeds)))


@kernels.cache_per_choice(maxsize=8)
def _policy_step(c_config, m_config, sample_z, noise):
    # One compiled step per process and configuration, shared by every episode it plays.
    from wm_jax.envs import real_rollout

    return real_rollout.make_policy_step(c_config, m_config, sample_z, noise)


def _to_numpy(params: Any) -> Any:
    if params is None:
        return None
    import jax

    return jax.tree.map(np.asarray, jax.device_get(params))
