"""What the ViT importers (Hugging Face, timm, big_vision) share.

Each importer maps its checkpoint's tensors to our state paths in our layouts; ``load_vit``
then fits them into the model with ``common.assign``: the classifier head is replaced (kept
from the model) when the class count differs or the checkpoint has none, and the position
embeddings are fitted to the model's patch grid:

* a table without a class-token slot ``(1, N, D)`` (timm ``no_embed_class``, big_vision,
  which add the table to the patch tokens *before* prepending the class token) gets a zero
  row for the class token -- the same function, since ``cls + 0 = cls``;
* another grid is resized bicubically (``models.vit.resize_pos_embed``, as HF's
  ``interpolate_pos_encoding``; timm resizes bilinearly/bicubic with antialias, so numbers
  differ slightly from timm's own resize but the weights are the same otherwise).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from flax import nnx

from deepfake_jax.models.vit import ViT, resize_pos_embed
from deepfake_jax.weights.common import Path, assign

POS_EMBED: Path = ("position_embeddings",)
TIMM_LAYER_NORM_EPS = 1e-6  # timm's and big_vision's (flax) LayerNorm epsilon


def vit_target(model_or_state: ViT | nnx.State) -> tuple[ViT | None, nnx.State]:
    """(model or None, its ``nnx.Param`` state)."""
    if isinstance(model_or_state, nnx.Module):
        return model_or_state, nnx.state(model_or_state, nnx.Param)
    return None, model_or_state


def model_grid(model: ViT | None, want: Sequence[int]) -> tuple[int, int]:
    """The model's patch grid (a square one inferred from the table when no model is given)."""
    if model is not None:
        return tuple(model.grid)
    side = math.isqrt(want[1] - 1)
    return side, side


def fit_pos_embed(value: np.ndarray, want: Sequence[int], *, model: ViT | None,
                  ckpt_grid: tuple[int, int] | None = None) -> np.ndarray:
    """Checkpoint position embeddings -> the model's ``(1, 1 + gh*gw, D)`` table."""
    if value.ndim == 2:
        value = value[None]
    if value.ndim != 3 or value.shape[-1] != want[-1]:
        return value  # reported as a shape mismatch
    n = value.shape[1]
    if math.isqrt(n) ** 2 == n and n != want[1]:  # no class-token slot (n*n + 1 is no square)
        value = np.concatenate([np.zeros_like(value[:, :1]), value], axis=1)
        logging.info("ViT import: position embeddings have no class-token row; a zero row added")
    if value.shape[1] != want[1]:
        old = value.shape
        value = np.asarray(resize_pos_embed(value, model_grid(model, want), old_grid=ckpt_grid))
        logging.info("ViT import: position embeddings resized %s -> %s", old, value.shape)
    return value


def load_vit(model_or_state: ViT | nnx.State, converted: Mapping[Path, tuple[str, np.ndarray]],
             *, source: str, key_name: Callable[[Path], str], unexpected: Sequence[str] = (),
             problems: Sequence[str] = (), ckpt_grid: tuple[int, int] | None = None,
             strict: bool = True) -> nnx.State:
    """Params (an ``nnx.State``) from tensors already mapped to our paths and layouts."""
    model, state = vit_target(model_or_state)

    def adjust(p: Path, value: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
        if p != POS_EMBED:
            return value
        return fit_pos_embed(value, want, model=model, ckpt_grid=ckpt_grid)

    return assign(state, converted, source=source, key_name=key_name, head=ViT.HEAD_MODULES,
                  unexpected=unexpected, problems=problems, adjust=adjust, strict=strict,
                  family="ViT import")


def warn_layer_norm_eps(model: ViT | None, eps: float, source: str) -> None:
    """timm / big_vision checkpoints carry no config: a differing epsilon is only warned about
    (outputs differ by ~eps / variance, tiny once training starts)."""
    if model is not None and not np.isclose(model.layer_norm_eps, eps, rtol=1e-6, atol=0):
        logging.warning("ViT import: %s was trained with LayerNorm eps=%g but the model uses %g; "
                        "build it with layer_norm_eps=%g for identical outputs", source, eps,
                        model.layer_norm_eps, eps)
