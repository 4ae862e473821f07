"""big_vision / original (google-research/vision_transformer) ViT ``.npz`` checkpoints.

Flat ``np.savez`` archives of the Flax tree (keys joined by ``/``, optionally under
``opt/target/``, ``params/`` or ``params/img/``); kernels are already in our layouts, the
per-head attention projections are reshaped, scanned blocks are read too. Build the model with
``layer_norm_eps=1e-6``. The head is replaced when the class count differs or the file has
none; a ``pre_logits`` layer, no class token and a ``MAPHead_0`` are errors that say why.
``save_vit_npz`` writes the original layout.

Details: docs/models.md#deepfake_jaxweightsvit_big_visionpy
"""

from __future__ import annotations

import re

import numpy as np
from flax import nnx

from deepfake_jax.models.vit import ViT
from deepfake_jax.weights.common import Path, flatten
from deepfake_jax.weights.vit_common import (
    TIMM_LAYER_NORM_EPS,
    load_vit,
    vit_target,
    warn_layer_norm_eps,
)

_PREFIXES = ("opt/target/", "params/img/", "params/", "")
_BLOCK = re.compile(r"^Transformer/encoderblock(?:_(\d+))?/(.+)$")
_LEAF = {"kernel": "kernel", "scale": "scale", "bias": "bias"}
_UNSUPPORTED = (
    (re.compile(r"^pre_logits/"), "pre_logits: the checkpoint has a representation layer "
     "(Dense D->D + tanh before the head, original ImageNet-21k ViT checkpoints) that this ViT "
     "lacks; drop it knowingly with strict=False (the head then sees other features), or use "
     "a checkpoint without it"),
    (re.compile(r"^MAPHead_0/"), "MAPHead_0: the attention-pooling (MAP) head is not supported"),
)


def _block_names(big_vision: bool) -> dict[str, str]:
    """Checkpoint module inside a block -> our module."""
    if big_vision:
        return {"LayerNorm_0": "layernorm_before", "MultiHeadDotProductAttention_0": "attention",
                "LayerNorm_1": "layernorm_after", "MlpBlock_0": "mlp"}
    return {"LayerNorm_0": "layernorm_before", "MultiHeadDotProductAttention_1": "attention",
            "LayerNorm_2": "layernorm_after", "MlpBlock_3": "mlp"}


