"""timm ``vit_*`` state dicts <-> ``deepfake_jax.models.vit.ViT`` parameters.

Reads a timm ``VisionTransformer`` state dict (``.safetensors`` without PyTorch, ``.pth`` /
``.bin`` with it, or a mapping); the fused ``qkv`` is split into query / key / value. Build the
model with ``layer_norm_eps=1e-6`` (timm's). Head replacement and position-embedding fitting as
in ``vit_common``; ``fc_norm``, register tokens, LayerScale, ``norm_pre``, MAP heads and q/k
norms are not representable and are errors that say why.

Details: docs/models.md#deepfake_jaxweightsvit_timmpy
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from deepfake_jax.models.vit import ViT
from deepfake_jax.weights.common import Path, flatten, read_state_dict, to_ours, to_torch
from deepfake_jax.weights.vit_common import (
    TIMM_LAYER_NORM_EPS,
    load_vit,
    vit_target,
    warn_layer_norm_eps,
)

_QKV = {"query": 0, "key": 1, "value": 2}
_BLOCK_MODULES = {"layernorm_before": "norm1", "layernorm_after": "norm2",
                  "intermediate": "mlp.fc1", "output": "mlp.fc2"}
_TOP_MODULES = {"patch_embeddings": "patch_embed.proj", "layernorm": "norm", "classifier": "head"}
# timm features this ViT does not have -> why (matched against checkpoint keys)
_UNSUPPORTED = (
    (re.compile(r"^fc_norm\."), "fc_norm: the checkpoint normalises *after* global average "
     "pooling (timm global_pool='avg'); this ViT's pool='gap' normalises the tokens before "
     "pooling, a different function"),
    (re.compile(r"^reg_token$"), "reg_token: register tokens (timm *_reg models) are not "
     "supported"),
    (re.compile(r"\.ls[12]\.gamma$"), "LayerScale (blocks.i.ls1/ls2.gamma) is not supported"),
    (re.compile(r"^norm_pre\."), "norm_pre: a LayerNorm before the blocks (CLIP-style) is not "
     "supported"),
    (re.compile(r"^attn_pool\."), "attn_pool: the MAP attention-pooling head is not supported"),
    (re.compile(r"\.attn\.[qk]_norm\."), "q/k LayerNorms (qk_norm) are not supported"),
)


def timm_key(path: Path) -> tuple[str, str, int | None]:
    """nnx param path -> (timm key, kind, part of the fused qkv or None)."""
    p = tuple(str(k) for k in path)
    leaf = p[-1]
    w = {"kernel": "weight", "scale": "weight", "bias": "bias"}.get(leaf)
    linear = "linear" if leaf == "kernel" else "raw"
    if p == ("cls_token",):
        return "cls_token", "raw", None
    if p == ("position_embeddings",):
        return "pos_embed", "raw", None
    if len(p) == 2 and p[0] in _TOP_MODULES:
        kind = "conv" if p[0] == "patch_embeddings" and leaf == "kernel" else linear
        return f"{_TOP_MODULES[p[0]]}.{w}", kind, None
    if p[0] == "encoder" and len(p) == 4 and p[2] in _BLOCK_MODULES:
        kind = "raw" if p[2].startswith("layernorm") else linear
        return f"blocks.{p[1]}.{_BLOCK_MODULES[p[2]]}.{w}", kind, None
    if p[0] == "encoder" and len(p) == 5 and p[2] == "attention":
        if p[3] in _QKV:
            return f"blocks.{p[1]}.attn.qkv.{w}", linear, _QKV[p[3]]
        if p[3] == "output":
            return f"blocks.{p[1]}.attn.proj.{w}", linear, None
    raise KeyError(f"no timm name for ViT parameter {'.'.join(p)}")


def _key_name(path: Path) -> str:
    key, _, part = timm_key(path)
    return key if part is None else f"{key}[{'qkv'[part]}]"


def load_timm_vit(model_or_state: ViT | nnx.State, path: str | Mapping[str, Any], *,
                  strict: bool = True) -> nnx.State:
    """Params (an ``nnx.State``) from a timm ``VisionTransformer`` state dict.

    ``model_or_state``: a ``ViT`` (concrete, or abstract when the head fits) or its
    ``nnx.Param`` state; not changed -- apply with ``nnx.update(model, params)``. ``path``:
    ``.safetensors``, ``.pth``/``.bin`` (needs torch) or a mapping of arrays/tensors.
    """
    tensors = read_state_dict(path)
    source = f"timm ViT state dict {'<state dict>' if isinstance(path, Mapping) else path}"
    model, state = vit_target(model_or_state)
    warn_layer_norm_eps(model, TIMM_LAYER_NORM_EPS, source)
    table: dict[str, list[tuple[Path, str, int | None]]] = {}
    for p in flatten(nnx.to_pure_dict(state)):
        key, kind, part = timm_key(p)
        table.setdefault(key, []).append((p, kind, part))

    problems = sorted({why for key in tensors for pattern, why in _UNSUPPORTED
                       if pattern.search(key)})
    converted: dict[Path, tuple[str, np.ndarray]] = {}
    unexpected = []
    for key, value in tensors.items():
        if key not in table:
            unexpected.append(key)
            continue
        value = np.asarray(value)
        for p, kind, part in table[key]:
            if part is not None:
                if value.shape[0] % 3:
                    problems.append(f"{key}: fused qkv of shape {value.shape} does not split "
                                    "into 3 equal parts")
                    break
                value_part = np.split(value, 3, axis=0)[part]
                converted[p] = (f"{key}[{'qkv'[part]}]", to_ours(value_part, kind))
            else:
                converted[p] = (key, to_ours(value, kind))
    return load_vit(model_or_state, converted, source=source, key_name=_key_name,
                    unexpected=unexpected, problems=problems, strict=strict)


def to_timm_state_dict(model_or_state: ViT | nnx.State) -> dict[str, np.ndarray]:
    """Params in timm naming and PyTorch layouts (qkv fused), e.g. for ``save_file``."""
    _, state = vit_target(model_or_state)
    out: dict[str, np.ndarray] = {}
    parts: dict[str, list] = {}
    for p, v in flatten(nnx.to_pure_dict(state)).items():
        key, kind, part = timm_key(p)
        v = to_torch(np.asarray(v), kind)
        if part is None:
            out[key] = np.ascontiguousarray(v)
        else:
            parts.setdefault(key, [None] * 3)[part] = v
    for key, (q, k, v) in parts.items():
        out[key] = np.ascontiguousarray(np.concatenate([q, k, v], axis=0))
    return out


__all__ = ["load_timm_vit", "timm_key", "to_timm_state_dict"]
