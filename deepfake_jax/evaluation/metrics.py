"""Binary real/fake metrics (scikit-learn) and their plots (matplotlib, Agg backend).

Convention: label 1 = fake is the positive class; scores are p_fake in [0, 1].
A threshold is chosen on validation (EER or max-F1) and applied unchanged to test.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from sklearn import metrics as skm

from deepfake_jax.data.records import CLASS_NAMES


def equal_error_rate(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """(EER, threshold): the ROC point where false-positive and false-negative rates meet.

    Interpolates linearly between the two ROC points that bracket FPR == FNR.
    """
    fpr, tpr, thresholds = skm.roc_curve(labels, scores)
    # sklearn's first threshold is +inf ("call nothing fake"); any value above every score
    # means the same and keeps the interpolation below finite.
    thresholds = np.where(np.isfinite(thresholds), thresholds, max(1.0, float(np.max(scores))))
    fnr = 1.0 - tpr
    diff = fpr - fnr  # increases from <= 0 to >= 0 along the curve
    i = int(np.argmax(diff >= 0))
    if i == 0:
        return float(fpr[0]), float(min(thresholds[0], 1.0))
    # Interpolate between points i-1 and i.
    d0, d1 = diff[i - 1], diff[i]
    t = 0.0 if d1 == d0 else -d0 / (d1 - d0)
    eer = float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))
    threshold = float(thresholds[i - 1] + t * (thresholds[i] - thresholds[i - 1]))
    return eer, float(np.clip(threshold, 0.0, 1.0))


def max_f1_threshold(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, thresholds = skm.precision_recall_curve(labels, scores)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    return float(thresholds[int(np.argmax(f1))])


def choose_threshold(labels: np.ndarray, scores: np.ndarray, method: str = "eer") -> float:
    if len(np.unique(labels)) < 2:
        return 0.5  # a one-class split cannot place a threshold; fall back to the prior-free 0.5
    if method == "eer":
        return equal_error_rate(labels, scores)[1]
    if method == "max_f1":
        return max_f1_threshold(labels, scores)
    if method == "fixed":
        return 0.5
    raise ValueError(f"unknown threshold method {method!r}; choose eer, max_f1 or fixed")


def binary_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """Threshold-free (AUC, AP, EER) and thresholded (accuracy, P, R, F1, confusion) metrics."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=np.float64)
    preds = (scores >= threshold).astype(int)
    out: dict[str, Any] = {
        "num_examples": int(labels.size),
        "num_fake": int(labels.sum()),
        "num_real": int((1 - labels).sum()),
        "threshold": float(threshold),
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, preds))
        if len(np.unique(labels)) > 1 else None,
        "precision": float(skm.precision_score(labels, preds, zero_division=0)),
        "recall": float(skm.recall_score(labels, preds, zero_division=0)),
        "f1": float(skm.f1_score(labels, preds, zero_division=0)),
        "confusion_matrix": skm.confusion_matrix(labels, preds, labels=[0, 1]).tolist(),
        "confusion_matrix_order": "rows=true, cols=predicted, [real, fake]",
    }
    if len(np.unique(labels)) > 1:
        eer, eer_threshold = equal_error_rate(labels, scores)
        out.update(
            roc_auc=float(skm.roc_auc_score(labels, scores)),
            average_precision=float(skm.average_precision_score(labels, scores)),
            eer=eer,
            eer_threshold=eer_threshold,
            log_loss=float(skm.log_loss(labels, np.clip(scores, 1e-7, 1 - 1e-7), labels=[0, 1])),
        )
    else:
        out.update(roc_auc=None, average_precision=None, eer=None, eer_threshold=None,
                   log_loss=None)
    return out


