"""Video-level scores for video-frame datasets (`data_prep` layout `videos`).

A video's score is the mean p_fake of its frames; its label is its frames' label. The metrics
of those scores sit next to the frame-level ones (`evaluators.evaluate_splits`), at the same
validation threshold.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from deepfake_jax.evaluation import metrics

VIDEO_KEYS = ("roc_auc", "accuracy", "balanced_accuracy", "eer", "average_precision",
              "log_loss")


def video_scores(labels: np.ndarray, p_fake: np.ndarray, metas: Sequence[dict[str, Any]]
                 ) -> dict[str, np.ndarray] | None:
    """{"video", "label", "p_fake", "frames"} per video (sorted by id); None when no record
    names its video."""
    ids = [m.get("video") for m in metas]
    if not any(ids):
        return None
    if not all(ids):
        raise ValueError(f"{sum(not v for v in ids)} of {len(ids)} records name no video: "
                         "video-level scores need every record's meta['video']")
    videos = sorted(set(ids))
    position = {v: i for i, v in enumerate(videos)}
    index = np.array([position[v] for v in ids])
    frames = np.bincount(index, minlength=len(videos))
    mean = np.bincount(index, weights=np.asarray(p_fake, np.float64),
                       minlength=len(videos)) / frames
    label = np.zeros(len(videos), np.int64)
    label[index] = np.asarray(labels)
    mixed = np.bincount(index, weights=np.asarray(labels, np.float64), minlength=len(videos))
    if np.any((mixed != 0) & (mixed != frames)):
        raise ValueError("a video holds frames of both labels: check the layout's class folders")
    return {"video": np.array(videos), "label": label, "p_fake": mean, "frames": frames}


def video_level(labels: np.ndarray, p_fake: np.ndarray, metas: Sequence[dict[str, Any]],
                threshold: float) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
    """(metrics of the per-video mean scores at `threshold`, the per-video table), or None."""
    table = video_scores(labels, p_fake, metas)
    if table is None:
        return None
    m = metrics.binary_metrics(table["label"], table["p_fake"], threshold)
    out = {k: m[k] for k in VIDEO_KEYS if k in m}
    out.update(num_videos=int(len(table["video"])),
               num_fake_videos=int(table["label"].sum()), threshold=float(threshold))
    return out, table


def write_video_csv(path: str, table: dict[str, np.ndarray], threshold: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "label", "frames", "p_fake", "predicted"])
        for v, label, n, p in zip(table["video"], table["label"], table["frames"],
                                  table["p_fake"], strict=True):
            writer.writerow([v, int(label), int(n), f"{p:.6f}", int(p >= threshold)])
