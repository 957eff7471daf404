"""C: the controller, a tiny policy evolved by CMA-ES (World Models §3.3).

Parameters are a plain dict pytree; `jax.flatten_util.ravel_pytree` turns them into the flat
vector evosax works on (`flatten` / `unflatten_fn` below). Every kind ends in tanh, so actions
are in [-1, 1]; the game wrappers in `wm_jax.envs` map them to each game's own controls.

V-only baselines: the paper writes a = W z + b, but the authors' code (carracing/model.py,
`get_action`) applies tanh to every mode's output, so `linear_z` is tanh(W z + b) here too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

Params = dict[str, jax.Array]

KINDS = ("linear_zh", "linear_z", "hidden_z")
FEATURES = ("z", "c", "h")


@dataclasses.dataclass(frozen=True)
class ControllerConfig:
    """Static description of a controller.

    kind: "linear_zh" (tanh(W [z, (c,) h] + b)), "linear_z" (tanh(W z + b)) or "hidden_z"
      (z -> `hidden_units` tanh -> tanh outputs).
    inputs: which features, in order: ("z", "h"), ("z", "c", "h") (Doom) or ("z",).
    """

    kind: str = "linear_zh"
    inputs: tuple[str, ...] = ("z", "h")
    latent_dim: int = 32
    hidden_size: int = 256  # M's LSTM size (h and c)
    action_dim: int = 3
    use_bias: bool = True
    hidden_units: int = 40  # hidden_z only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"ControllerConfig.kind must be one of {KINDS}, got {self.kind!r}")
        if not self.inputs or any(name not in FEATURES for name in self.inputs):
            raise ValueError(f"ControllerConfig.inputs must name features in {FEATURES}")
        if self.inputs[0] != "z" or len(set(self.inputs)) != len(self.inputs):
            raise ValueError(f"inputs must start with 'z' and not repeat, got {self.inputs}")
        if self.kind == "linear_zh" and "h" not in self.inputs:
            raise ValueError("kind 'linear_zh' needs 'h' in inputs")
        if self.kind in ("linear_z", "hidden_z") and self.inputs != ("z",):
            raise ValueError(f"kind {self.kind!r} reads z only: inputs must be ('z',)")

    @property
    def input_dim(self) -> int:
        sizes = {"z": self.latent_dim, "c": self.hidden_size, "h": self.hidden_size}
        return sum(sizes[name] for name in self.inputs)

    @property
    def uses_memory(self) -> bool:
        """Whether the controller reads M's state (so M must run alongside V)."""
        return self.inputs != ("z",)


# World Models, Appendix: 867 = (32 + 256) * 3 + 3.
CAR_RACING = ControllerConfig()
# World Models, Appendix: 1,088 = 64 + 512 + 512 inputs, one output, no bias.
DOOM = ControllerConfig(
    inputs=("z", "c", "h"), latent_dim=64, hidden_size=512, action_dim=1, use_bias=False
)
# V-only baselines of the CarRacing table.
CAR_RACING_Z = ControllerConfig(kind="linear_z", inputs=("z",))
CAR_RACING_Z_HIDDEN = ControllerConfig(kind="hidden_z", inputs=("z",))  # 1,443 parameters


def init_params(key: jax.Array, config: ControllerConfig, scale: float = 0.1) -> Params:
    """Random parameters, N(0, scale^2) (evolution usually starts from zeros instead)."""
    shapes = param_shapes(config)
    keys = jax.random.split(key, len(shapes))
    return {
        name: scale * jax.random.normal(k, shape, jnp.float32)
        for k, (name, shape) in zip(keys, sorted(shapes.items()), strict=True)
    }


def zeros_params(config: ControllerConfig) -> Params:
    """All-zero parameters: the CMA-ES starting mean of the authors' code."""
    return {name: jnp.zeros(shape, jnp.float32) for name, shape in param_shapes(config).items()}


def param_shapes(config: ControllerConfig) -> dict[str, tuple[int, ...]]:
    if config.kind == "hidden_z":
        shapes = {
            "hidden_w": (config.input_dim, config.hidden_units),
            "out_w": (config.hidden_units, config.action_dim),
        }
        if config.use_bias:
            shapes |= {"hidden_b": (config.hidden_units,), "out_b": (config.action_dim,)}
        return shapes
    shapes = {"w": (config.input_dim, config.action_dim)}
    if config.use_bias:
        shapes["b"] = (config.action_dim,)
    return shapes


def num_params(config: ControllerConfig) -> int:
    total = 0
    for shape in param_shapes(config).values():
        size = 1
        for dim in shape:
            size *= dim
        total += size
    return total


def flatten(params: Params) -> jax.Array:
    """Params -> flat (D,) vector, the order evosax and checkpoints use."""
    return ravel_pytree(params)[0]


def unflatten_fn(config: ControllerConfig) -> Callable[[jax.Array], Params]:
    """The inverse of `flatten` for this config: (D,) -> Params."""
    return ravel_pytree(zeros_params(config))[1]


def features(config: ControllerConfig, z: jax.Array, memory: Any = None) -> jax.Array:
    """Concatenate the controller's inputs in `config.inputs` order.

    Args:
      z: (..., Z) latent code.
      memory: M's LSTM state with fields c, h (..., H) each; unused when inputs is ("z",).

    Returns:
      (..., config.input_dim)
    """
    parts = []
    for name in config.inputs:
        if name == "z":
            parts.append(z)
        elif memory is None:
            raise ValueError(f"controller inputs {config.inputs} need M's state, got None")
        else:
            parts.append(getattr(memory, name))
    out = jnp.concatenate(parts, axis=-1)
    if out.shape[-1] != config.input_dim:
        raise ValueError(
            f"features have size {out.shape[-1]}, controller expects {config.input_dim} "
            f"(inputs {config.inputs}, latent_dim {config.latent_dim}, "
            f"hidden_size {config.hidden_size})"
        )
    return out


def act(config: ControllerConfig, params: Params, features: jax.Array) -> jax.Array:
    """The action in [-1, 1].

    Args:
      features: (..., input_dim) from `features`.

    Returns:
      (..., action_dim)
    """
    if config.kind == "hidden_z":
        hidden = features @ params["hidden_w"]
        if config.use_bias:
            hidden = hidden + params["hidden_b"]
        out = jnp.tanh(hidden) @ params["out_w"]
        if config.use_bias:
            out = out + params["out_b"]
        return jnp.tanh(out)
    out = features @ params["w"]
    if config.use_bias:
        out = out + params["b"]
    return jnp.tanh(out)


def config_to_dict(config: ControllerConfig) -> dict:
    """JSON-friendly form, for checkpoint configs."""
    return dataclasses.asdict(config) | {"inputs": list(config.inputs)}


def config_from_dict(data: dict) -> ControllerConfig:
    return ControllerConfig(**(dict(data) | {"inputs": tuple(data["inputs"])}))
