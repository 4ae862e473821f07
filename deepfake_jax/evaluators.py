"""Scoring whole splits and writing their reports; shared by training and `evaluate`.

The trainer's end-of-training evaluation and `python -m deepfake_jax.evaluate` both call
`evaluate_splits`, so the two give the same numbers for the same weights.
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from deepfake_jax import input_pipeline, metrics, sharding


def predict_split(eval_fn, state, mesh, files, preprocess, batch_size,
                  progress: str | None = None) -> dict[str, np.ndarray]:
    """Scores every record of a split once (all processes take part); arrays in index order.

    `progress`: a label to show a progress bar with (process 0 only); None for no bar.
    """
    indices, labels, scores = [], [], []
    batches = input_pipeline.eval_batches(
        files, preprocess, batch_size,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    if progress and jax.process_index() == 0:
        total = math.ceil(input_pipeline.num_records(files) / batch_size)
        batches = tqdm.tqdm(batches, desc=progress, total=total, unit="batch")
    for host_batch in batches:
        batch = sharding.host_to_global(mesh, host_batch)
        p = eval_fn(state, {"image": batch["image"], "label": batch["label"]})
        gathered = multihost_utils.process_allgather(
            {"p": p, "index": batch["index"], "label": batch["label"]}, tiled=True)
        keep = np.asarray(gathered["index"]) >= 0
        indices.append(np.asarray(gathered["index"])[keep])
        labels.append(np.asarray(gathered["label"])[keep])
        scores.append(np.asarray(gathered["p"], np.float64)[keep])
    index = np.concatenate(indices)
    order = np.argsort(index, kind="stable")
    return {"index": index[order], "label": np.concatenate(labels)[order],
            "p_fake": np.concatenate(scores)[order]}


def write_predictions_csv(path: str, preds: dict[str, np.ndarray], meta: list[dict],
                          threshold: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "label", "p_fake", "predicted", "meta"])
        for i, label, p in zip(preds["index"], preds["label"], preds["p_fake"], strict=True):
            m = meta[int(i)]
            writer.writerow([int(i), m.get("path", ""), int(label), f"{p:.6f}",
                             int(p >= threshold), json.dumps(m.get("meta", {}), sort_keys=True)])


def evaluate_splits(eval_fn, state, mesh, preprocess, batch_size: int, *,
                    threshold_split: list[str], splits: dict[str, list[str]], out_dir: str,
                    threshold_method: str = "eer", extra: dict[str, Any] | None = None,
                    bootstrap: int = 0, show_progress: bool = False
                    ) -> dict[str, dict[str, Any]]:
    """Threshold from `threshold_split` (validation files), applied unchanged to every split.

    Writes `<out_dir>/<name>/{metrics.json, predictions.csv, *.png}` and returns the metrics.
    The threshold split is scored separately even if it is also listed in `splits`, so a test
    split can never influence the threshold.
    """
    label = lambda name: f"scoring {name}" if show_progress else None
    val = predict_split(eval_fn, state, mesh, threshold_split, preprocess, batch_size,
                        label("validation (threshold)"))
    threshold = metrics.choose_threshold(val["label"], val["p_fake"], threshold_method)
    step = int(jax.device_get(state.step))
    results = {}
    for name, files in splits.items():
        preds = (val if files == threshold_split
                 else predict_split(eval_fn, state, mesh, files, preprocess, batch_size,
                                   label(name)))
        m = metrics.binary_metrics(preds["label"], preds["p_fake"], threshold)
        m.update(metrics.calibration(preds["label"], preds["p_fake"]))
        if bootstrap:
            m["bootstrap_95"] = metrics.bootstrap_intervals(preds["label"], preds["p_fake"],
                                                            threshold, bootstrap)
        m.update(split=name, threshold_method=threshold_method, step=step, **(extra or {}))
        results[name] = m
        if jax.process_index() == 0:
            split_dir = os.path.join(out_dir, name)
            metrics.write_json(m, os.path.join(split_dir, "metrics.json"))
            metrics.save_plots(preds["label"], preds["p_fake"], m, split_dir, title=name)
            write_predictions_csv(os.path.join(split_dir, "predictions.csv"), preds,
                                  input_pipeline.read_metadata(files), threshold)
    return results
