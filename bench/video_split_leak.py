"""Frame- and video-level ROC AUC of finished runs, to compare a split by video with a split by
frame on a video-frame dataset (docs/video_frames.md has the commands and the numbers).

    python bench/video_split_leak.py RUN_DIR [RUN_DIR ...]

A RUN_DIR is a training workdir (its eval/test/predictions.csv) or a k-fold workdir (every
fold_<i>/eval/test/predictions.csv, pooled). A frame's video is the first two parts of its path
(`<class>/<video>/<frame>`), so runs converted with `--layout generic` (a split by frame, no
video in the records) are scored per video the same way.
"""

from __future__ import annotations

import csv
import glob
import os
import sys

import numpy as np
from sklearn.metrics import roc_auc_score


def read_predictions(run_dir: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    files = sorted(glob.glob(os.path.join(run_dir, "fold_*", "eval", "test", "predictions.csv")))
    files = files or [os.path.join(run_dir, "eval", "test", "predictions.csv")]
    labels, scores, videos = [], [], []
    for path in files:
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                labels.append(int(row["label"]))
                scores.append(float(row["p_fake"]))
                videos.append("/".join(row["path"].split("/")[:2]))
    return np.array(labels), np.array(scores), videos


def video_auc(labels: np.ndarray, scores: np.ndarray, videos: list[str]) -> tuple[float, int]:
    names = sorted(set(videos))
    index = np.array([names.index(v) for v in videos])
    mean = np.bincount(index, scores) / np.bincount(index)
    label = np.zeros(len(names))
    label[index] = labels
    return float(roc_auc_score(label, mean)), len(names)


def main(run_dirs: list[str]) -> None:
    print(f"{'run':40s} {'frames':>7s} {'frame AUC':>10s} {'videos':>7s} {'video AUC':>10s}")
    for run_dir in run_dirs:
        labels, scores, videos = read_predictions(run_dir)
        v_auc, n_videos = video_auc(labels, scores, videos)
        print(f"{run_dir:40s} {len(labels):7d} {roc_auc_score(labels, scores):10.3f} "
              f"{n_videos:7d} {v_auc:10.3f}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
