"""Training V (World Models, Appendix: Adam, learning rate 1e-4, batch 100): the train state,
the jitted step and the streaming loop over uint8 frame batches.

The step converts uint8 frames on the device and donates its state; the loop never holds the
dataset, and checks the loss on the host only every `check_every` steps (each check waits for
the device).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from wm_jax.core import kernels
from wm_jax.models import vae
from wm_jax.train import training_loop


@dataclasses.dataclass(frozen=True)
class VAETrainConfig:
    batch_size: int = 100  # World Models, Appendix
    learning_rate: float = 1e-4  # Adam, World Models, Appendix
    num_epochs: int = 10  # paper 1, its code 10


def _check_train_batch(frames: Any) -> None:
    shape, dtype = vae.frame_shape_and_dtype(frames)
    if len(shape) != 4 or shape[1:] != vae.FRAME_SHAPE:
        raise ValueError(f"train_step expects frames of shape (B, 64, 64, 3); got shape {shape}")
    if dtype != np.uint8:
        raise ValueError(f"train_step expects uint8 frames in [0, 255]; got dtype {dtype}")


class VAETrainState(flax.struct.PyTreeNode):
    params: vae.Params
    opt_state: optax.OptState
    step: jax.Array  # () int32


# Configs are frozen dataclasses: repeated `train` calls reuse the compiled step (one per
# kernel choice, wm_jax.core.kernels).
@kernels.cache_per_choice()
def make_train(
    config: vae.VAEConfig, train_config: VAETrainConfig, *, impl: vae.Impl = "auto"
) -> tuple[
    Callable[[jax.Array], VAETrainState],
    Callable[[jax.Array, VAETrainState, jax.Array], tuple[VAETrainState, dict[str, jax.Array]]],
]:
    """Returns ``(init_state(key), train_step(key, state, frames_uint8 (B, 64, 64, 3)))``.

    ``train_step`` is jitted and donates ``state``; it converts the uint8 frames on device.
    """
    optimizer = optax.adam(train_config.learning_rate)

    def init_state(key: jax.Array) -> VAETrainState:
        params = vae.init_params(key, config)
        return VAETrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))

    def train_step(
        key: jax.Array, state: VAETrainState, frames: jax.Array
    ) -> tuple[VAETrainState, dict[str, jax.Array]]:
        _check_train_batch(frames)  # static: shapes and dtypes are known at trace time
        x = vae.frames_to_float(frames)
        grad_fn = jax.grad(vae.loss_fn, argnums=1, has_aux=True)
        grads, metrics = grad_fn(key, state.params, x, config.kl_tolerance, impl=impl)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        return VAETrainState(params, opt_state, state.step + 1), metrics

    return init_state, kernels.jit_vae(train_step, donate_argnums=1)


def train(
    key: jax.Array,
    config: vae.VAEConfig,
    train_config: VAETrainConfig,
    batches: Iterable[Any],
    state: VAETrainState | None = None,
    on_step: Callable[[int, dict[str, jax.Array]], None] | None = None,
    *,
    progress: bool = True,
    check_every: int = 50,
) -> VAETrainState:
    """Trains V over a stream of uint8 batches (B, 64, 64, 3); never holds the dataset.

    `wm_jax.train.training_loop.run` without checkpoints (the stage adds them).

    Args:
      key: randomness for init (if ``state`` is None) and the reparameterised samples.
      config, train_config: model and optimiser settings.
      batches: any iterable of uint8 frame batches, consumed once.
      state: resume from this state (its ``step`` continues); fresh parameters if None.
      on_step: called as ``on_step(step, metrics)`` after each step, with ``step`` the updated
        ``state.step`` (counted from 1) and the metrics still on device (no host sync).
      progress: show a tqdm progress bar.
      check_every: steps between the (host-syncing) NaN/inf checks of the loss; the last step
        is always checked.

    Raises:
      TrainingDivergedError: naming the first step whose loss is not finite.
    """
    init_state, train_step = make_train(config, train_config)
    state, _ = training_loop.run(
        "V",
        key,
        train_step,
        init_state,
        lambda start: batches,
        None,
        state=state,
        on_step=on_step,
        log_every=check_every,
        progress=progress,
    )
    return state
