"""Hugging Face ViT checkpoints <-> ``deepfake_jax.models.vit.ViT`` parameters.

Reads a ``ViTForImageClassification`` / ``ViTModel`` ``save_pretrained`` folder
(``model.safetensors``, possibly sharded, + ``config.json``) with ``safetensors.numpy``: no
PyTorch needed. Hub and transformers>=5 in-memory key names are both accepted. A head of another
shape stays random, position embeddings are resized bicubically, anything else that does not fit
is one ``ValueError``. ``to_hf_state_dict`` / ``save_hf_vit`` write the hub naming back.

Details: docs/models.md#deepfake_jaxweightsvit_hfpy
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
from flax import nnx

from deepfake_jax.models.vit import _VARIANTS, HF_LAYER_NORM_EPS, ViT
from deepfake_jax.weights.common import Path, convert_by_key, flatten, to_torch
from deepfake_jax.weights.vit_common import POS_EMBED, load_vit, vit_target

_IGNORED = (re.compile(r"^vit\.pooler\."), re.compile(r"^vit\.embeddings\.mask_token$"))

# transformers>=5 module names -> hub (save_pretrained) names, applied in this order
_V5_RENAMES = (
    (re.compile(r"^vit\.layers\.(\d+)\."), r"vit.encoder.layer.\1."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.attention.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.attention.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.attention.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.mlp\.fc1\."), ".intermediate.dense."),
    (re.compile(r"\.mlp\.fc2\."), ".output.dense."),
)
_BLOCK_LINEARS = {"intermediate": "intermediate.dense", "output": "output.dense"}
_ATTN_LINEARS = {"query": "attention.query", "key": "attention.key",
                 "value": "attention.value", "output": "output.dense"}


# ----------------------------------------------------------------------------- naming
def hf_key(path: Path) -> tuple[str, str]:
    """nnx param path -> (hub checkpoint key, kind); kind in raw / linear / conv."""
    p = tuple(str(k) for k in path)
    leaf = p[-1]
    w = {"kernel": "weight", "scale": "weight", "bias": "bias"}.get(leaf)
    linear = "linear" if leaf == "kernel" else "raw"
    if p in (("cls_token",), ("position_embeddings",)):
        return f"vit.embeddings.{p[0]}", "raw"
    if p[0] == "patch_embeddings" and len(p) == 2:
        return (f"vit.embeddings.patch_embeddings.projection.{w}",
                "conv" if leaf == "kernel" else "raw")
    if p[0] in ("layernorm", "classifier") and len(p) == 2:
        prefix = "vit.layernorm" if p[0] == "layernorm" else "classifier"
        return f"{prefix}.{w}", linear
    if p[0] == "encoder" and len(p) >= 4:
        base = f"vit.encoder.layer.{p[1]}"
        if p[2] in ("layernorm_before", "layernorm_after") and len(p) == 4:
            return f"{base}.{p[2]}.{w}", "raw"
        if p[2] in _BLOCK_LINEARS and len(p) == 4:
            return f"{base}.{_BLOCK_LINEARS[p[2]]}.{w}", linear
        if p[2] == "attention" and len(p) == 5 and p[3] in _ATTN_LINEARS:
            return f"{base}.attention.{_ATTN_LINEARS[p[3]]}.{w}", linear
    raise KeyError(f"no Hugging Face name for ViT parameter {'.'.join(p)}")


def normalize_hf_key(key: str) -> str:
    """Any accepted HF naming -> hub naming with the ``vit.`` prefix."""
    if not key.startswith(("vit.", "classifier.")):
        key = "vit." + key
    for pattern, repl in _V5_RENAMES:
        key = pattern.sub(repl, key)
    return key










# ----------------------------------------------------------------------------- files
def read_hf_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict | None]:
    """(tensors, config) from a ``save_pretrained`` folder or a ``.safetensors`` file.

    ``config.json`` is read from the folder (or the file's folder) when present, else None.
    """
    from safetensors.numpy import load_file

    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        single = os.path.join(path, "model.safetensors")
        index = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(single):
            files = [single]
        elif os.path.exists(index):
            with open(index) as f:
                files = sorted({os.path.join(path, v) for v in json.load(f)["weight_map"].values()})
        else:
            raise FileNotFoundError(f"no model.safetensors (or its index) in {path}")
    else:
        files = [path]
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        tensors.update(load_file(file))
    config = None
    cfg_path = os.path.join(folder, "config.json")
    if os.path.exists(cfg_path):
        with open(cfg_path) as f:
            config = json.load(f)
    return tensors, config


def vit_kwargs_from_hf_config(config: dict) -> dict:
    """``ViT(**kwargs)`` arguments reproducing an HF ``ViTConfig`` (a dict from config.json)."""
    if config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"hidden_act {config['hidden_act']!r} is not supported (only 'gelu')")
    if config.get("num_channels", 3) != 3:
        raise ValueError(f"num_channels {config['num_channels']} is not supported (only 3)")
    patch = config.get("patch_size", 16)
    if isinstance(patch, (list, tuple)):
        if patch[0] != patch[1]:
            raise ValueError(f"non-square patch_size {patch} is not supported")
        patch = patch[0]
    dims = (patch, config.get("hidden_size", 768), config.get("num_hidden_layers", 12),
            config.get("num_attention_heads", 12), config.get("intermediate_size", 3072))
    variant = next((k for k, v in _VARIANTS.items() if v == dims), "B/16")
    kwargs = dict(variant=variant, patch_size=dims[0], hidden_size=dims[1], num_layers=dims[2],
                  num_heads=dims[3], mlp_dim=dims[4], image_size=config.get("image_size", 224),
                  layer_norm_eps=config.get("layer_norm_eps", HF_LAYER_NORM_EPS),
                  qkv_bias=config.get("qkv_bias", True),
                  dropout=config.get("hidden_dropout_prob", 0.0),
                  attention_dropout=config.get("attention_probs_dropout_prob", 0.0))
    if "id2label" in config:
        kwargs["num_classes"] = len(config["id2label"])
    elif "num_labels" in config:
        kwargs["num_classes"] = config["num_labels"]
    return kwargs


def _check_config(model: ViT, config: dict) -> list[str]:
    problems = []
    if config.get("hidden_act", "gelu") != "gelu":
        problems.append(f"config hidden_act={config['hidden_act']!r}; this ViT uses exact gelu")
    eps = config.get("layer_norm_eps", HF_LAYER_NORM_EPS)
    if not np.isclose(eps, model.layer_norm_eps, rtol=1e-6, atol=0):
        problems.append(f"config layer_norm_eps={eps} but the model uses "
                        f"{model.layer_norm_eps} (build it with layer_norm_eps={eps})")
    if config.get("num_channels", 3) != 3:
        problems.append(f"config num_channels={config['num_channels']}; this ViT takes 3")
    return problems


# ----------------------------------------------------------------------------- import
def load_hf_vit(model_or_state: ViT | nnx.State, path: str, *,
                config: dict | None = None, strict: bool = True) -> nnx.State:
    """Params (an ``nnx.State`` like ``nnx.state(model, nnx.Param)``) from an HF checkpoint.

    ``model_or_state``: a ``ViT`` (concrete or from ``nnx.eval_shape``) or its param state;
    the model itself is not changed -- apply with ``nnx.update(model, params)``. ``path``: a
    ``save_pretrained`` folder or a ``.safetensors`` file. See the module docstring for the
    head / position-embedding rules and the errors (``strict=False``: problems are logged and
    the model keeps its own values where nothing fits).
    """
    tensors, file_config = read_hf_checkpoint(path)
    config = config if config is not None else file_config
    model, state = vit_target(model_or_state)
    problems: list[str] = []
    if model is not None and config is not None:
        problems += _check_config(model, config)
    converted, unexpected = convert_by_key(state, tensors, hf_key, normalize_hf_key,
                                           ignored=_IGNORED)
    ckpt_grid = (_ckpt_grid(config, converted[POS_EMBED][1]) if POS_EMBED in converted
                 else None)
    return load_vit(model_or_state, converted, source=f"Hugging Face ViT checkpoint {path}",
                    key_name=lambda p: hf_key(p)[0], unexpected=unexpected, problems=problems,
                    ckpt_grid=ckpt_grid, strict=strict)


def _ckpt_grid(config: dict | None, posemb: np.ndarray) -> tuple[int, int] | None:
    if config is None:
        return None
    size, patch = config.get("image_size", 224), config.get("patch_size", 16)
    size = size if isinstance(size, (list, tuple)) else (size, size)
    patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
    grid = (size[0] // patch[0], size[1] // patch[1])
    return grid if grid[0] * grid[1] == posemb.shape[1] - 1 else None


def hf_model_kwargs(path: str, kwargs_from_config, num_classes: int | None, overrides: dict
                    ) -> tuple[str, dict, dict]:
    """(variant, constructor kwargs, config) of the model a HF checkpoint's `config.json`
    describes (`kwargs_from_config`), `num_classes` and `overrides` replacing its values."""
    _, config = read_hf_checkpoint(path)
    if config is None:
        raise FileNotFoundError(f"no config.json next to {path}")
    kwargs = kwargs_from_config(config)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    kwargs.update(overrides)
    return kwargs.pop("variant"), kwargs, config


def create_vit_from_hf(path: str, num_classes: int | None = None, *, rngs: nnx.Rngs,
                       **overrides) -> ViT:
    """A ``ViT`` shaped by the checkpoint's ``config.json``, with its weights loaded.

    ``num_classes`` (default: the checkpoint's) and ``overrides`` (e.g. ``image_size``,
    ``dropout``, ``drop_path``, ``dtype``) replace the config's values.
    """
    variant, kwargs, config = hf_model_kwargs(path, vit_kwargs_from_hf_config, num_classes,
                                              overrides)
    model = ViT(variant, rngs=rngs, **kwargs)
    nnx.update(model, load_hf_vit(model, path, config=config))
    return model


# ----------------------------------------------------------------------------- export
def to_hf_state_dict(model_or_state: ViT | nnx.State) -> dict[str, np.ndarray]:
    """Params in hub naming and PyTorch layouts (float arrays), e.g. for ``save_file``."""
    state = (nnx.state(model_or_state, nnx.Param)
             if isinstance(model_or_state, nnx.Module) else model_or_state)
    out = {}
    for p, v in flatten(nnx.to_pure_dict(state)).items():
        key, kind = hf_key(p)
        out[key] = np.ascontiguousarray(to_torch(np.asarray(v), kind))
    return out


def hf_config_for(model: ViT) -> dict:
    """A ``config.json`` dict for ``ViTForImageClassification`` matching ``model``."""
    block = model.encoder[0]
    return {
        "architectures": ["ViTForImageClassification"],
        "model_type": "vit",
        "hidden_size": model.num_features,
        "num_hidden_layers": len(model.encoder),
        "num_attention_heads": block.attention.num_heads,
        "intermediate_size": block.intermediate.out_features,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": model.layer_norm_eps,
        "image_size": list(model.image_size) if model.image_size[0] != model.image_size[1]
        else model.image_size[0],
        "patch_size": model.patch_size,
        "num_channels": 3,
        "qkv_bias": block.attention.query.bias is not None,
        "id2label": {str(i): f"LABEL_{i}" for i in range(model.num_classes)},
        "label2id": {f"LABEL_{i}": i for i in range(model.num_classes)},
    }


def save_hf_vit(model: ViT, folder: str) -> None:
    """Write ``model.safetensors`` + ``config.json`` as ``save_pretrained`` would."""
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    save_file(to_hf_state_dict(model), os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(hf_config_for(model), f, indent=2)
