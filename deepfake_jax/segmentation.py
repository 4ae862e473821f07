"""Face parsing: the class list, the OHEM loss, confusion-matrix metrics, colours and regions.

Class order (written down once here; public repositories disagree). Index = label value in
every label map this project writes or reads, CelebAMask-HQ part names::

     0 background   1 skin     2 l_brow   3 r_brow   4 l_eye   5 r_eye   6 eye_g
     7 l_ear        8 r_ear    9 ear_r   10 nose    11 mouth  12 u_lip  13 l_lip
    14 neck        15 neck_l  16 cloth   17 hair    18 hat

This is the order of zllrunning/face-parsing.PyTorch (whose BiSeNet checkpoint the model
importer reads). ``l_``/``r_`` are the SUBJECT's left/right, i.e. ``l_eye`` is on the image's
right side: a horizontal flip of the image therefore swaps l_/r_ labels (``FLIP_PERMUTATION``).
``IGNORE_LABEL`` (255) marks pixels that count in no loss and no metric (crop padding).

Metrics come from one confusion matrix ``cm[true, predicted]`` (pixel counts):
IoU_c = TP / (TP + FP + FN), F1_c = 2 TP / (2 TP + FP + FN). Means are over the classes that
occur in the ground truth of the evaluated split (a class absent from it is undefined, not 0).
``mean_f1_face`` averages F1 over those classes without the background, the number face-parsing
papers report for CelebAMask-HQ.
"""

from __future__ import annotations

import json
import os
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax

PARSING_CLASSES: tuple[str, ...] = (
    "background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "eye_g", "l_ear", "r_ear",
    "ear_r", "nose", "mouth", "u_lip", "l_lip", "neck", "neck_l", "cloth", "hair", "hat",
)
NUM_CLASSES = len(PARSING_CLASSES)
CLASS_INDEX = {name: i for i, name in enumerate(PARSING_CLASSES)}
IGNORE_LABEL = 255

_PAIRS = (("l_brow", "r_brow"), ("l_eye", "r_eye"), ("l_ear", "r_ear"))
FLIP_PERMUTATION = np.arange(256, dtype=np.uint8)  # label lookup table for a horizontal flip
for _a, _b in _PAIRS:
    FLIP_PERMUTATION[CLASS_INDEX[_a]], FLIP_PERMUTATION[CLASS_INDEX[_b]] = (
        CLASS_INDEX[_b], CLASS_INDEX[_a])

# Colours of face-parsing.PyTorch's visualisation (class i -> part_colors[i]), background black.
PALETTE = np.array([
    [0, 0, 0], [255, 85, 0], [255, 170, 0], [255, 0, 85], [255, 0, 170], [0, 255, 0],
    [85, 255, 0], [170, 255, 0], [0, 255, 85], [0, 255, 170], [0, 0, 255], [85, 0, 255],
    [170, 0, 255], [0, 85, 255], [0, 170, 255], [255, 255, 0], [255, 255, 85],
    [255, 255, 170], [255, 0, 255],
], np.uint8)

# Regions cropped by the `segment` CLI: name -> the classes it is made of.
REGIONS: dict[str, tuple[str, ...]] = {
    "left_eye": ("l_eye",),
    "right_eye": ("r_eye",),
    "nose": ("nose",),
    "lips": ("u_lip", "l_lip", "mouth"),
}


# ----------------------------------------------------------------------------- loss


def kth_largest_nonnegative(values: jax.Array, k: int) -> jax.Array:
    """The ``k``-th largest of a 1-D array of non-negative float32 values, exactly.

    A bisection over the float32 bit patterns (which order non-negative floats like the values
    themselves): 31 counting passes over the array. ``lax.top_k`` over a million pixels sorts
    on CPU: OHEM with it made a tiny BiSeNet's training step at 256 px 1378 ms instead of 564
    (bench/bisenet_train_step.py).
    """
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.int32)

    def narrow(_, bounds):  # invariant: count(bits >= lo) >= k > count(bits >= hi)
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        enough = jnp.sum(bits >= mid) >= k
        return jnp.where(enough, mid, lo), jnp.where(enough, hi, mid)

    lo, _ = jax.lax.fori_loop(0, 31, narrow, (jnp.int32(0), jnp.int32(0x7F800001)))
    return jax.lax.bitcast_convert_type(lo, jnp.float32)


