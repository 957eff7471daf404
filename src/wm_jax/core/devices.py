"""Data parallelism over every device (one machine's, or several processes'): one 1-D mesh,
each batch split along its first axis, the weights replicated.

V's and M's training steps and the encoding pass are written for one device; placing their
inputs here is all it takes to run them on every local device (GSPMD partitions the jitted
step from its inputs' shardings and inserts the gradient all-reduce). The arithmetic is the
one-device arithmetic up to the order of the batch sums (tests/test_devices.py: 4 forced host
devices against 1). jax.random is partitionable (`jax_threefry_partitionable`), so V's
reparameterisation noise is the one a single device draws.

    mesh = data_mesh(0, batch_size)           # None on a one-device machine: nothing changes
    state = place_state(state, mesh)          # replicated (M's carried LSTM state: split)
    batch = shard_batch(batch, mesh, "V's batch_size")

With several processes (`wm_jax.core.distributed.initialize`) the mesh spans every process's
devices; each process holds the same full batch and places only its own rows
(`distributed.put`), so the step is the one-process step over more devices.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from wm_jax.core import distributed

AXIS = "data"


class DeviceSplitError(ValueError):
    """A device count or a batch that does not split; the one-line message names the setting."""


def data_mesh(devices: int = 0, batch_size: int | None = None, local: bool = False) -> Mesh | None:
    """The devices a batch of `batch_size` is split over, as a 1-D "data" mesh; None for one
    device (then nothing changes). Every process's devices when there are several processes.

    devices: 0 (the default) takes as many local devices as split the batch evenly (a TPU
    v2-8's 8 cores for a batch of 128, 5 of them for V's batch of 100); N takes exactly N.
    """
    # Every process's devices when several are connected; `local`: this process's own (work
    # each process does apart, on its own share, such as encoding).
    available = jax.local_devices() if local else jax.devices()
    if devices == 0:
        count = even_split(len(available), *([] if batch_size is None else [batch_size]))
    else:
        count = devices
    if not 1 <= count <= len(available):
        raise DeviceSplitError(
            f"data.devices={devices}: {len(available)} device(s) available "
            f"({available[0].platform}; {jax.process_count()} process(es))"
        )
    if count == 1:
        return None
    return Mesh(np.array(available[:count]), (AXIS,))


def even_split(available: int, *sizes: int) -> int:
    """The most devices, at most `available`, that every one of `sizes` splits over evenly."""
    count = available
    while any(size % count for size in sizes):
        count -= 1
    return count


def device_count(mesh: Mesh | None) -> int:
    return 1 if mesh is None else mesh.size


def check_divisible(size: int, mesh: Mesh | None, what: str) -> None:
    """One line naming the setting when a batch cannot be split evenly over the devices."""
    if size % device_count(mesh):
        raise DeviceSplitError(
            f"{what}={size} does not split over {device_count(mesh)} devices: use a multiple "
            f"of {device_count(mesh)}, or --set data.devices=1"
        )


def _split(mesh: Mesh, x: Any) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(AXIS, *([None] * (np.ndim(x) - 1))))


def shard_batch(batch: Any, mesh: Mesh | None, what: str = "batch") -> Any:
    """Every leaf of `batch` split along its first axis over the mesh (as is without one)."""
    if mesh is None:
        return batch

    def put(x):
        check_divisible(np.shape(x)[0], mesh, what)
        return distributed.put(x, _split(mesh, x))

    return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """Every leaf of `tree` copied to all the mesh's devices (as is without one)."""
    if mesh is None:
        return tree
    return distributed.put_tree(tree, NamedSharding(mesh, PartitionSpec()))


def place_state(state: Any, mesh: Mesh | None, what: str = "batch") -> Any:
    """A train state on the mesh: weights and optimiser state replicated; a per-sequence
    `carry` (M's LSTM state carried between windows, (B, H)) split like the batch (`what`
    names the batch's setting in an error)."""
    if mesh is None:
        return state
    carry = getattr(state, "carry", None)
    state = replicate(state.replace(carry=None) if carry is not None else state, mesh)
    if carry is not None:
        state = state.replace(carry=shard_batch(carry, mesh, what))
    return state
