"""Run bookkeeping: the resolved config in the workdir, JSONL metrics, console progress lines."""

from __future__ import annotations

import json
import os
import time
from typing import Any

import ml_collections


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config (after command-line overrides) as `workdir/config.json`.

    A resumed run appends its config as `config.<n>.json` instead of overwriting the first.
    """
    path = os.path.join(workdir, "config.json")
    n = 1
    while os.path.exists(path):
        path = os.path.join(workdir, f"config.{n}.json")
        n += 1
    with open(path, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    return path


class MetricWriter:
    """Appends one JSON object per line to `workdir/metrics.jsonl` (easy to load with pandas),
    writes the same scalars as TensorBoard event files in `workdir` (tags `<kind>/<key>`, e.g.
    `train/loss`, `train/learning_rate`, `val/val_roc_auc`, `final_test/roc_auc`), and on close
    draws `training_curves.png` (`training_curves.py`)."""

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.workdir = workdir
        self._f = open(os.path.join(workdir, "metrics.jsonl"), "a") if enabled else None
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # a 0.6 MB writer: no TensorFlow needed

            self._tb = SummaryWriter(workdir, flush_secs=30)

    def write(self, step: int, kind: str, values: dict[str, Any]) -> None:
        if self._f is None:
            return
        row = {"step": int(step), "kind": kind, "time": time.time()}
        row.update({k: v for k, v in values.items() if v is None or isinstance(v, (int, float))})
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()
        for key, value in row.items():
            if key not in ("step", "kind", "time") and value is not None:
                self._tb.add_scalar(f"{kind}/{key}", float(value), int(step),
                                    walltime=row["time"])

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
            self._tb.close()
            from deepfake_jax import training_curves

            training_curves.plot_training_curves(self.workdir)


class Progress:
    """Images/s and ETA from wall time since the first logged step (compilation excluded)."""

    def __init__(self, total_steps: int, start_step: int, batch_size: int):
        self.total_steps = total_steps
        self.batch_size = batch_size
        self._t0: float | None = None
        self._s0 = start_step

    def rates(self, step: int) -> dict[str, float]:
        now = time.perf_counter()
        if self._t0 is None or step <= self._s0:
            self._t0, self._s0 = now, step
            return {}
        steps_per_s = (step - self._s0) / (now - self._t0)
        return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * self.batch_size,
                "eta_s": (self.total_steps - step) / steps_per_s}

    def line(self, step: int, metrics: dict[str, float]) -> str:
        parts = [f"step {step}/{self.total_steps}"]
        parts += [f"{k} {v:.4g}" for k, v in metrics.items()]
        rates = self.rates(step)
        if rates:
            parts.append(f"{rates['images_per_s']:.1f} img/s")
            parts.append(f"ETA {_duration(rates['eta_s'])}")
        return " | ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