def mean_of_largest(values: jax.Array, k: int) -> jax.Array:
    """Mean of the ``k`` largest non-negative values, as ``mean(top_k(values, k))``, with the
    gradient shared equally by values tied at the cut."""
    cut = jax.lax.stop_gradient(kth_largest_nonnegative(values, k))
    above = values > cut
    at = values == cut
    n_above = jnp.sum(above)
    share_at = (k - n_above) / jnp.maximum(jnp.sum(at), 1)  # how many of the ties are kept
    return (jnp.sum(jnp.where(above, values, 0.0))
            + share_at * jnp.sum(jnp.where(at, values, 0.0))) / k


def ohem_cross_entropy(logits: jax.Array, labels: jax.Array, *, thresh: float = 0.7,
                       min_kept_fraction: float = 1 / 16) -> jax.Array:
    """Online hard example mining cross-entropy (face-parsing.PyTorch's ``OhemCELoss``).

    Per-pixel CE; if more than ``n_min = min_kept_fraction * pixels`` pixels have a loss above
    ``-log(thresh)`` (the true class has probability < thresh), their mean is returned, else the
    mean of the ``n_min`` largest losses. ``IGNORE_LABEL`` pixels have no loss and are never kept.
    """
    logits = logits.astype(jnp.float32).reshape(-1, logits.shape[-1])
    labels = labels.reshape(-1)
    valid = labels != IGNORE_LABEL
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.where(valid, labels, 0))
    loss = jnp.where(valid, jnp.maximum(loss, 0.0), 0.0)  # never above the threshold
    return _ohem_mean(loss, thresh, min_kept_fraction)


def _ohem_mean(loss: jax.Array, thresh: float, min_kept_fraction: float) -> jax.Array:
    """OHEM's reduction of per-pixel losses (0 at ignored pixels); see `ohem_cross_entropy`."""
    n_min = min(max(1, int(loss.shape[0] * min_kept_fraction)), loss.shape[0] - 1)
    cut = float(-np.log(thresh))
    hard = loss > cut
    n_hard = jnp.sum(hard)
    mean_hard = jnp.sum(jnp.where(hard, loss, 0.0)) / jnp.maximum(n_hard, 1)
    # More than n_min hard pixels: their mean. Otherwise the n_min largest (only then needed).
    return jax.lax.cond(n_hard > n_min, lambda: mean_hard,
                        lambda: mean_of_largest(loss, n_min))


