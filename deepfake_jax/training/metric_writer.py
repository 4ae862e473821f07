"""Run bookkeeping: the resolved config in the workdir, JSONL metrics, console progress lines."""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import ml_collections

CONFIG_FILE = re.compile(r"config(?:\.(\d+))?\.json$")


def config_files(workdir: str) -> list[str]:
    """The run's recorded configs, oldest first: `config.json`, `config.1.json`, ..."""
    found = []
    for name in os.listdir(workdir) if os.path.isdir(workdir) else ():
        m = CONFIG_FILE.fullmatch(name)
        if m:
            found.append((int(m.group(1) or 0), os.path.join(workdir, name)))
    return [path for _, path in sorted(found)]


def next_config_path(workdir: str) -> str:
    """Where `save_config` writes next: `config.json`, else the first free `config.<n>.json`."""
    path = os.path.join(workdir, "config.json")
    n = 1
    while os.path.exists(path):
        path = os.path.join(workdir, f"config.{n}.json")
        n += 1
    return path


def config_for_step(workdir: str, checkpointer, step: int) -> str | None:
    """The config file (a name in `workdir`) of the run that saved checkpoint `step`.

    Checkpoints name it (`Checkpointer.saved_by`). For older checkpoints, which do not, it is
    the newest config recorded before the save started (each run recorded its config before
    its first save); None when the workdir has no config file.
    """
    recorded, saved_at = checkpointer.saved_by(step)
    paths = config_files(workdir)
    if recorded and os.path.exists(os.path.join(workdir, recorded)):
        return recorded
    if not paths:
        return None
    if saved_at is not None:
        before = [p for p in paths if os.path.getmtime(p) <= saved_at]
        # none before: the workdir was copied (new file times): the first config then
        return os.path.basename((before or paths)[-1 if before else 0])
    return os.path.basename(paths[-1])


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes the resolved config (after command-line overrides) as `workdir/config.json`.

    A resumed run appends its config as `config.<n>.json` instead of overwriting the first.
    The trainer calls this only once the run has started (config checked, data found, state
    built or restored), so a rerun that fails early leaves no config behind.
    """
    path = next_config_path(workdir)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)  # never a half-written config.json
    return path


class MetricWriter:
    """Appends one JSON object per line to `workdir/metrics.jsonl` (easy to load with pandas),
    writes the same scalars as TensorBoard event files in `workdir` (tags `<kind>/<key>`, e.g.
    `train/loss`, `train/learning_rate`, `val/val_roc_auc`, `final_test/roc_auc`), and on close
    draws `curves.png` (`curves.py`)."""

    def __init__(self, workdir: str, enabled: bool = True, resume_step: int | None = None):
        """`resume_step`: the step a resumed run restarts from; rows the earlier run wrote
        after it (a run killed before its next checkpoint) are dropped, so the resumed run
        writes each row once (`drop_rows_after`), and TensorBoard hides those events too."""
        self.enabled = enabled
        self.workdir = workdir
        path = os.path.join(workdir, "metrics.jsonl")
        if enabled and resume_step is not None:
            drop_rows_after(path, resume_step)
        self._f = open(path, "a") if enabled else None
        self._tb = None
        if enabled:
            from tensorboardX import SummaryWriter  # a 0.6 MB writer: no TensorFlow needed

            purge = None if resume_step is None else int(resume_step) + 1
            self._tb = SummaryWriter(workdir, flush_secs=30, purge_step=purge)

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
            from deepfake_jax.training import curves

            curves.plot_training_curves(self.workdir)


# Rows written before the checkpoint of their step was saved: a run resumed from that step keeps
# them. Rows of other kinds at that step (final_*, early_stop) come after it and are redone.
_BEFORE_CHECKPOINT = ("train", "val")


def drop_rows_after(path: str, step: int) -> int:
    """Rewrites `metrics.jsonl` without the rows a run resumed at `step` writes again: those
    after `step`, and those at `step` written after its checkpoint; also lines cut short by a
    kill. Returns how many lines were dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                keep = int(row["step"]) < step or (int(row["step"]) == step
                                                   and row.get("kind") in _BEFORE_CHECKPOINT)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                keep = False
            if keep:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


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


def format_metrics(d: dict[str, Any]) -> str:
    """`name=value, ...` with floats to 4 decimals, for log lines."""
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
