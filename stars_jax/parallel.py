"""Devices, processes and data placement: the one place that builds meshes and shardings.

Every step runs under ``jax.jit`` over a one-axis ``Mesh`` (axis ``data``) spanning all
devices of all processes. Batches are split along ``data``; parameters, optimizer and
generator state are replicated; the memory bank is split along its first axis. Statistics
over the batch (BN in training mode, L_BN, RCA, TAR) are plain means over a global array, so
XLA computes them over the **global** batch, exactly as on one device.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def maybe_initialize_distributed(coordinator: str = "", num_processes: int = 0, process_id=-1):
    """Joins JAX's distributed runtime when the environment says there are several processes.

    Explicit arguments win; otherwise Cloud TPU pods and SLURM jobs with more than one task
    are detected by JAX itself. A single process does nothing.
    """
    if jax.distributed.is_initialized():
        return
    if coordinator or num_processes > 1:
        jax.distributed.initialize(
            coordinator_address=coordinator or None,
            num_processes=num_processes or None,
            process_id=None if process_id < 0 else process_id,
        )
    elif int(os.environ.get("SLURM_NTASKS", "1")) > 1 or "TPU_WORKER_HOSTNAMES" in os.environ:
        jax.distributed.initialize()


def make_mesh(num_devices: int = -1) -> Mesh:
    """A 1-D mesh over the first ``num_devices`` devices (``-1``: all of every process)."""
    devices = jax.devices()
    if num_devices > 0:
        if num_devices > len(devices):
            raise ValueError(f"mesh.data={num_devices} but only {len(devices)} devices exist.")
        devices = devices[:num_devices]
    return Mesh(np.asarray(devices), (DATA,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over ``data``."""
    return NamedSharding(mesh, P(DATA))


def check_batch(name: str, batch_size: int, mesh: Mesh) -> None:
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"{name}={batch_size} is not divisible by the {n} devices of the mesh; use a "
            f"multiple of {n} (e.g. {batch_size + n - batch_size % n}) or set --config.mesh.data."
        )


def put(tree, sharding: NamedSharding):
    """Places host data (identical on every process) as global arrays with ``sharding``.

    Each process materialises only the shards of its own devices, so this works on one
    device, on many, and across hosts.
    """

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    return jax.tree.map(one, tree)


def constrain(x, sharding: NamedSharding | None):
    """``with_sharding_constraint`` inside jitted code when a mesh is in use."""
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def fetch(tree):
    """Device -> host numpy for arrays that may span other processes' devices."""
    from jax.experimental import multihost_utils

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(x)

    return jax.tree.map(one, tree)


def agree(value: float) -> float:
    """Process 0's ``value`` on every process: host-side decisions that steer collectives
    (stop now, how many rounds) must be the same everywhere or the processes deadlock."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return float(multihost_utils.broadcast_one_to_all(np.float32(value)))
