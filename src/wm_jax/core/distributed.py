"""Several processes (hosts) as one JAX program: `jax.distributed` from flags or the
environment, and the few helpers the pipeline needs to run the same code on one process or many.

JAX's multi-controller model: every process runs the same Python program; `jax.devices()` lists
every process's devices, `jax.local_devices()` this process's own. A jitted step over a mesh of
all devices is one program whose collectives (the gradient all-reduce, CMA-ES's gather of the
population's fitness) cross the processes; on a CPU they go over gloo on TCP, on GPUs over NCCL,
on a TPU pod over its interconnect. Here:

- `initialize` connects the processes (flags first, then `JAX_COORDINATOR_ADDRESS`,
  `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`; with none of them, one process and nothing changes);
- `put` builds a global array from a value every process holds in full (the same batch, read
  from the shared store by the same seeded loader): each process places only its own rows;
- `to_host` reads a global array back on every process (a sharded one is gathered);
- `is_writer` (process 0) writes checkpoints, logs and results once; `barrier` makes the
  others wait for the files.

    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # or from env
    mesh = devices.data_mesh(0, batch_size)    # now over every process's devices
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

_connected: tuple[str, int, int] | None = None  # what `initialize` connected to


class DistributedError(ValueError):
    """A bad or incomplete multi-process setting; the one-line message names it."""


def _from_env(name: str) -> int | None:
    text = os.environ.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r} is not an integer") from None


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> bool:
    """Connect this process to the others; True if it is one of several.

    Each argument falls back to its environment variable (`JAX_COORDINATOR_ADDRESS`,
    `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`). With no coordinator and at most one process this
    is a no-op (one process: the default). Must run before anything touches a JAX device.

    Raises:
      DistributedError: a coordinator that is not HOST:PORT, a count below 1, a process id
        outside [0, num_processes), or a coordinator without the other two.
    """
    coordinator = coordinator or os.environ.get(ENV_COORDINATOR) or None
    num_processes = _from_env(ENV_NUM_PROCESSES) if num_processes is None else num_processes
    process_id = _from_env(ENV_PROCESS_ID) if process_id is None else process_id
    if coordinator is None and num_processes in (None, 1):
        return False
    if num_processes is None or process_id is None or coordinator is None:
        raise DistributedError(
            "several processes need all three of --coordinator HOST:PORT, --num-processes N "
            f"and --process-id I (or {ENV_COORDINATOR}, {ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}); "
            f"got coordinator={coordinator!r}, num_processes={num_processes}, "
            f"process_id={process_id}"
        )
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DistributedError(f"coordinator={coordinator!r}: expected HOST:PORT")
    if num_processes < 1:
        raise DistributedError(f"num_processes={num_processes}: must be at least 1")
    if not 0 <= process_id < num_processes:
        raise DistributedError(
            f"process_id={process_id}: must lie in [0, {num_processes}) for "
            f"num_processes={num_processes}"
        )
    global _connected
    if _connected == (coordinator, num_processes, process_id):
        return num_processes > 1  # the entry point connected already (`initialize_from_argv`)
    if _connected is not None:
        raise DistributedError(f"already connected as {_connected}, not as {coordinator!r}")
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        raise DistributedError(
            "several processes must connect before JAX starts: give --coordinator, "
            "--num-processes and --process-id to the command (python -m wm_jax.experiment), "
            "or set the JAX_* variables"
        )
    # A CPU's cross-process collectives: gloo over TCP (JAX's default CPU backend has none).
    # GPUs and TPUs ignore this setting and use their own.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id)
    _connected = (coordinator, num_processes, process_id)
    return num_processes > 1


def add_arguments(parser: Any) -> None:
    """The three flags of `initialize` (`--help` of the commands that take them)."""
    group = parser.add_argument_group(
        "several processes (hosts)",
        f"one process per host, the same command on each; default from {ENV_COORDINATOR}, "
        f"{ENV_NUM_PROCESSES}, {ENV_PROCESS_ID}",
    )
    group.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
    group.add_argument("--num-processes", type=int, metavar="N", help="how many processes")
    group.add_argument("--process-id", type=int, metavar="I", help="this process, 0..N-1")


def initialize_from_argv(argv: Sequence[str]) -> bool:
    """`initialize` from a command line's flags (the rest of argv is left to the command),
    for an entry point to call before it imports anything that starts JAX; a bad setting
    exits with status 2 and its one line, as the command's own parser would."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    try:
        args, _ = parser.parse_known_args(list(argv))
    except SystemExit:
        return False  # a malformed flag: the command's own parser says so
    try:
        return initialize(args.coordinator, args.num_processes, args.process_id)
    except DistributedError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def is_writer() -> bool:
    """Whether this process writes what must be written once (process 0)."""
    return jax.process_index() == 0


def share(items: Sequence[Any]) -> list[Any]:
    """This process's share of `items`: every process_count()-th, from process_index()."""
    return list(items[jax.process_index() :: jax.process_count()])


def put(value: Any, sharding: jax.sharding.Sharding) -> jax.Array:
    """`value` (held in full by every process) as a global array with `sharding`.

    One process: `jax.device_put`. Several: each process places only the slices its own
    devices hold (`jax.make_array_from_callback`), so nothing crosses the network.
    """
    if jax.process_count() == 1:
        return jax.device_put(value, sharding)
    host = np.asarray(value)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_tree(tree: Any, sharding: jax.sharding.Sharding) -> Any:
    """`put` on every leaf of `tree` (typed PRNG keys through their key data); one process:
    `jax.device_put` of the whole tree, as it is."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)

    def one(x):
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            data = put(to_host(jax.random.key_data(x)), sharding)
            return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
        return put(to_host(x), sharding)

    return jax.tree.map(one, tree)


def to_host(x: Any) -> Any:
    """A (possibly global) array as NumPy on every process: sharded ones are gathered (a
    collective: every process must call it). A typed PRNG key comes back as a local key."""
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        impl = jax.random.key_impl(x)
        return jax.random.wrap_key_data(to_host(jax.random.key_data(x)), impl=impl)
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        if x.is_fully_replicated:
            return np.asarray(x.addressable_data(0))
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)


def tree_to_host(tree: Any) -> Any:
    """`to_host` on every leaf; one process: `jax.device_get` (all transfers started at once)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    return jax.tree.map(to_host, tree)


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op for one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
