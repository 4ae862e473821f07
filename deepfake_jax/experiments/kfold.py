"""K-fold cross-validation: `--config.kfold=5` trains one run per fold and pools the results.

    python -m deepfake_jax.main --config configs/default.py --workdir runs/cv --config.kfold=5

1. The run's dataset (`config.data.dir`, or the generated one) is split into K seeded,
   stratified folds by `data_prep.folds` (train + valid pooled; written once under
   `<workdir>/folds_data/`, with `folds.csv` saying which record is in which fold).
2. Fold i trains an ordinary run in `<workdir>/fold_<i>/` (train on K-1 folds, threshold on a
   stratified slice of them, test on fold i). A fold whose run already finished is reused,
   an interrupted one resumes, so rerunning the command continues the CV.
3. `<workdir>/kfold/`: `results.json` and `results.md` (per-fold metrics, mean ± std over
   folds, pooled metrics over all held-out predictions), pooled ROC/PR/confusion PNGs.
   Pooled: ROC AUC / AP / EER from the concatenated scores; accuracy, precision, recall, F1
   and the confusion matrix from each fold's own prediction at its own validation threshold.
"""

from __future__ import annotations

import copy
import csv
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from deepfake_jax import json_io, tasks
from deepfake_jax.data import datasets
from deepfake_jax.evaluation import metrics, video_metrics

TABLE_METRICS = ("roc_auc", "accuracy", "balanced_accuracy", "precision", "recall", "f1", "eer",
                 "average_precision", "log_loss")


def fold_config(config: ml_collections.ConfigDict, data_dir: str) -> ml_collections.ConfigDict:
    fold = copy.deepcopy(config)
    with fold.unlocked():
        fold.kfold = 0
        fold.data.dir = data_dir
        fold.data.train_split, fold.data.val_split, fold.data.test_split = (
            "train", "valid", "test")
    return fold


def _read_predictions(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return (np.array([int(r["label"]) for r in rows]),
            np.array([float(r["p_fake"]) for r in rows]),
            np.array([int(r["predicted"]) for r in rows]))


def _read_metas(path: str) -> list[dict[str, Any]]:
    with open(path, newline="") as f:
        return [json.loads(r["meta"] or "{}") for r in csv.DictReader(f)]


def pooled_video_metrics(labels: np.ndarray, scores: np.ndarray, metas: list[dict[str, Any]]
                         ) -> dict[str, Any] | None:
    """Threshold-free metrics of each video's mean p_fake over the pooled held-out frames
    (video-frame datasets; None otherwise). Group folds keep a video's frames in one fold."""
    table = video_metrics.video_scores(labels, scores, metas)
    if table is None:
        return None
    m = metrics.binary_metrics(table["label"], table["p_fake"], 0.5)
    return {"num_videos": int(len(table["video"])), "num_fake_videos": int(table["label"].sum()),
            **{key: m[key] for key in ("roc_auc", "eer", "average_precision")}}


def pooled_metrics(labels: np.ndarray, scores: np.ndarray, predicted: np.ndarray
                   ) -> dict[str, Any]:
    """Threshold-free metrics of the pooled scores + thresholded ones of the fold predictions."""
    out = metrics.binary_metrics(labels, scores, 0.5)
    thresholded = metrics.binary_metrics(labels, predicted.astype(np.float64), 0.5)
    for key in ("accuracy", "balanced_accuracy", "precision", "recall", "f1",
                "confusion_matrix"):
        out[key] = thresholded[key]
    out["threshold"] = None  # each fold used its own validation threshold
    return out


def summarize(per_fold: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    summary = {}
    for key in TABLE_METRICS:
        values = [m[key] for m in per_fold if m.get(key) is not None]
        if values:
            summary[key] = {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1))
                            if len(values) > 1 else 0.0}
    return summary


