"""Where a detector looked: Grad-CAM for the CNNs, attention rollout for ViT, overlays, and the
share of a heatmap falling on each face region.

    maps = heatmaps(model, images)              # (N, H, W) in [0, 1], images as the model takes
    png = overlay(image_uint8, maps[0])         # uint8 RGB, the heatmap in a colormap on top
    shares = region_shares(maps[0], label_map)  # {"eyes": (heat share, area share), ...}

Grad-CAM differentiates `model.head(model.pool_feature_map(model.feature_map(x)))`; rollout
multiplies the head-averaged attentions (+ identity) over the blocks. Every map is divided by
its own maximum. Details: docs/evaluation.md (Module reference).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deepfake_jax.data import normalization
from deepfake_jax.parsing import parser
from deepfake_jax.parsing.classes import PARSING_CLASSES
from deepfake_jax.parsing.label_maps import resize_labels

# Face regions as groups of the 19 CelebAMask-HQ classes (`PARSING_CLASSES`); every class
# belongs to exactly one group, so the shares of a label map sum to 1.
REGION_GROUPS: dict[str, tuple[str, ...]] = {
    "eyes": ("l_eye", "r_eye", "eye_g"),
    "brows": ("l_brow", "r_brow"),
    "nose": ("nose",),
    "lips": ("u_lip", "l_lip", "mouth"),
    "skin": ("skin",),
    "hair": ("hair",),
    "background": ("background",),
    "others": ("l_ear", "r_ear", "ear_r", "neck", "neck_l", "cloth", "hat"),
}
TARGETS = ("fake", "real")


def _is_vit(model) -> bool:
    return hasattr(model, "attention_maps") and hasattr(model, "pool_tokens")


def _has_grad_cam_hooks(model) -> bool:
    return hasattr(model, "feature_map") and hasattr(model, "pool_feature_map")


def check_heatmap_support(model) -> None:
    """ValueError unless `model` (an abstract one is enough) has an explanation: attention
    rollout (ViT) or Grad-CAM (a CNN family with `feature_map` / `pool_feature_map`)."""
    if _is_vit(model) or _has_grad_cam_hooks(model):
        return
    raise ValueError(f"{type(model).__name__} has no heatmap: attention rollout needs a ViT and "
                     "Grad-CAM a CNN family (resnet, densenet, xception, vgg, cnn) with "
                     "feature_map/pool_feature_map")


def _check_images(images) -> None:
    if getattr(images, "ndim", None) != 4:
        raise ValueError(f"images must be a (N, H, W, C) batch, got shape "
                         f"{getattr(images, 'shape', None)}")


# ----------------------------------------------------------------------------- pure functions


def _target_score(logits: jax.Array, target: str) -> jax.Array:
    """Per-example score whose gradient Grad-CAM follows: the fake (or real) class logit; with
    one logit (p_fake = sigmoid), the logit for "fake" and minus it for "real"."""
    if target not in TARGETS:
        raise ValueError(f"target={target!r}; choose one of {', '.join(TARGETS)}")
    logits = logits.astype(jnp.float32)
    if logits.shape[-1] == 1:
        return logits[:, 0] if target == "fake" else -logits[:, 0]
    return logits[:, 1] if target == "fake" else logits[:, 0]


def _upsample_and_scale(maps: jax.Array, size: tuple[int, int]) -> jax.Array:
    """(N, h, w) non-negative maps -> (N, H, W) bilinear upsampling, each divided by its max."""
    maps = maps.astype(jnp.float32)
    maps = jax.image.resize(maps, (maps.shape[0], *size), method="bilinear")
    maps = jnp.maximum(maps, 0.0)  # bilinear weights are non-negative; guards rounding only
    peak = jnp.max(maps, axis=(1, 2), keepdims=True)
    return jnp.where(peak > 0, maps / jnp.where(peak > 0, peak, 1.0), 0.0)


def grad_cam_fn(model, images: jax.Array, target: str = "fake") -> jax.Array:
    """Grad-CAM of an nnx CNN on a normalised float batch, traceable (see `grad_cam`)."""
    if not _has_grad_cam_hooks(model):
        raise TypeError(f"{type(model).__name__} has no feature_map/pool_feature_map: "
                        "Grad-CAM needs a CNN family from deepfake_jax.models")
    fmap = model.feature_map(images, train=False)

    def total_score(f):
        # Summed over the batch: examples are independent in eval mode, so the gradient of
        # the sum is each example's own gradient.
        return jnp.sum(_target_score(model.head(model.pool_feature_map(f)), target))

    grads = jax.grad(total_score)(fmap).astype(jnp.float32)
    weights = jnp.mean(grads, axis=(1, 2), keepdims=True)  # (N, 1, 1, C)
    cam = jax.nn.relu(jnp.sum(weights * fmap.astype(jnp.float32), axis=-1))
    return _upsample_and_scale(cam, images.shape[1:3])


def rollout_matrix(attentions: Sequence[jax.Array]) -> jax.Array:
    """(N, T, T) attention rollout from per-block (N, heads, T, T) attention probabilities."""
    if not attentions:
        raise ValueError("attention rollout needs at least one block's attention")
    n, _, t, _ = attentions[0].shape
    eye = jnp.eye(t, dtype=jnp.float32)
    rollout = jnp.broadcast_to(eye, (n, t, t))
    for probs in attentions:
        a = jnp.mean(probs.astype(jnp.float32), axis=1) + eye  # heads averaged + residual
        a = a / jnp.sum(a, axis=-1, keepdims=True)
        rollout = jnp.matmul(a, rollout, precision=jax.lax.Precision.HIGHEST)
    return rollout


def attention_rollout_fn(vit, images: jax.Array) -> jax.Array:
    """Attention rollout of an nnx ViT on a normalised float batch, traceable (see
    `attention_rollout`)."""
    if not _is_vit(vit):
        raise TypeError(f"{type(vit).__name__} is not a ViT: attention rollout needs "
                        "attention_maps (deepfake_jax.models.vit.ViT)")
    rollout = rollout_matrix(vit.attention_maps(images))
    patches = rollout[:, 0, 1:] if vit.pool == "cls" else jnp.mean(rollout[:, 1:, 1:], axis=1)
    gh, gw = images.shape[1] // vit.patch_size, images.shape[2] // vit.patch_size
    return _upsample_and_scale(patches.reshape(-1, gh, gw), images.shape[1:3])


def heatmap_fn(model, images: jax.Array, target: str = "fake") -> jax.Array:
    """The family's explanation, traceable: rollout for ViT, Grad-CAM for every CNN."""
    return attention_rollout_fn(model, images) if _is_vit(model) else grad_cam_fn(
        model, images, target)


