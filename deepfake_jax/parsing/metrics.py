"""Face-parsing metrics from one confusion matrix ``cm[true, predicted]`` (pixel counts).

IoU_c = TP / (TP + FP + FN), F1_c = 2 TP / (2 TP + FP + FN). Means are over the classes present
in the evaluated split's ground truth (an absent class is undefined, not 0); ``mean_f1_face``
leaves out the background, the number face-parsing papers report for CelebAMask-HQ.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from deepfake_jax.parsing.classes import IGNORE_LABEL, NUM_CLASSES, PARSING_CLASSES


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
