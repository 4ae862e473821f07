"""Helpers shared by the weight importers: layout conversion and nested-dict paths."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

Path = tuple[Any, ...]


def to_ours(a: np.ndarray, kind: str) -> np.ndarray:
    """PyTorch layout -> ours: Linear (out, in) -> (in, out); conv OIHW -> HWIO."""
    if kind == "linear":
        return a.T
    if kind == "conv":
        return a.transpose(2, 3, 1, 0)
    return a


def to_torch(a: np.ndarray, kind: str) -> np.ndarray:
    """Ours -> PyTorch layout (the inverse of `to_ours`)."""
    if kind == "linear":
        return a.T
    if kind == "conv":
        return a.transpose(3, 2, 0, 1)
    return a


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
