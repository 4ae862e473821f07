"""`training_curves.png` of a run, drawn from its `metrics.jsonl`.

Three panels: the training and validation losses, the learning rate (every `learning_rate*`
key) and the other validation metrics (`val_*` keys bounded to [0, 1], e.g. ROC AUC and
accuracy). Written when a run's metric writer closes, so a halted run gets the curves so far.
"""

from __future__ import annotations

import json
import os
from typing import Any

CURVES_NAME = "training_curves.png"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """The rows of `<workdir>/metrics.jsonl` (empty when there is none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _series(rows, kind: str, key: str) -> tuple[list[int], list[float]]:
    points = {r["step"]: r[key] for r in rows if r["kind"] == kind and r.get(key) is not None}
    steps = sorted(points)  # a resumed run logs some steps again: the last value wins
    return steps, [points[s] for s in steps]


def _plot(ax, steps: list[int], values: list[float], label: str) -> None:
    # Markers where the points are few: a line through one point draws nothing.
    ax.plot(steps, values, "-" if len(steps) > 20 else ".-", label=label)


def plot_training_curves(workdir: str, path: str | None = None) -> str | None:
    """Writes the curves of `workdir`'s metrics; returns the file, or None with nothing to draw."""
    rows = read_metrics(workdir)
    train_keys = sorted({k for r in rows if r["kind"] == "train" for k in r})
    val_keys = sorted({k for r in rows if r["kind"] == "val" for k in r if k.startswith("val_")
                       and (k.endswith("loss") or all(
                           0.0 <= (r.get(k) if r.get(k) is not None else 0.0) <= 1.0
                           for r in rows if r["kind"] == "val"))})
    if "loss" not in train_keys and not val_keys:
        return None
    from matplotlib.figure import Figure  # the object API: no global pyplot state

    fig = Figure(figsize=(13, 3.8))
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    if "loss" in train_keys:
        _plot(ax_loss, *_series(rows, "train", "loss"), label="train loss")
    ax_loss.set(title="loss", xlabel="step")
    for key in [k for k in train_keys if k.startswith("learning_rate")]:
        _plot(ax_lr, *_series(rows, "train", key), label=key)
    ax_lr.set(title="learning rate", xlabel="step")
    for key in val_keys:  # a validation loss beside the training loss, not among the scores
        ax = ax_loss if key.endswith("loss") else ax_val
        ax.plot(*_series(rows, "val", key), "o-", ms=3, label=key)
    ax_val.set(title="validation", xlabel="step")
    for ax in (ax_loss, ax_lr, ax_val):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = path or os.path.join(workdir, CURVES_NAME)
    fig.savefig(path, dpi=90)
    return path