# ----------------------------------------------------------------------------- jitted entry points


@functools.partial(jax.jit, static_argnames=("graphdef", "kind", "target"))
def _jitted(graphdef, state, images, kind: str, target: str):
    model = nnx.merge(graphdef, state)
    if kind == "grad_cam":
        return grad_cam_fn(model, images, target)
    return attention_rollout_fn(model, images)


def _run(model, images, kind: str, target: str = "fake") -> jax.Array:
    if kind == "rollout":
        target = "fake"  # rollout has no target: keep one cache entry
    _check_images(images)
    graphdef, state = nnx.split(model)
    return _jitted(graphdef, state, jnp.asarray(images, jnp.float32), kind, target)


def grad_cam(model, images, *, target: str = "fake") -> jax.Array:
    """(N, H, W) Grad-CAM maps in [0, 1] at the input size.

    `images`: the model's input (normalised float NHWC, as `model(images)` takes it). `target`:
    "fake" (default: where the evidence for fake is) or "real". ResNet, DenseNet, Xception,
    VGG and the seed CNN (`cnn`) are supported.
    """
    return _run(model, images, "grad_cam", target)


def attention_rollout(vit, images) -> jax.Array:
    """(N, H, W) attention-rollout maps in [0, 1] at the input size, for a `ViT`."""
    return _run(vit, images, "rollout")


