"""Helpers shared by the weight importers: layout conversion, nested-dict paths, reading
PyTorch state dicts, and ``assign`` -- matching mapped checkpoint tensors to a model's state
with head replacement and one error listing every missing / unexpected / mismatched key."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

Path = tuple[Any, ...]


# kind -> (axes PyTorch -> ours, axes ours -> PyTorch): Linear (out, in) <-> (in, out),
# conv OIHW <-> HWIO; other kinds keep their layout.
_AXES = {"linear": ((1, 0), (1, 0)), "conv": ((2, 3, 1, 0), (3, 2, 0, 1))}


def to_ours(a: np.ndarray, kind: str) -> np.ndarray:
    """PyTorch layout -> ours: Linear (out, in) -> (in, out); conv OIHW -> HWIO."""
    return a.transpose(_AXES[kind][0]) if kind in _AXES else a


def to_torch(a: np.ndarray, kind: str) -> np.ndarray:
    """Ours -> PyTorch layout (the inverse of `to_ours`)."""
    return a.transpose(_AXES[kind][1]) if kind in _AXES else a


def flatten(d: Mapping, prefix: Path = ()) -> dict[Path, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(flatten(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def unflatten(flat: dict[Path, Any]) -> dict:
    out: dict = {}
    for path, v in flat.items():
        node = out
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return out


def path_str(path: Path) -> str:
    return ".".join(map(str, path))


# ----------------------------------------------------------------------------- state-dict files
def _to_numpy(v: Any) -> np.ndarray:
    if hasattr(v, "detach"):  # torch.Tensor
        v = v.detach().cpu()
        if str(v.dtype) == "torch.bfloat16":
            v = v.float()
        return v.numpy()
    return np.asarray(v)


def read_state_dict(path: str | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A PyTorch-style state dict as numpy arrays, from a file or an in-memory mapping.

    ``.safetensors`` is read with ``safetensors.numpy`` (no PyTorch needed); ``.pth`` / ``.pt``
    / ``.bin`` with ``torch.load(weights_only=True)``. A ``{"state_dict": ...}`` /
    ``{"model": ...}`` training-checkpoint wrapper and a ``module.`` (DataParallel) prefix are
    removed; non-tensor entries are dropped.
    """
    if isinstance(path, Mapping):
        sd = dict(path)
    elif str(path).endswith(".safetensors"):
        from safetensors.numpy import load_file

        sd = dict(load_file(str(path)))
    else:
        try:
            import torch
        except ImportError as e:
            raise ImportError(
                f"reading {path} needs PyTorch (torch.load); install torch or convert the "
                "checkpoint to .safetensors") from e
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
    for wrapper in ("state_dict", "model"):  # training-checkpoint wrappers
        if isinstance(sd.get(wrapper), Mapping):
            sd = dict(sd[wrapper])
    if sd and all(str(k).startswith("module.") for k in sd):  # DataParallel / DDP
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return {k: _to_numpy(v) for k, v in sd.items() if hasattr(v, "shape")}


# ----------------------------------------------------------------------------- key mapping
_NUM_BATCHES_TRACKED = re.compile(r"(^|\.)num_batches_tracked$")


def convert_by_key(state: nnx.State, tensors: Mapping[str, Any],
                   key_fn: Callable[[Path], tuple[str, str]],
                   normalize: Callable[[str], str] = lambda k: k,
                   ignored: Sequence[re.Pattern] = ()
                   ) -> tuple[dict[Path, tuple[str, np.ndarray]], list[str]]:
    """PyTorch tensors -> (our path -> (their key, array in our layout), unexpected keys).

    ``key_fn(path)`` names each model variable in the checkpoint (key, layout kind);
    ``normalize`` rewrites checkpoint keys first (prefix variants); BatchNorm's
    ``num_batches_tracked`` counters and keys matching an ``ignored`` pattern are dropped.
    """
    table = {key_fn(p)[0]: (p, key_fn(p)[1]) for p in flatten(nnx.to_pure_dict(state))}
    converted, unexpected = {}, []
    for raw_key, value in tensors.items():
        key = normalize(raw_key)
        if _NUM_BATCHES_TRACKED.search(key) or any(p.search(key) for p in ignored):
            continue
        if key not in table:
            unexpected.append(raw_key)
            continue
        p, kind = table[key]
        converted[p] = (raw_key, to_ours(np.asarray(value), kind))
    return converted, unexpected