def read_npz(path: str) -> tuple[dict[str, np.ndarray], str]:
    """(params without prefix, the prefix found) of a ViT ``.npz`` checkpoint."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    for prefix in _PREFIXES:
        if f"{prefix}embedding/kernel" in arrays:
            return {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}, prefix
    raise ValueError(f"{path} is not a ViT .npz checkpoint: no embedding/kernel under any of the "
                     f"prefixes {', '.join(repr(p) for p in _PREFIXES)}; it has "
                     f"{', '.join(sorted(arrays)[:10])}{' ...' if len(arrays) > 10 else ''}")


def _block_param(block: str, sub: str, value: np.ndarray, names: dict[str, str]
                 ) -> tuple[Path, np.ndarray] | None:
    """One block entry (``LayerNorm_0/scale`` ...) -> (path inside the block, value) or None."""
    parts = sub.split("/")
    module = names.get(parts[0])
    if module is None:
        return None
    if module in ("layernorm_before", "layernorm_after") and len(parts) == 2 \
            and parts[1] in ("scale", "bias"):
        return ("encoder", int(block), module, parts[1]), value
    if module == "mlp" and len(parts) == 3 and parts[1] in ("Dense_0", "Dense_1") \
            and parts[2] in ("kernel", "bias"):
        ours = "intermediate" if parts[1] == "Dense_0" else "output"
        return ("encoder", int(block), ours, parts[2]), value
    if module == "attention" and len(parts) == 3 and parts[2] in ("kernel", "bias"):
        proj, leaf = parts[1], parts[2]
        if proj in ("query", "key", "value"):  # kernel (D, H, d), bias (H, d)
            value = value.reshape(value.shape[0], -1) if leaf == "kernel" else value.reshape(-1)
            return ("encoder", int(block), "attention", proj, leaf), value
        if proj == "out":  # kernel (H, d, D), bias (D,)
            value = value.reshape(-1, value.shape[-1]) if leaf == "kernel" else value
            return ("encoder", int(block), "attention", "output", leaf), value
    return None


def _top_param(key: str, value: np.ndarray) -> Path | None:
    if key == "cls":
        return ("cls_token",)
    if key in ("Transformer/posembed_input/pos_embedding", "pos_embedding"):
        return ("position_embeddings",)
    for ckpt, ours in (("embedding", "patch_embeddings"), ("Transformer/encoder_norm",
                                                            "layernorm"), ("head", "classifier")):
        if key.startswith(ckpt + "/") and key[len(ckpt) + 1:] in _LEAF:
            return (ours, key[len(ckpt) + 1:])
    return None


def npz_key(path: Path) -> str:
    """nnx param path -> key in the original (google-research) layout, for messages/export."""
    p = tuple(str(k) for k in path)
    if p == ("cls_token",):
        return "cls"
    if p == ("position_embeddings",):
        return "Transformer/posembed_input/pos_embedding"
    top = {"patch_embeddings": "embedding", "layernorm": "Transformer/encoder_norm",
           "classifier": "head"}
    if len(p) == 2 and p[0] in top:
        return f"{top[p[0]]}/{p[1]}"
    if p[0] == "encoder":
        base = f"Transformer/encoderblock_{p[1]}"
        mods = {"layernorm_before": "LayerNorm_0", "layernorm_after": "LayerNorm_2",
                "intermediate": "MlpBlock_3/Dense_0", "output": "MlpBlock_3/Dense_1"}
        if len(p) == 4 and p[2] in mods:
            return f"{base}/{mods[p[2]]}/{p[3]}"
        if len(p) == 5 and p[2] == "attention":
            proj = "out" if p[3] == "output" else p[3]
            return f"{base}/MultiHeadDotProductAttention_1/{proj}/{p[4]}"
    raise KeyError(f"no .npz name for ViT parameter {'.'.join(p)}")


def load_big_vision_vit(model_or_state: ViT | nnx.State, path: str, *,
                        strict: bool = True) -> nnx.State:
    """Params (an ``nnx.State``) from a big_vision / original ViT ``.npz`` checkpoint.

    ``model_or_state``: a ``ViT`` (concrete, or abstract when the head fits) or its
    ``nnx.Param`` state; not changed -- apply with ``nnx.update(model, params)``.
    """
    arrays, prefix = read_npz(path)
    source = f"ViT .npz checkpoint {path}"
    model, _ = vit_target(model_or_state)
    warn_layer_norm_eps(model, TIMM_LAYER_NORM_EPS, source)
    scanned = any(k.startswith("Transformer/encoderblock/") for k in arrays)
    big_vision = prefix.startswith("params/") or "pos_embedding" in arrays or scanned
    names = _block_names(big_vision)

    problems = sorted({why for key in arrays for pattern, why in _UNSUPPORTED
                       if pattern.search(key)})
    if "cls" not in arrays:
        problems.append("no class token (cls): a big_vision pool_type='gap'/'map' model runs "
                        "without one, but this ViT always prepends a class token")
    converted: dict[Path, tuple[str, np.ndarray]] = {}
    unexpected = []
    for key, value in arrays.items():
        m = _BLOCK.match(key)
        if m is None:
            p = _top_param(key, value)
            if p is None:
                unexpected.append(prefix + key)
            else:
                converted[p] = (prefix + key, value)
            continue
        index, sub = m.groups()
        layers = [(index, value)] if index is not None else list(enumerate(value))
        for i, v in layers:
            found = _block_param(str(i), sub, np.asarray(v), names)
            name = prefix + key + ("" if index is not None else f"[{i}]")
            if found is None:
                unexpected.append(name)
            else:
                converted[found[0]] = (name, found[1])
    return load_vit(model_or_state, converted, source=source, key_name=npz_key,
                    unexpected=unexpected, problems=problems, strict=strict)


def to_vit_npz_dict(model_or_state: ViT | nnx.State) -> dict[str, np.ndarray]:
    """Params in the original ViT ``.npz`` layout (per-head attention shapes)."""
    model, state = vit_target(model_or_state)
    params = flatten(nnx.to_pure_dict(state))
    d = params[("cls_token",)].shape[-1]
    heads = model.encoder[0].attention.num_heads if model is not None else None
    out = {}
    for p, v in params.items():
        v = np.asarray(v)
        if p[0] == "encoder" and p[2] == "attention":
            if heads is None:
                raise ValueError("exporting attention weights per head needs the model, "
                                 "not only its state")
            if p[3] == "output":
                v = v.reshape(heads, d // heads, d) if p[4] == "kernel" else v
            else:
                v = v.reshape(d, heads, d // heads) if p[4] == "kernel" else \
                    v.reshape(heads, d // heads)
        out[npz_key(p)] = np.ascontiguousarray(v)
    return out


def save_vit_npz(model: ViT, path: str) -> None:
    """Write ``model``'s params as an original-layout ViT ``.npz`` (readable by timm's
    ``_load_weights`` and by ``load_big_vision_vit``)."""
    np.savez(path, **to_vit_npz_dict(model))


__all__ = ["load_big_vision_vit", "npz_key", "read_npz", "save_vit_npz", "to_vit_npz_dict"]
