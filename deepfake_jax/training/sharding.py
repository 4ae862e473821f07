"""Device mesh and shardings: the only module that knows mesh axis names.

Data parallel by default: the batch is split over the `data` axis and the train state is
replicated. With `config.mesh.fsdp = K > 1` the mesh is `(data, fsdp)`: the batch is split
over both axes and large weights (with their optimizer moments and EMA) are split over `fsdp`
(ZeRO-3 / FSDP style; XLA all-gathers them where a layer needs them whole). Which weights:
`config.mesh.fsdp_rules`, a sequence of `(regex, dim)` matched against the leaf's path
("params/encoder/0/attention/query/kernel"), first match wins, `dim=None` keeps it
replicated; leaves no rule matches are split on their largest dimension divisible by K if
they have at least `config.mesh.fsdp_min_size` entries. Models never mention mesh axes.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"
FSDP_AXIS = "fsdp"
DEFAULT_FSDP_MIN_SIZE = 2**18  # 1 MiB of float32: smaller weights are not worth the gathers


def make_mesh(mesh_config: Any | None = None, devices: list | None = None) -> Mesh:
    """A `data` mesh, or a `(data, fsdp)` mesh when `mesh_config.fsdp` > 1.

    `mesh_config.data` is the number of devices on the data axis; -1 (default) means all
    the devices not on the fsdp axis. Axis types are Auto so that jit's sharding propagation
    does the work (jax>=0.7's `make_mesh` would default to Explicit, which changes the
    semantics of some ops).
    """
    devices = list(jax.devices() if devices is None else devices)
    get = lambda key, default: (getattr(mesh_config, key, default) if mesh_config is not None
                                else default)
    fsdp = int(get("fsdp", 1) or 1)
    size = int(get("data", -1))
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"config.mesh.fsdp={fsdp} must divide the {len(devices)} devices")
    if size == -1:
        size = len(devices) // fsdp
    if size < 1 or size * fsdp > len(devices):
        raise ValueError(
            f"config.mesh.data={size} (x fsdp={fsdp}) but {len(devices)} devices are available "
            f"({devices[0].platform}); use -1 for all of them"
        )
    if fsdp == 1:
        return jax.make_mesh((size,), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,),
                             devices=devices[:size])
    return jax.make_mesh((size, fsdp), (DATA_AXIS, FSDP_AXIS),
                         axis_types=(jax.sharding.AxisType.Auto,) * 2,
                         devices=devices[:size * fsdp])


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    """The mesh axes the batch dimension is split over."""
    return tuple(a for a in (DATA_AXIS, FSDP_AXIS) if a in mesh.axis_names)


def num_batch_shards(mesh: Mesh) -> int:
    return int(np.prod([mesh.shape[a] for a in batch_axes(mesh)]))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension split over the data (and fsdp) axes, the rest replicated."""
    axes = batch_axes(mesh)
    return NamedSharding(mesh, P(axes[0] if len(axes) == 1 else axes))


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k))))
                    for k in path)


def fsdp_spec(name: str, shape: tuple[int, ...], fsdp: int, rules=(),
              min_size: int = DEFAULT_FSDP_MIN_SIZE) -> P:
    """The PartitionSpec of one state leaf on a mesh with an fsdp axis of size `fsdp`."""
    for pattern, dim in rules:
        if re.search(pattern, name):
            if dim is None:
                return P()
            if shape[dim] % fsdp:
                raise ValueError(f"fsdp rule {pattern!r}: dim {dim} of {name} {shape} is not "
                                 f"divisible by fsdp={fsdp}")
            return P(*[FSDP_AXIS if d == dim else None for d in range(len(shape))])
    if int(np.prod(shape)) < min_size:
        return P()
    candidates = [d for d in range(len(shape)) if shape[d] % fsdp == 0]
    if not candidates:
        return P()
    dim = max(candidates, key=lambda d: shape[d])
    return P(*[FSDP_AXIS if d == dim else None for d in range(len(shape))])


def state_shardings(mesh: Mesh, abstract_state: Any, mesh_config: Any | None = None) -> Any:
    """Shardings for every leaf of the train state: replicated, or FSDP rules (see above)."""
    if FSDP_AXIS not in mesh.axis_names:
        return jax.tree.map(lambda _: replicated(mesh), abstract_state)
    fsdp = mesh.shape[FSDP_AXIS]
    rules = tuple(getattr(mesh_config, "fsdp_rules", None) or ())
    min_size = int(getattr(mesh_config, "fsdp_min_size", None) or DEFAULT_FSDP_MIN_SIZE)

    def leaf_sharding(path, leaf):
        shape = tuple(getattr(leaf, "shape", ()))
        return NamedSharding(mesh, fsdp_spec(_path_name(path), shape, fsdp, rules, min_size))

    return jax.tree_util.tree_map_with_path(leaf_sharding, abstract_state)


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
    n = num_batch_shards(mesh)
    if global_batch_size % n or global_batch_size % jax.process_count():
        raise ValueError(
            f"batch size {global_batch_size} must be divisible by the {n} devices the batch "
            f"is split over and by the {jax.process_count()} processes"
        )