def calibration(labels: np.ndarray, scores: np.ndarray, num_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error of p_fake over equal-width bins, and the reliability table.

    ECE = sum_b (n_b / n) * |mean label in b - mean score in b| (Guo et al., 2017, binary form).
    """
    labels = np.asarray(labels, np.float64)
    scores = np.asarray(scores, np.float64)
    bins = np.minimum((scores * num_bins).astype(int), num_bins - 1)
    table, ece = [], 0.0
    for b in range(num_bins):
        in_bin = bins == b
        n = int(in_bin.sum())
        if n == 0:
            continue
        frac_fake, mean_score = float(labels[in_bin].mean()), float(scores[in_bin].mean())
        ece += n / len(scores) * abs(frac_fake - mean_score)
        table.append({"bin": [b / num_bins, (b + 1) / num_bins], "count": n,
                      "mean_p_fake": mean_score, "fraction_fake": frac_fake})
    return {"ece": float(ece), "reliability": table}


def bootstrap_intervals(labels: np.ndarray, scores: np.ndarray, threshold: float,
                        num_samples: int = 1000, seed: int = 0) -> dict[str, list[float]]:
    """Percentile 95% intervals of ROC AUC and accuracy over resamples of the examples."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    rng = np.random.default_rng(seed)
    aucs, accs = [], []
    for _ in range(num_samples):
        idx = rng.integers(0, len(labels), len(labels))
        y, p = labels[idx], scores[idx]
        accs.append(float(np.mean((p >= threshold) == y)))
        if 0 < y.sum() < len(y):
            aucs.append(float(skm.roc_auc_score(y, p)))
    out = {"accuracy": [float(np.percentile(accs, 2.5)), float(np.percentile(accs, 97.5))],
           "num_samples": num_samples, "seed": seed}
    if aucs:
        out["roc_auc"] = [float(np.percentile(aucs, 2.5)), float(np.percentile(aucs, 97.5))]
    return out


def relative_luminance(rgb) -> float:
    """WCAG relative luminance of an sRGB colour with channels in [0, 1]."""
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast_ratio(rgb_a, rgb_b) -> float:
    """WCAG contrast ratio of two colours (1 to 21; 4.5 is the bar for readable text)."""
    la, lb = sorted((relative_luminance(rgb_a), relative_luminance(rgb_b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def text_colour_on(rgb) -> str:
    """"black" or "white", whichever contrasts more with a background colour."""
    return "black" if contrast_ratio(rgb, (0, 0, 0)) >= contrast_ratio(rgb, (1, 1, 1)) else "white"


def draw_confusion_matrix(ax, cm: np.ndarray, class_names=CLASS_NAMES):
    """Counts in cells coloured by count; each count's colour is chosen against the colour its
    cell is actually drawn in. Returns (image, texts)."""
    cm = np.asarray(cm)
    image = ax.imshow(cm, cmap="Blues")
    texts = [ax.text(j, i, str(v), ha="center", va="center", fontsize=12,
                     color=text_colour_on(image.cmap(image.norm(v))))
             for (i, j), v in np.ndenumerate(cm)]
    ticks = np.arange(len(class_names))
    ax.set(xticks=ticks, yticks=ticks, xticklabels=class_names, yticklabels=class_names,
           xlabel="predicted", ylabel="true")
    return image, texts


def fit_title(ax, text: str, fontsize: float = 11) -> None:
    """A title wrapped to the width of its figure (a long one is not cut off)."""
    import textwrap

    width_px = ax.figure.get_figwidth() * ax.figure.dpi
    chars = max(int(width_px / (0.6 * fontsize * ax.figure.dpi / 72)), 10)
    if len(text) > chars and ", " in text:  # break between the parts first
        text = text.replace(", ", "\n", 1)
    ax.set_title("\n".join(textwrap.fill(line, chars) for line in text.split("\n")),
                 fontsize=fontsize)


def save_plots(labels: np.ndarray, scores: np.ndarray, metrics: dict[str, Any], out_dir: str,
               title: str = "", threshold_text: str | None = None) -> list[str]:
    """ROC, PR, confusion-matrix, score-histogram and reliability PNGs; returns the paths.

    `threshold_text` names the threshold the confusion matrix and the histogram's line show
    (default "threshold <metrics['threshold']>")."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    threshold_text = threshold_text or f"threshold {metrics['threshold']:.3f}"
    written = []
    if metrics.get("roc_auc") is not None:
        fpr, tpr, _ = skm.roc_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(fpr, tpr, label=f"AUC = {metrics['roc_auc']:.4f}")
        ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="chance")
        ax.plot([metrics["eer"]], [1 - metrics["eer"]], "o", label=f"EER = {metrics['eer']:.4f}")
        ax.set(xlabel="false positive rate (real called fake)", ylabel="true positive rate")
        fit_title(ax, f"ROC {title}".strip())
        ax.legend(loc="lower right")
        written.append(_save(fig, os.path.join(out_dir, "roc.png")))

        precision, recall, _ = skm.precision_recall_curve(labels, scores)
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot(recall, precision, drawstyle="steps-post",
                label=f"AP = {metrics['average_precision']:.4f}")
        ax.axhline(np.mean(labels), color="k", ls="--", lw=0.8, label="chance (share of fakes)")
        ax.set(xlabel="recall (fake)", ylabel="precision (fake)", ylim=(0, 1.02))
        fit_title(ax, f"PR {title}".strip())
        ax.legend(loc="best")
        written.append(_save(fig, os.path.join(out_dir, "pr.png")))

    fig, ax = plt.subplots(figsize=(4, 3.6))
    draw_confusion_matrix(ax, metrics["confusion_matrix"])
    fit_title(ax, f"{title}, {threshold_text}" if title else threshold_text)
    written.append(_save(fig, os.path.join(out_dir, "confusion_matrix.png")))

    fig, ax = plt.subplots(figsize=(5, 3.9))
    edges = np.linspace(0, 1, 41)
    for label, name in enumerate(CLASS_NAMES):
        ax.hist(np.asarray(scores)[np.asarray(labels) == label], bins=edges, alpha=0.6, label=name)
    ax.axvline(metrics["threshold"], color="k", ls="--", lw=1, label=threshold_text)
    ax.set(xlabel="p_fake", ylabel="images")
    fit_title(ax, f"scores by class {title}".strip())
    # Below the axes: inside, the legend hides the bars around the threshold.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=9,
              frameon=False)
    written.append(_save(fig, os.path.join(out_dir, "score_histogram.png")))

    if metrics.get("reliability"):
        rel = metrics["reliability"]
        fig, ax = plt.subplots(figsize=(4.5, 4.5))
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
        ax.plot([r["mean_p_fake"] for r in rel], [r["fraction_fake"] for r in rel], "o-")
        ax.set(xlabel="mean p_fake in bin", ylabel="fraction fake in bin", xlim=(0, 1),
               ylim=(0, 1))
        fit_title(ax, f"{f'reliability {title}'.strip()}, ECE {metrics['ece']:.3f}")
        written.append(_save(fig, os.path.join(out_dir, "reliability.png")))
    return written


def _save(fig, path: str) -> str:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


CIPLAB_REGIONS = ("left_eye", "right_eye", "nose", "mouth")


def subset_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float,
                   metas: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Metrics per subset of fakes, each against ALL reals of the split.

    Subsets come from record metadata: `domain` (every class), CIPLab `difficulty`
    (easy/mid/hard) and `edited` regions (left eye, right eye, nose, mouth; a fake counts in
    every region it edits). Reals are shared so that every row's AUC answers "how well are
    these fakes told apart from real faces".
    """
    labels, scores = np.asarray(labels), np.asarray(scores)
    real = labels == 0
    groups: dict[tuple[str, str], np.ndarray] = {}

    def add(kind: str, value: str, i: int) -> None:
        groups.setdefault((kind, value), np.zeros(len(labels), bool))[i] = True

    for i, meta in enumerate(metas):
        if "domain" in meta:
            add("domain", str(meta["domain"]), i)
        if labels[i] == 1 and meta.get("difficulty"):
            add("difficulty", str(meta["difficulty"]), i)
        if labels[i] == 1 and meta.get("edited"):
            for region, bit in zip(CIPLAB_REGIONS, meta["edited"], strict=False):
                if bit:
                    add("edited", region, i)
    rows = []
    for (kind, value), members in sorted(groups.items()):
        mask = members | real if kind != "domain" else members
        m = binary_metrics(labels[mask], scores[mask], threshold)
        fakes = members & ~real
        rows.append({"subset": kind, "value": value, "num_fake": int(fakes.sum()),
                     "num_real": int((mask & real).sum()),
                     "fake_detected": float(np.mean(scores[fakes] >= threshold))
                     if fakes.any() else None,
                     **{k: m[k] for k in ("roc_auc", "accuracy", "average_precision")}})
    return rows