def heatmaps(model, images, *, target: str = "fake") -> jax.Array:
    """(N, H, W) maps in [0, 1]: attention rollout for ViT, Grad-CAM for the CNN families."""
    # the same compiled function as grad_cam / attention_rollout (one cache entry)
    return _run(model, images, "rollout" if _is_vit(model) else "grad_cam", target)


def make_heatmap_step(graphdef, *, use_ema: bool, mean, std, in_shardings=None,
                      out_shardings=None, target: str = "fake"):
    """Jitted `(train_state, {"image": uint8 NHWC}) -> (N, H, W) heatmaps` on the trainer's
    state pytree (graphdef from `nnx.split(model, nnx.Param, nnx.BatchStat)`), normalised
    exactly like the trainer's eval step."""

    def step(state, batch):
        params, batch_stats = ((state.ema_params, state.ema_batch_stats) if use_ema
                               else (state.params, state.batch_stats))
        model = nnx.merge(graphdef, params, batch_stats)
        return heatmap_fn(model, normalization.normalize(batch["image"], mean, std), target)

    return jax.jit(step, in_shardings=in_shardings, out_shardings=out_shardings)


# ----------------------------------------------------------------------------- pictures


def overlay(image: np.ndarray, heatmap: np.ndarray, *, alpha: float = 0.45,
            colormap: int = cv2.COLORMAP_JET) -> np.ndarray:
    """uint8 RGB (H, W, 3): `image` with `heatmap` ([0, 1], any size: resized bilinearly to the
    image) drawn on top in `colormap` (OpenCV's; JET: blue = cold, red = hot) at opacity
    `alpha`."""
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"overlay needs an (H, W, 3) RGB image, got shape {image.shape}")
    heat = np.asarray(heatmap, np.float32)
    if heat.ndim != 2:
        raise ValueError(f"overlay needs an (H, W) heatmap, got shape {heat.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha={alpha} is not in [0, 1]")
    h, w = image.shape[:2]
    if heat.shape != (h, w):
        heat = cv2.resize(heat, (w, h), interpolation=cv2.INTER_LINEAR)
    heat8 = np.clip(np.nan_to_num(heat) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    colour = cv2.cvtColor(cv2.applyColorMap(heat8, colormap), cv2.COLOR_BGR2RGB)
    out = image.astype(np.float32) * (1.0 - alpha) + colour.astype(np.float32) * alpha
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def write_png(path: str, rgb: np.ndarray) -> str:
    """Writes an RGB uint8 array as PNG (byte write: any path OpenCV could not open)."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    with open(path, "wb") as f:
        f.write(buf.tobytes())
    return path


# ----------------------------------------------------------------------------- face regions


def group_lookup(groups: Mapping[str, Sequence[str]] | None = None,
                 classes: Sequence[str] = PARSING_CLASSES) -> tuple[list[str], np.ndarray]:
    """(region names, class index -> region index table) for `groups` of class names; classes
    in no group go to an extra "unassigned" region (listed only when some class is left out)."""
    groups = REGION_GROUPS if groups is None else groups
    index = {name: i for i, name in enumerate(classes)}
    names = list(groups)
    table = np.full(len(classes), len(names), np.int32)
    for g, (region, members) in enumerate(groups.items()):
        for cls in members:
            if cls not in index:
                raise ValueError(f"region {region!r}: unknown class {cls!r}; classes are "
                                 f"{', '.join(classes)}")
            if table[index[cls]] != len(names):
                raise ValueError(f"class {cls!r} is in two regions")
            table[index[cls]] = g
    if (table == len(names)).any():
        names.append("unassigned")
    return names, table


@functools.partial(jax.jit, static_argnames=("num_regions",))
def _shares(heat, regions, num_regions: int):
    heat = jnp.maximum(heat.astype(jnp.float32), 0.0).reshape(heat.shape[0], -1)
    onehot = jax.nn.one_hot(regions.reshape(regions.shape[0], -1), num_regions,
                            dtype=jnp.float32)  # (N, P, R)
    heat_sum = jnp.einsum("np,npr->nr", heat, onehot, precision=jax.lax.Precision.HIGHEST)
    area = jnp.mean(onehot, axis=1)
    total = jnp.sum(heat, axis=1, keepdims=True)
    # a heatmap with no heat at all gives no region any share (rather than NaN)
    heat_share = jnp.where(total > 0, heat_sum / jnp.where(total > 0, total, 1.0), 0.0)
    return heat_share, area


def region_shares(heatmap, label_map, groups: Mapping[str, Sequence[str]] | None = None,
                  classes: Sequence[str] = PARSING_CLASSES) -> dict[str, tuple]:
    """{region: (heat share, area share)}: the fraction of the heatmap's total heat, and of the
    pixels, that fall on each region of a face-parsing `label_map` (class indices in `classes`'
    order; default regions `REGION_GROUPS`). Both sum to 1 over the regions (heat share: 0
    everywhere for an all-zero map).

    `heatmap` (H, W) and `label_map` (H, W) give floats; (N, H, W) batches give (N,) arrays.
    The two must have the same size (parse the image the heatmap was computed on).
    """
    heat = np.asarray(heatmap)
    labels = np.asarray(label_map)
    if heat.shape != labels.shape or heat.ndim not in (2, 3):
        raise ValueError(f"heatmap {heat.shape} and label map {labels.shape} must both be "
                         "(H, W) or (N, H, W) of the same size")
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise ValueError(f"label map holds values outside 0..{len(classes) - 1} "
                         f"({len(classes)} classes)")
    names, table = group_lookup(groups, classes)
    single = heat.ndim == 2
    if single:
        heat, labels = heat[None], labels[None]
    regions = table[labels.astype(np.int64)]
    heat_share, area = (np.asarray(a, np.float64) for a in _shares(
        jnp.asarray(heat, jnp.float32), jnp.asarray(regions), len(names)))
    if single:
        return {n: (float(heat_share[0, i]), float(area[0, i])) for i, n in enumerate(names)}
    return {n: (heat_share[:, i], area[:, i]) for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- predict --heatmaps


class HeatmapWriter:
    """For `predict --heatmaps`: writes `<out_dir>/<stem>_heatmap.png` overlays (a repeated stem
    gets `_2`, `_3`, ...) and, given a face-parsing run, each image's region shares.

    `segmentation_workdir` is loaded with `deepfake_jax.parsing.parser.FaceParser(workdir,
    checkpoint="latest")`, whose `.parse(uint8 NHWC) -> int (N, H, W)` label maps (in
    `PARSING_CLASSES` order) are taken on the same views as the heatmaps.
    """

    def __init__(self, out_dir: str, segmentation_workdir: str | None = None,
                 groups: Mapping[str, Sequence[str]] | None = None):
        self.out_dir = os.path.abspath(out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self.groups = groups
        self.parser = None
        if segmentation_workdir:
            self.parser = parser.FaceParser(segmentation_workdir, checkpoint="latest")
        self._used: set[str] = set()

    def png_path(self, source: str) -> str:
        stem = os.path.splitext(os.path.basename(source))[0] or "image"
        name, n = f"{stem}_heatmap.png", 1
        while name in self._used:
            n += 1
            name = f"{stem}_{n}_heatmap.png"
        self._used.add(name)
        return os.path.join(self.out_dir, name)

    def __call__(self, sources: Sequence[str], views: Sequence[np.ndarray],
                 maps: np.ndarray) -> list[dict]:
        """Writes one overlay per view; returns per image {"heatmap": png path} plus, with a
        parser, {"heat_share_<region>": float, "area_share_<region>": float}."""
        rows = [{"heatmap": write_png(self.png_path(src), overlay(view, heat))}
                for src, view, heat in zip(sources, views, maps, strict=True)]
        if self.parser is not None:
            labels = np.asarray(self.parser.parse(np.stack(views)))
            if labels.shape[1:] != maps.shape[1:]:  # a parser working at its own resolution
                labels = np.stack([resize_labels(lab, maps.shape[:0:-1]) for lab in labels])
            shares = region_shares(maps, labels, self.groups)
            for i, row in enumerate(rows):
                for region, (heat, area) in shares.items():
                    row[f"heat_share_{region}"] = float(heat[i])
                    row[f"area_share_{region}"] = float(area[i])
        return rows