def format_table(per_fold: list[dict[str, Any]], summary: dict, pooled: dict) -> str:
    keys = [k for k in TABLE_METRICS if k in summary]
    lines = ["| fold | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for i, m in enumerate(per_fold):
        lines.append(f"| {i} | " + " | ".join(
            "-" if m.get(k) is None else f"{m[k]:.4f}" for k in keys) + " |")
    lines.append("| mean ± std | " + " | ".join(
        f"{summary[k]['mean']:.4f} ± {summary[k]['std']:.4f}" for k in keys) + " |")
    lines.append("| pooled | " + " | ".join(
        "-" if pooled.get(k) is None else f"{pooled[k]:.4f}" for k in keys) + " |")
    cm = pooled["confusion_matrix"]
    lines.append(f"\nPooled confusion matrix (rows true, cols predicted; real, fake): {cm}")
    return "\n".join(lines)


def run_kfold(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    from data_prep import folds

    k = int(config.kfold)
    workdir = os.path.abspath(workdir)
    dataset_dir = datasets.prepare_single(config, workdir, f"{k}-fold cross-validation")
    folds_root = os.path.join(workdir, "folds_data")
    if jax.process_index() == 0:
        folds.make_folds(dataset_dir, folds_root, k=k, seed=int(config.seed))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices("folds written")
    fold_dirs = [os.path.join(folds_root, f"fold_{i}") for i in range(k)]

    per_fold, labels, scores, predicted, metas = [], [], [], [], []
    for i, data_dir in enumerate(fold_dirs):
        run_dir = os.path.join(workdir, f"fold_{i}")
        test_dir = os.path.join(run_dir, "eval", "test")
        if os.path.exists(os.path.join(test_dir, "metrics.json")):
            logging.info("fold %d/%d already evaluated in %s: reused", i + 1, k, run_dir)
        else:
            logging.info("fold %d/%d: training in %s", i + 1, k, run_dir)
            summary = tasks.train_and_evaluate(fold_config(config, data_dir), run_dir)
            if summary.get("halted"):  # SIGTERM / halt_after_steps: rerun to continue the CV
                logging.warning("fold %d stopped (%s); rerun the command to resume", i,
                                summary["halted"])
                return {"k": k, "halted": summary["halted"], "fold": i}
        with open(os.path.join(test_dir, "metrics.json")) as f:
            per_fold.append(json.load(f))
        fold_labels, fold_scores, fold_pred = _read_predictions(
            os.path.join(test_dir, "predictions.csv"))
        metas += _read_metas(os.path.join(test_dir, "predictions.csv"))
        labels.append(fold_labels)
        scores.append(fold_scores)
        predicted.append(fold_pred)

    labels, scores, predicted = map(np.concatenate, (labels, scores, predicted))
    pooled = pooled_metrics(labels, scores, predicted)
    summary = summarize(per_fold)
    table = format_table(per_fold, summary, pooled)
    pooled_video = pooled_video_metrics(labels, scores, metas)
    if pooled_video:
        table += ("\nPooled video level (each video's mean p_fake): ROC AUC "
                  f"{pooled_video['roc_auc']:.4f}, EER {pooled_video['eer']:.4f}, AP "
                  f"{pooled_video['average_precision']:.4f} over {pooled_video['num_videos']} "
                  "videos")
    results = {"k": k, "seed": int(config.seed), "per_fold": per_fold, "mean_std": summary,
               **({"pooled_video": pooled_video} if pooled_video else {}),
               "pooled": pooled, "folds_index": os.path.join(folds_root, folds.FOLDS_INDEX)}
    if jax.process_index() == 0:
        out_dir = os.path.join(workdir, "kfold")
        json_io.write_json(results, os.path.join(out_dir, "results.json"), sort_keys=True)
        with open(os.path.join(out_dir, "results.md"), "w") as f:
            f.write(f"# {k}-fold cross-validation (seed {config.seed})\n\n{table}\n")
        # Each fold's predictions used its own threshold: the confusion matrix pools those;
        # the histogram's line is their mean (one line cannot show k thresholds).
        mean_threshold = float(np.mean([m["threshold"] for m in per_fold]))
        metrics.save_plots(labels, scores, dict(pooled, threshold=mean_threshold), out_dir,
                           title=f"{k} folds pooled",
                           threshold_text=f"per-fold thresholds (mean {mean_threshold:.3f})")
    logging.info("%d-fold cross-validation:\n%s", k, table)
    return results
