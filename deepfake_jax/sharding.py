"""Device mesh and shardings: the only module that knows mesh axis names.

Data parallel by default: the batch is split over the `data` axis and the train state is
replicated. Models never mention mesh axes; placement is decided here from the config.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(mesh_config: Any | None = None, devices: list | None = None) -> Mesh:
    """Builds a 1-D `data` mesh over `devices` (default: all devices of all processes).

    `mesh_config.data` is the number of devices on the data axis; -1 (default) means all.
    Axis types are Auto so that jit's sharding propagation does the work (jax>=0.7's
    `make_mesh` would default to Explicit, which changes the semantics of some ops).
    """
    devices = list(jax.devices() if devices is None else devices)
    size = int(getattr(mesh_config, "data", -1) if mesh_config is not None else -1)
    if size == -1:
        size = len(devices)
    if size < 1 or size > len(devices):
        raise ValueError(
            f"config.mesh.data={size} but {len(devices)} devices are available "
            f"({devices[0].platform}); use -1 for all of them"
        )
    return jax.make_mesh(
        (size,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices[:size]
    )


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data axis, everything else replicated."""
    return NamedSharding(mesh, P(DATA_AXIS))


def state_shardings(mesh: Mesh, abstract_state: Any) -> Any:
    """Shardings for every leaf of the train state: replicated (pure data parallelism)."""
    return jax.tree.map(lambda _: replicated(mesh), abstract_state)


def host_to_global(mesh: Mesh, host_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Turns this process's slice of the batch into global arrays sharded over `data`.

    Each process passes only the examples it read itself (its shard of the data); the global
    batch is the concatenation over processes in process order.
    """
    sharding = batch_sharding(mesh)
    return {
        k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
        for k, v in host_batch.items()
    }


def global_batch_size_ok(mesh: Mesh, global_batch_size: int) -> None:
    n = mesh.shape[DATA_AXIS]
    if global_batch_size % n or global_batch_size % jax.process_count():
        raise ValueError(
            f"batch size {global_batch_size} must be divisible by the {n} devices on the "
            f"data axis and by the {jax.process_count()} processes"
        )