# ----------------------------------------------------------------------------- assignment
MAX_LISTED = 40  # per kind of problem; the rest is counted


class AbstractHeadError(ValueError):
    """The checkpoint's head does not fit and the (abstract) model has no head to keep."""


def listing(items: list[str], sep: str = ", ") -> str:
    more = len(items) - MAX_LISTED
    return sep.join(items[:MAX_LISTED]) + (f"{sep}... and {more} more" if more > 0 else "")


def assign(
    state: nnx.State,
    converted: Mapping[Path, tuple[str, np.ndarray]],
    *,
    source: str,
    key_name: Callable[[Path], str],
    head: Sequence[str],
    unexpected: Sequence[str] = (),
    problems: Sequence[str] = (),
    adjust: Callable[[Path, np.ndarray, tuple[int, ...]], np.ndarray] | None = None,
    strict: bool = True,
    family: str = "import",
) -> nnx.State:
    """A copy of ``state`` filled with checkpoint tensors already mapped to our paths.

    ``converted``: our state path -> (checkpoint key, array in our layout). ``key_name(path)``
    names a model variable in the checkpoint's naming (for "missing" messages). ``head``: the
    top-level module names of the classifier head; a head whose shape differs from the
    model's (other class count) or that is absent altogether (headless checkpoint) is
    *replaced*: the model's own (random) head values are kept. ``adjust(path, value, want)``
    may reshape a value first (position-embedding interpolation). ``unexpected`` /
    ``problems``: found by the caller (checkpoint keys with no place, config conflicts).

    Every missing or unexpected key and every shape mismatch is collected; with ``strict``
    they raise one ``ValueError`` listing all of them. With ``strict=False`` they are logged as
    a warning and the model's own values stay where nothing fits (needs a concrete model).
    Leaves not taken from the checkpoint are the very objects of ``state``.
    """
    target = flatten(nnx.to_pure_dict(state))
    head = tuple(head)
    problems, unexpected = list(problems), list(unexpected)
    loaded: dict[Path, Any] = {}
    mismatched: list[str] = []
    head_replaced = False
    for p, (name, value) in converted.items():
        if p not in target:
            unexpected.append(name)
            continue
        want = tuple(target[p].shape)
        value = np.asarray(value)
        if adjust is not None and value.shape != want:
            value = np.asarray(adjust(p, value, want))
        if value.shape != want:
            if p[0] in head:
                head_replaced = True
                continue
            mismatched.append(f"{name}: checkpoint {value.shape} (in our layout), model {want}")
            continue
        loaded[p] = value.astype(target[p].dtype)

    missing = [p for p in target if p not in loaded and not (head_replaced and p[0] in head)]
    if missing and all(p[0] in head for p in missing):
        head_replaced, missing = True, []  # headless checkpoint: keep the model's head
    if missing:
        problems.append("missing keys (model variables the checkpoint lacks): "
                        + listing([f"{path_str(p)} ({key_name(p)})" for p in missing]))
    if unexpected:
        problems.append("unexpected keys (checkpoint tensors the model has no place for): "
                        + listing(sorted(unexpected)))
    if mismatched:
        problems.append("shape mismatches: " + listing(mismatched, "; "))
    if problems:
        report = f"cannot load {source}:\n  - " + "\n  - ".join(problems)
        if strict:
            raise ValueError(report)
        logging.warning("%s\n(strict=False: the model keeps its own values where nothing fits)",
                        report)

    kept = [p for p in target if p not in loaded]
    for p in kept:
        if isinstance(target[p], jax.ShapeDtypeStruct):
            raise AbstractHeadError(
                f"{path_str(p)} is not in the checkpoint (or does not fit) and the model is "
                "abstract: pass a concrete model to keep its randomly initialised values")
        loaded[p] = target[p]
    if head_replaced:
        logging.info("%s: checkpoint head does not fit the model (%s); head %s kept from the "
                     "model (random init)", family,
                     ", ".join(f"{path_str(p)} {tuple(target[p].shape)}" for p in target
                               if p[0] in head), "/".join(head))
    logging.info("%s: %d of %d variables loaded from %s", family, len(target) - len(kept),
                 len(target), source)

    new_state = jax.tree.map(lambda x: x, state)  # a copy: the model stays untouched
    nnx.replace_by_pure_dict(new_state, unflatten(loaded))
    return new_state
