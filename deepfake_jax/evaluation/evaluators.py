"""Scoring whole splits and writing their reports; shared by training and `evaluate`.

The trainer's end-of-training evaluation and `python -m deepfake_jax.evaluate` both call
`evaluate_splits`, so the two give the same numbers for the same weights.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
from typing import Any

import jax
import numpy as np
import tqdm
from jax.experimental import multihost_utils

from deepfake_jax import json_io
from deepfake_jax.data import input_pipeline
from deepfake_jax.evaluation import metrics, video_metrics
from deepfake_jax.training import sharding


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
                    bootstrap: int = 0, show_progress: bool = False,
                    file_domains: dict[str, str] | None = None
                    ) -> dict[str, dict[str, Any]]:
    """Threshold from `threshold_split` (validation files), applied unchanged to every split.

    `file_domains` ({shard path: domain name}, `config.data.mix`): records get that domain in
    their metadata, so the metrics have per-domain rows.

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
        listing = input_pipeline.read_metadata(files)  # path, label, meta per record index
        if file_domains:
            from deepfake_jax.data import domain_mix

            domain_mix.tag_listing(listing, files, file_domains)
        record_meta = [listing[int(i)].get("meta", {}) for i in preds["index"]]
        subsets = metrics.subset_metrics(preds["label"], preds["p_fake"], threshold, record_meta)
        if subsets:
            m["subsets"] = subsets
        video = video_metrics.video_level(preds["label"], preds["p_fake"], record_meta,
                                          threshold)
        if video:  # video-frame datasets: the mean p_fake of each video's frames
            m["video"] = video[0]
            m.update({f"video_{k}": video[0][k] for k in ("roc_auc", "accuracy")})
        if bootstrap:
            m["bootstrap_95"] = metrics.bootstrap_intervals(preds["label"], preds["p_fake"],
                                                            threshold, bootstrap)
        m.update(split=name, threshold_method=threshold_method, step=step, **(extra or {}))
        results[name] = m
        if jax.process_index() == 0:
            split_dir = os.path.join(out_dir, name)
            json_io.write_json(m, os.path.join(split_dir, "metrics.json"), sort_keys=True)
            metrics.save_plots(preds["label"], preds["p_fake"], m, split_dir, title=name)
            write_predictions_csv(os.path.join(split_dir, "predictions.csv"), preds,
                                  listing, threshold)
            if video:
                video_metrics.write_video_csv(
                    os.path.join(split_dir, "video_predictions.csv"), video[1], threshold)
    return results


# The sweep of the evaluation issue: what re-sharing a face image on the internet does to it.
ROBUSTNESS_LEVELS: dict[str, tuple[float, ...]] = {
    "jpeg": (95, 75, 50, 30),
    "blur": (1, 2, 3),
    "resize": (0.5, 0.75),
    "noise": (0.02, 0.05),
}


# What each corruption's level means (augment.corrupt), for the plot's axes.
ROBUSTNESS_AXES = {"jpeg": "JPEG quality", "blur": "Gaussian sigma (px)",
                   "resize": "scale (down and back up)", "noise": "noise sigma (fraction of 255)"}


def robustness_sweep(eval_fn, state, mesh, preprocess, batch_size: int, files: list[str],
                     threshold: float, out_dir: str,
                     levels: dict[str, tuple[float, ...]] | None = None,
                     show_progress: bool = False,
                     clean: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Metrics of one split under each corruption level, at the clean validation threshold.

    `clean`: the split's uncorrupted metrics if already computed (not scored again).
    Writes `<out_dir>/robustness.json` and `robustness.png` (ROC AUC and accuracy vs level).
    """
    levels = levels or ROBUSTNESS_LEVELS
    settings = [("none", 0.0)] + [(k, v) for k, vs in levels.items() for v in vs]
    keys = ("roc_auc", "accuracy", "eer", "average_precision", "recall", "precision")
    rows = []
    for kind, level in settings:
        if kind == "none" and clean is not None:
            m = clean
        else:
            pre = dataclasses.replace(preprocess,
                                      corruption=None if kind == "none" else (kind, level))
            label = f"robustness {kind} {level:g}" if show_progress else None
            preds = predict_split(eval_fn, state, mesh, files, pre, batch_size, label)
            m = metrics.binary_metrics(preds["label"], preds["p_fake"], threshold)
        rows.append({"corruption": kind, "level": level, **{k: m[k] for k in keys}})
    if jax.process_index() == 0:
        os.makedirs(out_dir, exist_ok=True)
        json_io.write_json({"threshold": threshold, "rows": rows},
                           os.path.join(out_dir, "robustness.json"), sort_keys=True)
        _plot_robustness(rows, os.path.join(out_dir, "robustness.png"))
    return rows


def _plot_robustness(rows: list[dict[str, Any]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    clean = rows[0]
    kinds = [k for k in ROBUSTNESS_LEVELS if any(r["corruption"] == k for r in rows)]
    values = [r[key] for r in rows for key in ("roc_auc", "accuracy") if r[key] is not None]
    bottom = min(0.4, np.floor(min(values, default=0.4) * 10) / 10)  # a bad model stays in view
    fig, axes = plt.subplots(1, len(kinds), figsize=(3.2 * len(kinds), 3.5), squeeze=False,
                             sharey=True)
    for ax, kind in zip(axes[0], kinds, strict=True):
        sub = [r for r in rows if r["corruption"] == kind]
        # Levels at even steps, named by their value (strings would make matplotlib log a
        # "categorical units" line per axis).
        xs = np.arange(len(sub))
        for key, name, style, colour in (("roc_auc", "ROC AUC", "o-", "C0"),
                                         ("accuracy", "accuracy", "s--", "C1")):
            ax.plot(xs, [r[key] for r in sub], style, color=colour, label=name)
            ax.axhline(clean[key], color=colour, lw=0.8, ls=":", label=f"{name}, clean")
        ax.set_xticks(xs, [f"{r['level']:g}" for r in sub])
        ax.set(title=kind, xlabel=ROBUSTNESS_AXES.get(kind, "level"), ylim=(bottom, 1.01))
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)


def format_robustness(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'corruption':12s} {'level':>6s} {'roc_auc':>8s} {'accuracy':>8s} {'eer':>8s}"]
    for r in rows:
        auc = f"{r['roc_auc']:8.4f}" if r["roc_auc"] is not None else f"{'-':>8s}"
        eer = f"{r['eer']:8.4f}" if r["eer"] is not None else f"{'-':>8s}"
        lines.append(f"{r['corruption']:12s} {r['level']:6g} {auc} {r['accuracy']:8.4f} {eer}")
    return "\n".join(lines)


def format_subsets(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'subset':12s} {'value':12s} {'fakes':>6s} {'reals':>6s} {'roc_auc':>8s} "
             f"{'detected':>8s}"]
    for r in rows:
        auc = f"{r['roc_auc']:8.4f}" if r["roc_auc"] is not None else f"{'-':>8s}"
        det = f"{r['fake_detected']:8.4f}" if r["fake_detected"] is not None else f"{'-':>8s}"
        lines.append(f"{r['subset']:12s} {r['value']:12s} {r['num_fake']:6d} {r['num_real']:6d} "
                     f"{auc} {det}")
    return "\n".join(lines)