def soft_jaccard_loss(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """1 - the batch's soft IoU, averaged over the classes present in ``labels``.

    Not in the reference recipe: a term that weighs every class equally, as mean IoU does, so
    the thin classes (brows, lips, glasses: ~0.2% of the pixels each) count as much as the
    background. Per class c: ``I = sum(p_c * y_c)``, ``U = sum(p_c + y_c - p_c * y_c)`` over the
    valid pixels, with ``p`` the softmax and ``y`` the one-hot labels.
    """
    num_classes = logits.shape[-1]
    probs = jax.nn.softmax(logits.astype(jnp.float32).reshape(-1, num_classes), axis=-1)
    labels = labels.reshape(-1)
    valid = (labels != IGNORE_LABEL)[:, None]
    onehot = jax.nn.one_hot(jnp.where(valid[:, 0], labels, 0), num_classes) * valid
    return _soft_jaccard(probs * valid, onehot)


def _soft_jaccard(probs: jax.Array, onehot: jax.Array) -> jax.Array:
    """1 - mean soft IoU over the classes present; (pixels, classes), 0 rows where ignored."""
    inter = jnp.sum(probs * onehot, axis=0)
    union = jnp.sum(probs + onehot, axis=0) - inter
    present = jnp.sum(onehot, axis=0) > 0
    iou = jnp.where(present, inter / jnp.maximum(union, 1e-6), 0.0)
    return 1.0 - jnp.sum(iou) / jnp.maximum(jnp.sum(present), 1)


def ohem_and_soft_jaccard(logits: jax.Array, labels: jax.Array, *, thresh: float = 0.7,
                          min_kept_fraction: float = 1 / 16) -> tuple[jax.Array, jax.Array]:
    """``(ohem_cross_entropy, soft_jaccard_loss)`` of the same logits, from one log-softmax and
    one one-hot: computed apart, the two softmaxes and label lookups over every pixel cost 16%
    of the CPU recipe's training step (285 -> 238 ms, bench/bisenet_train_step.py)."""
    num_classes = logits.shape[-1]
    logits = logits.astype(jnp.float32).reshape(-1, num_classes)
    labels = labels.reshape(-1)
    valid = labels != IGNORE_LABEL
    onehot = jax.nn.one_hot(jnp.where(valid, labels, 0), num_classes) * valid[:, None]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    cross_entropy = jnp.maximum(-jnp.sum(log_probs * onehot, axis=-1), 0.0)  # 0 where ignored
    jaccard = _soft_jaccard(jnp.exp(log_probs) * valid[:, None], onehot)
    return _ohem_mean(cross_entropy, thresh, min_kept_fraction), jaccard


# ----------------------------------------------------------------------------- inference


def window_starts(size: int, window: int, stride: int) -> list[int]:
    """Offsets of `window`-pixel windows every `stride` pixels along a side of `size` pixels;
    the last window ends at the border (one window at 0 if it covers the side)."""
    if window <= 0 or stride <= 0:
        raise ValueError(f"window and stride must be positive, got {window} and {stride}")
    if window >= size:
        return [0]
    starts = list(range(0, size - window + 1, stride))
    if starts[-1] != size - window:
        starts.append(size - window)
    return starts


def sliding_window_probs(logits_fn, images: jax.Array, window: int, stride: int) -> jax.Array:
    """Class probabilities (N, H, W, C) averaged over overlapping square windows.

    The network sees inputs like its training crops, and each pixel's prediction is the mean
    of the softmax of every window that contains it (mmsegmentation's "slide" inference).
    """
    n, h, w = images.shape[:3]
    wh, ww = min(window, h), min(window, w)
    count = np.zeros((1, h, w, 1), np.float32)
    total = None
    for y in window_starts(h, window, stride):
        for x in window_starts(w, window, stride):
            probs = jax.nn.softmax(logits_fn(images[:, y:y + wh, x:x + ww]).astype(jnp.float32),
                                   axis=-1)
            if total is None:
                total = jnp.zeros((n, h, w, probs.shape[-1]), jnp.float32)
            total = total.at[:, y:y + wh, x:x + ww].add(probs)
            count[:, y:y + wh, x:x + ww] += 1.0
    return total / count


def flip_averaged(probs_fn, images: jax.Array) -> jax.Array:
    """Mean of `probs_fn` on the images and on their mirror images; the mirror's l_/r_ class
    channels are swapped back (`FLIP_PERMUTATION`)."""
    probs = probs_fn(images)
    mirrored = _mirror(probs_fn(_mirror(images)))
    perm = FLIP_PERMUTATION[:probs.shape[-1]].astype(np.int32)
    return (probs + mirrored[..., perm]) / 2.0


def scaled_size(size: int, scale: float, multiple: int = 32) -> int:
    """`size * scale` rounded to the nearest positive multiple of `multiple` (BiSeNet's input
    rule)."""
    return max(multiple, int(round(size * scale / multiple)) * multiple)


def multiscale_averaged(probs_fn, images: jax.Array, scales: tuple[float, ...],
                        multiple: int = 32) -> jax.Array:
    """Mean of `probs_fn` over input scales: the images resized by each scale (sides rounded to
    a multiple of `multiple`), `probs_fn` there, its probabilities resized back to the input.

    Linear resizing on pixel centres (`jax.image.resize`, antialiased when shrinking) both ways,
    the geometry of the training scale augmentation (`cv2.INTER_LINEAR` / `INTER_AREA`).
    At 1.25x the face's 1-3-pixel parts (glasses frames, brows) are wider on the network's
    stride-2 prediction grid.
    """
    n, h, w, c = images.shape
    total = None
    for scale in scales:
        size = (scaled_size(h, scale, multiple), scaled_size(w, scale, multiple))
        x = images if size == (h, w) else jax.image.resize(images, (n, *size, c), "linear")
        probs = probs_fn(x)
        if size != (h, w):
            probs = jax.image.resize(probs, (n, h, w, probs.shape[-1]), "linear")
        total = probs if total is None else total + probs
    return total / len(scales)


def _mirror(x: jax.Array) -> jax.Array:
    # A gather, not x[:, :, ::-1]: with a reverse, XLA's CPU algebraic simplifier aborted the
    # process compiling the jitted eval step ("Invalid binary instruction opcode map", jaxlib
    # 0.10.2, the test suite's 8 CPU devices at optimisation level 0).
    return jnp.take(x, np.arange(x.shape[2] - 1, -1, -1), axis=2)


# ----------------------------------------------------------------------------- metrics


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray,
                     num_classes: int = NUM_CLASSES) -> np.ndarray:
    """(C, C) int64 pixel counts ``cm[true, predicted]``; IGNORE_LABEL pixels are left out."""
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.shape != predictions.shape:
        raise ValueError(f"labels and predictions differ in size: {labels.shape} vs "
                         f"{predictions.shape}")
    keep = labels != IGNORE_LABEL
    labels, predictions = labels[keep], predictions[keep]
    bad = (labels < 0) | (labels >= num_classes)
    if bad.any():
        raise ValueError(f"label values {np.unique(labels[bad])[:8]} are outside "
                         f"0..{num_classes - 1}")
    return np.bincount(labels * num_classes + np.clip(predictions, 0, num_classes - 1),
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _mean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def segmentation_metrics(cm: np.ndarray, class_names: tuple[str, ...] = PARSING_CLASSES
                         ) -> dict[str, Any]:
    """mIoU, per-class IoU and F1, mean F1 over face classes, pixel accuracy of a confusion
    matrix. Per-class values of classes absent from the ground truth are None."""
    cm = np.asarray(cm, np.float64)
    tp = np.diag(cm)
    gt = cm.sum(axis=1)
    pred = cm.sum(axis=0)
    present = gt > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(present, tp / (gt + pred - tp), np.nan)
        f1 = np.where(present, 2 * tp / (gt + pred), np.nan)
    face = present.copy()
    face[0] = False  # background
    return {
        "miou": _mean(iou),
        "mean_f1": _mean(f1),
        "mean_f1_face": _mean(np.where(face, f1, np.nan)),
        "pixel_accuracy": float(tp.sum() / cm.sum()) if cm.sum() else None,
        "num_pixels": int(cm.sum()),
        "classes_evaluated": [n for n, p in zip(class_names, present, strict=True) if p],
        "per_class": {
            n: {"iou": None if np.isnan(i) else float(i), "f1": None if np.isnan(f) else float(f),
                "gt_pixels": int(g), "predicted_pixels": int(p)}
            for n, i, f, g, p in zip(class_names, iou, f1, gt, pred, strict=True)
        },
    }


def write_json(obj: Any, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")
    return path


def plot_confusion_matrix(cm: np.ndarray, path: str, title: str = "",
                          class_names: tuple[str, ...] = PARSING_CLASSES) -> str:
    """Row-normalised confusion matrix (recall per true class) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, np.float64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig, ax = plt.subplots(figsize=(8, 7))
    # Classes absent from the split are grey rows, not white ones (which would read as 0 %).
    absent = np.broadcast_to(rows == 0, norm.shape)
    cmap = plt.get_cmap("Blues").with_extremes(bad="0.8")
    im = ax.imshow(np.ma.masked_array(norm, absent), cmap=cmap, vmin=0, vmax=1)
    ticks = np.arange(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=90, fontsize=8)
    ax.set_yticks(ticks, class_names, fontsize=8)
    default = "confusion matrix (row-normalised" + ("; grey: class absent)" if absent.any()
                                                    else ")")
    ax.set(xlabel="predicted", ylabel="true", title=title or default)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- pictures


def colorize(label_map: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 RGB in PALETTE colours (unknown labels black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(PALETTE)] = PALETTE
    return lut[np.asarray(label_map).astype(np.uint8)]


def resize_labels(label_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) label map resized to `size` = (width, height) as uint8: each output pixel takes
    the class under its *centre*, the geometry of the image's linear and area filters.
    cv2.INTER_NEAREST uses the output pixel's top-left corner instead, which moves label
    boundaries up to one source pixel up and left of the image's (a third of a glasses frame's
    width at 256 px)."""
    return cv2.resize(np.asarray(label_map, np.uint8), tuple(size),
                      interpolation=cv2.INTER_NEAREST_EXACT)


def overlay_labels(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with the coloured labels blended in (background pixels unchanged)."""
    image = np.asarray(image, np.uint8)
    label_map = np.asarray(label_map)
    if label_map.shape != image.shape[:2]:
        label_map = resize_labels(label_map, image.shape[1::-1])
    blended = image.astype(np.float32) * (1 - alpha) + colorize(label_map) * alpha
    fg = (label_map > 0)[..., None]
    return np.where(fg, np.clip(blended + 0.5, 0, 255).astype(np.uint8), image)


def save_overlay_grid(images: list[np.ndarray], truths: list[np.ndarray],
                      predictions: list[np.ndarray], path: str) -> str:
    """Rows of [image | true-label overlay | predicted overlay] as one PNG, under a header
    naming the columns; images narrower than 128 px are enlarged (pixel for pixel) to be seen."""
    rows = [np.concatenate([im, overlay_labels(im, t), overlay_labels(im, p)], axis=1)
            for im, t, p in zip(images, truths, predictions, strict=True)]
    grid = np.concatenate(rows, axis=0)
    width = grid.shape[1] // 3
    scale = max(1, -(-128 // width))
    if scale > 1:
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        width *= scale
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    for i, name in enumerate(("image", "truth", "prediction")):
        (w, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.putText(header, name, (i * width + max((width - w) // 2, 0), 17),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    grid = np.concatenate([header, grid], axis=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return path


# ----------------------------------------------------------------------------- regions


def region_boxes(label_map: np.ndarray, regions: dict[str, tuple[str, ...]] = REGIONS
                 ) -> dict[str, dict[str, Any]]:
    """{region: {"box": [x0, y0, x1, y1] (exclusive end) or None, "area": pixels}}.

    The box is that of the region's largest connected part (stray pixels elsewhere do not
    stretch it); the area counts all of the region's pixels.
    """
    label_map = np.asarray(label_map)
    out = {}
    for name, parts in regions.items():
        mask = np.isin(label_map, [CLASS_INDEX[p] for p in parts]).astype(np.uint8)
        area = int(mask.sum())
        box = None
        if area:
            _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
            box = [int(x), int(y), int(x + w), int(y + h)]
        out[name] = {"box": box, "area": area}
    return out


def crop_box(image: np.ndarray, box: list[int], margin: float = 0.25) -> np.ndarray:
    """The pixels of `box` grown by `margin` of its size on every side, clipped to the image."""
    x0, y0, x1, y1 = box
    mx, my = round((x1 - x0) * margin), round((y1 - y0) * margin)
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[max(0, y0 - my):min(h, y1 + my),
                                      max(0, x0 - mx):min(w, x1 + mx)])
