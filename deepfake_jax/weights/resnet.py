"""torchvision / timm / Hugging Face ResNet checkpoints -> ``deepfake_jax.models.resnet.ResNet``.

``load_torchvision_resnet`` (torchvision / timm ``resnet18``..``152`` state dicts:
``.safetensors``, ``.pth`` with PyTorch installed, or a mapping) and ``load_hf_resnet``
(``ResNetForImageClassification`` folders) return ONE ``nnx.State`` with the parameters and the
BatchNorm statistics; apply with ``nnx.update(model, state)``. A checkpoint head of another shape
(or none) keeps the model's random head; every other missing or unexpected key and shape mismatch
is one ``ValueError`` (``strict=False``: logged).

Details (key tables, HF config checks): docs/models.md#deepfake_jaxweightsresnetpy
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx

from deepfake_jax.models.resnet import _VARIANTS, Bottleneck, ResNet
from deepfake_jax.weights.common import (
    AbstractHeadError,
    Path,
    assign,
    convert_by_key,
    read_state_dict,
)

_BN_LEAVES = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}


# ----------------------------------------------------------------------------- naming
def torchvision_key(path: Path) -> tuple[str, str]:
    """nnx state path -> (torchvision state_dict key, kind); kind in raw / linear / conv."""
    p = tuple(str(k) for k in path)
    leaf = p[-1]
    if p == ("fc", "kernel"):
        return "fc.weight", "linear"
    if p == ("fc", "bias"):
        return "fc.bias", "raw"
    if len(p) == 2 and p[0] == "conv1" and leaf == "kernel":
        return "conv1.weight", "conv"
    if len(p) == 2 and p[0] == "bn1" and leaf in _BN_LEAVES:
        return f"bn1.{_BN_LEAVES[leaf]}", "raw"
    if len(p) == 4 and re.fullmatch(r"layer[1-4]", p[0]):
        base = f"{p[0]}.{p[1]}"
        mod = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p[2], p[2])
        if leaf == "kernel" and re.fullmatch(r"conv\d|downsample\.0", mod):
            return f"{base}.{mod}.weight", "conv"
        if leaf in _BN_LEAVES and re.fullmatch(r"bn\d|downsample\.1", mod):
            return f"{base}.{mod}.{_BN_LEAVES[leaf]}", "raw"
    raise KeyError(f"no torchvision name for ResNet variable {'.'.join(p)}")


def hf_key(path: Path) -> tuple[str, str]:
    """nnx state path -> (Hugging Face ``ResNetForImageClassification`` key, kind)."""
    key, kind = torchvision_key(path)
    return _tv_to_hf(key), kind


def _tv_to_hf(key: str) -> str:
    if key.startswith("fc."):
        return "classifier.1." + key[3:]
    if key.startswith(("conv1.", "bn1.")):
        mod, leaf = key.split(".", 1)
        sub = "convolution" if mod == "conv1" else "normalization"
        return f"resnet.embedder.embedder.{sub}.{leaf}"
    m = re.fullmatch(r"layer(\d)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(.+)", key)
    if m is None:
        raise KeyError(key)
    stage, block, mod, idx, leaf = m.groups()
    base = f"resnet.encoder.stages.{int(stage) - 1}.layers.{block}"
    if mod == "downsample.":
        sub = "convolution" if idx == "0" else "normalization"
        return f"{base}.shortcut.{sub}.{leaf}"
    sub = "convolution" if mod == "conv" else "normalization"
    return f"{base}.layer.{int(idx) - 1}.{sub}.{leaf}"


def normalize_hf_key(key: str) -> str:
    """HF ``ResNetModel`` / ``ResNetBackbone`` naming (no ``resnet.`` prefix) -> hub naming."""
    if not key.startswith(("resnet.", "classifier.")):
        key = "resnet." + key
    return key








# ----------------------------------------------------------------------------- files
read_torchvision_state_dict = read_state_dict  # the generic reader (wrappers, module. prefix)


# ----------------------------------------------------------------------------- config
def _arch(model: ResNet) -> dict:
    kind = "bottleneck" if isinstance(model.layer1[0], Bottleneck) else "basic"
    expansion = 4 if kind == "bottleneck" else 1
    width = model.bn1.num_features
    return dict(layer_type=kind, depths=[len(getattr(model, f"layer{i}")) for i in range(1, 5)],
                embedding_size=width, hidden_sizes=[width * 2**i * expansion for i in range(4)])


def check_hf_config(model: ResNet, config: Mapping) -> list[str]:
    """Problems (one string per config field) where an HF ``ResNetConfig`` is not ``model``."""
    problems = []
    fixed = {"downsample_in_bottleneck": (False, "the model strides the 3x3 conv of a bottleneck "
                                          "(torchvision v1.5); True strides the first 1x1"),
             "downsample_in_first_stage": (False, "the model's first stage does not downsample"),
             "hidden_act": ("relu", "the model uses relu"),
             "num_channels": (3, "the model takes 3 input channels")}
    arch = _arch(model)
    for field, (want, why) in fixed.items():
        if field == "downsample_in_bottleneck" and arch["layer_type"] != "bottleneck":
            continue
        if field in config and config[field] != want:
            problems.append(f"config {field}={config[field]!r} is not supported: {why}")
    for field, want in arch.items():
        if field in config and list(np.atleast_1d(config[field])) != list(np.atleast_1d(want)):
            problems.append(f"config {field}={config[field]!r} but the model has {want!r}")
    if getattr(model, "stem", "imagenet") != "imagenet":
        problems.append(f"the model uses stem={model.stem!r}; HF ResNet has the ImageNet stem "
                        "(7x7/2 conv + 3x3/2 max-pool)")
    return problems


def resnet_kwargs_from_hf_config(config: Mapping) -> dict:
    """``ResNet(**kwargs)`` arguments reproducing an HF ``ResNetConfig`` (config.json dict)."""
    kind = config.get("layer_type", "bottleneck")
    depths = tuple(config.get("depths", (3, 4, 6, 3)))
    width = config.get("embedding_size", 64)
    variant = next((v for v, (k, d, w) in _VARIANTS.items()
                    if k == kind and d == depths and w in (None, width)), None)
    if variant is None:
        raise ValueError(f"config layer_type={kind!r}, depths={list(depths)} match no ResNet "
                         f"variant here ({', '.join(_VARIANTS)})")
    kwargs: dict = dict(variant=variant, width=width)
    if "id2label" in config:
        kwargs["num_classes"] = len(config["id2label"])
    elif "num_labels" in config:
        kwargs["num_classes"] = config["num_labels"]
    return kwargs


# ----------------------------------------------------------------------------- import
def _target_state(model_or_state: ResNet | nnx.State) -> tuple[ResNet | None, nnx.State]:
    if isinstance(model_or_state, nnx.Module):
        return model_or_state, nnx.state(model_or_state, nnx.Any(nnx.Param, nnx.BatchStat))
    return None, model_or_state


def _load(model_or_state, tensors: Mapping[str, np.ndarray], key_fn, *, source: str,
          problems: list[str], normalize=lambda k: k, strict: bool = True) -> nnx.State:
    _, state = _target_state(model_or_state)
    converted, unexpected = convert_by_key(state, tensors, key_fn, normalize)
    return assign(state, converted, source=source, key_name=lambda p: key_fn(p)[0],
                  head=("fc",), unexpected=unexpected, problems=problems, strict=strict,
                  family="ResNet import")


def load_torchvision_resnet(model_or_state: ResNet | nnx.State,
                            path: str | Mapping[str, Any], *, strict: bool = True) -> nnx.State:
    """Params + BatchNorm stats (one ``nnx.State``) from a torchvision / timm ``state_dict``.

    ``model_or_state``: a ``ResNet`` (concrete or from ``nnx.eval_shape``) or its
    ``nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))``. ``path``: ``.safetensors``,
    ``.pth``/``.pt`` (needs torch) or a mapping. Apply with ``nnx.update(model, result)``.
    """
    tensors = read_torchvision_state_dict(path)
    name = "<state dict>" if isinstance(path, Mapping) else str(path)
    return _load(model_or_state, tensors, torchvision_key,
                 source=f"torchvision ResNet state dict {name}", problems=[], strict=strict)


def load_hf_resnet(model_or_state: ResNet | nnx.State, path: str, *,
                   config: Mapping | None = None, strict: bool = True) -> nnx.State:
    """Params + BatchNorm stats (one ``nnx.State``) from an HF ``ResNetForImageClassification``.

    ``path``: a ``save_pretrained`` folder (``config.json`` + ``model.safetensors``) or a
    ``.safetensors`` file; ``config`` overrides the folder's config.json. The config is checked
    against the model when both a model and a config are available. Apply with
    ``nnx.update(model, result)``.
    """
    from deepfake_jax.weights.vit_hf import read_hf_checkpoint

    tensors, file_config = read_hf_checkpoint(path)
    config = config if config is not None else file_config
    model, _ = _target_state(model_or_state)
    problems: list[str] = []
    if model is not None and config is not None:
        problems += check_hf_config(model, config)
    elif config is None:
        logging.warning("ResNet import: no config.json for %s; downsample_in_bottleneck is "
                        "assumed False (stride on the 3x3 conv) and cannot be checked", path)
    return _load(model_or_state, tensors, hf_key, source=f"Hugging Face ResNet checkpoint {path}",
                 problems=problems, normalize=normalize_hf_key, strict=strict)


def create_resnet_from_hf(path: str, num_classes: int | None = None, *, rngs: nnx.Rngs,
                          **overrides) -> ResNet:
    """A ``ResNet`` shaped by the checkpoint's ``config.json``, with weights and BN stats.

    ``num_classes`` (default: the checkpoint's) and ``overrides`` (e.g. ``dtype``,
    ``bn_momentum``) replace the config's values. When the checkpoint covers every variable the
    model is built abstractly and filled (no random init); otherwise (head kept random) it is
    initialised with ``rngs`` first.
    """
    from deepfake_jax.weights.vit_hf import hf_model_kwargs

    variant, kwargs, config = hf_model_kwargs(path, resnet_kwargs_from_hf_config, num_classes,
                                              overrides)
    abstract = nnx.eval_shape(lambda: ResNet(variant, rngs=nnx.Rngs(0), **kwargs))
    try:
        return nnx.merge(nnx.graphdef(abstract), load_hf_resnet(abstract, path, config=config))
    except AbstractHeadError:
        model = ResNet(variant, rngs=rngs, **kwargs)
        nnx.update(model, load_hf_resnet(model, path, config=config))
        return model


__all__ = [
    "AbstractHeadError", "check_hf_config", "create_resnet_from_hf", "hf_key", "load_hf_resnet",
    "load_torchvision_resnet", "normalize_hf_key", "read_torchvision_state_dict",
    "resnet_kwargs_from_hf_config", "torchvision_key",
]
