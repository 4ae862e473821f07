"""face-parsing.PyTorch BiSeNet checkpoints (e.g. ``79999_iter.pth``) -> ``models.bisenet``.

``load_face_parsing_bisenet(model, path)`` returns ONE ``nnx.State`` (parameters and BatchNorm
statistics; apply with ``nnx.update``) from ``.pth`` / ``.pt`` (needs PyTorch),
``.safetensors`` or a mapping. With another class count the three heads' last 1x1 convs keep
their fresh init ("head replaced" warning; ``strict_head=True``: an error); every other mismatch
is one ``ValueError`` (``strict=False``: logged). Also format ``"face_parsing_bisenet"`` of
``weights.load_pretrained``.

Details: docs/models.md#deepfake_jaxweightsbisenetpy
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from deepfake_jax.models.bisenet import BACKBONE_PATH, BiSeNet
from deepfake_jax.weights.common import (
    AbstractHeadError,
    Path,
    assign,
    flatten,
    path_str,
    read_state_dict,
    to_ours,
)
from deepfake_jax.weights.resnet import torchvision_key

HEAD_CONVS: tuple[Path, ...] = tuple((head, "conv_out", "kernel")
                                     for head in ("conv_out", "conv_out16", "conv_out32"))

_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_DROPPED = re.compile(r"(^|\.)num_batches_tracked$")


def face_parsing_key(path: Path) -> tuple[str, str]:
    """nnx state path -> (face-parsing.PyTorch ``state_dict`` key, kind: raw / conv)."""
    p = tuple(str(k) for k in path)
    if p[:len(BACKBONE_PATH)] == BACKBONE_PATH:
        key, kind = torchvision_key(path[len(BACKBONE_PATH):])
        return ".".join(BACKBONE_PATH) + "." + key, kind
    module, leaf = ".".join(p[:-1]), p[-1]
    if leaf == "kernel":
        return f"{module}.weight", "conv"
    if leaf in _BN_LEAVES:
        return f"{module}.{_BN_LEAVES[leaf]}", "raw"
    raise KeyError(f"no face-parsing name for BiSeNet variable {'.'.join(p)}")


def read_face_parsing_state_dict(path: str | Mapping[str, Any]) -> dict[str, np.ndarray]:
    """The checkpoint's tensors as numpy arrays; clear errors for unreadable files."""
    if isinstance(path, Mapping):
        return read_state_dict(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no BiSeNet checkpoint at {path}")
    try:
        tensors = read_state_dict(path)
    except ImportError:
        raise  # "reading ... needs PyTorch": already says what to do
    except Exception as e:  # torch / safetensors / pickle errors on bad files
        raise ValueError(f"cannot read {path} as a BiSeNet state dict (file truncated or not a "
                         f"PyTorch / safetensors state dict): {type(e).__name__}: {e}") from e
    if not tensors:
        raise ValueError(f"{path} holds no tensors: not a BiSeNet state dict")
    return tensors


def _replaced_heads(converted: Mapping[Path, tuple[str, np.ndarray]],
                    target: Mapping[Path, Any]) -> list[Path]:
    """Head convs whose checkpoint kernel differs from the model's in the class count only."""
    replaced = []
    for p in HEAD_CONVS:
        if p in converted and p in target:
            ours, want = converted[p][1].shape, tuple(target[p].shape)
            if ours != want and len(ours) == len(want) and ours[:-1] == want[:-1]:
                replaced.append(p)
    return replaced


def load_face_parsing_bisenet(model_or_state: BiSeNet | nnx.State,
                              path: str | Mapping[str, Any], *, strict: bool = True,
                              strict_head: bool = False) -> nnx.State:
    """Params + BatchNorm stats (one ``nnx.State``) from a face-parsing.PyTorch checkpoint.

    ``model_or_state``: a ``BiSeNet`` (concrete, or abstract from ``nnx.eval_shape`` when the
    class counts match) or its ``nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))``.
    ``strict_head``: a class-count mismatch is an error instead of a head replacement.
    ``strict=False``: problems are logged, not raised (needs a concrete model).
    Apply with ``nnx.update(model, result)``.
    """
    state = (nnx.state(model_or_state, nnx.Any(nnx.Param, nnx.BatchStat))
             if isinstance(model_or_state, nnx.Module) else model_or_state)
    tensors = read_face_parsing_state_dict(path)
    source = ("face-parsing BiSeNet state dict "
              + ("<state dict>" if isinstance(path, Mapping) else str(path)))
    target = flatten(nnx.to_pure_dict(state))
    table = {face_parsing_key(p)[0]: p for p in target}
    converted, unexpected = {}, []
    for key, value in tensors.items():
        if _DROPPED.search(key):
            continue
        if key not in table:
            unexpected.append(key)
            continue
        p = table[key]
        converted[p] = (key, to_ours(np.asarray(value), face_parsing_key(p)[1]))

    def load(sub_state):
        return assign(sub_state, converted, source=source,
                      key_name=lambda p: face_parsing_key(p)[0], head=(),
                      unexpected=unexpected, strict=strict, family="BiSeNet import")

    replaced = [] if strict_head else _replaced_heads(converted, target)
    if not replaced:
        return load(state)
    if any(isinstance(target[p], jax.ShapeDtypeStruct) for p in replaced):
        raise AbstractHeadError(
            f"cannot load {source}: its heads have another class count and the model is "
            "abstract; pass a concrete model so its freshly initialised heads can be kept")
    logging.warning("%s: head replaced: the checkpoint has %d classes, the model %d; %s keep "
                    "their fresh initialisation", source, converted[replaced[0]][1].shape[-1],
                    target[replaced[0]].shape[-1],
                    ", ".join(path_str(p[:-1]) for p in replaced))
    keep = {tuple(str(k) for k in p) for p in replaced}
    kept, rest = nnx.split_state(state, lambda p, _x: tuple(str(k) for k in p) in keep, ...)
    for p in replaced:
        del converted[p]
    return nnx.merge_state(load(rest), jax.tree.map(lambda x: x, kept))


__all__ = ["HEAD_CONVS", "face_parsing_key", "load_face_parsing_bisenet",
           "read_face_parsing_state_dict"]
