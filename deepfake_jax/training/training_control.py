"""Early stopping and reduce-on-plateau as pure functions of the validation history.

Both follow Keras' callbacks (`EarlyStopping`, `ReduceLROnPlateau`), counted in validations
(every `config.eval_every_steps` steps) instead of epochs:

- a value *improves* on the best so far when it is better by more than `min_delta` (strictly);
  the mode is "min" for metrics whose name contains "loss", else "max". The first finite value
  always improves. NaN never improves (a diverged run counts as "no improvement"); a metric
  that is None (undefined, e.g. ROC AUC of a one-class split) leaves the state unchanged.
- early stopping: stop once `patience` validations in a row brought no improvement; the best
  step is the last improvement (what the final evaluation restores, like
  `restore_best_weights`).
- reduce-on-plateau: after `patience` validations without improvement (outside the cooldown),
  scale := max(scale * factor, min_scale), then `cooldown` validations that are not counted
  (as PyTorch's ReduceLROnPlateau). The trainer multiplies the optimizer's updates by `scale`.

Nothing here is stored in checkpoints: on resume the trainer replays the "val" records of
`metrics.jsonl` up to the restored step (`read_val_history`), which rebuilds exactly the state
an uninterrupted run had at that step.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

from absl import logging


def metric_mode(metric: str) -> str:
    """"min" for losses (the name contains "loss"), "max" for everything else."""
    return "min" if "loss" in metric else "max"


def _metric_value(metrics: Mapping[str, Any], metric: str, key: str, step: int) -> float | None:
    if metric not in metrics:
        reported = ", ".join(sorted(k for k in metrics if k not in ("step", "kind", "time")))
        raise ValueError(f"{key}={metric!r} is not a validation metric (step {step} reported: "
                         f"{reported})")
    value = metrics[metric]
    return None if value is None else float(value)


def _check(cond: bool, key: str, value: Any, what: str) -> None:
    if not cond:
        raise ValueError(f"{key}={value!r}: {what}")


@dataclasses.dataclass
class _Best:
    """The best value so far of one metric, with Keras' improvement rule."""

    mode: str
    min_delta: float
    value: float | None = None

    def improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.value is None:
            return True
        if self.mode == "min":
            return value < self.value - self.min_delta
        return value > self.value + self.min_delta


@dataclasses.dataclass
class EarlyStopping:
    metric: str
    patience: int
    min_delta: float = 0.0
    best: _Best = dataclasses.field(init=False)
    best_step: int | None = None
    wait: int = 0  # validations in a row without improvement
    stopped_step: int | None = None

    CONFIG_KEY = "config.early_stopping"

    def __post_init__(self):
        key = self.CONFIG_KEY
        _check(isinstance(self.patience, int) and self.patience > 0, f"{key}.patience",
               self.patience, "must be a positive number of validations (0 = off)")
        _check(self.min_delta >= 0, f"{key}.min_delta", self.min_delta, "must be >= 0")
        self.best = _Best(metric_mode(self.metric), float(self.min_delta))

    @classmethod
    def from_config(cls, cfg: Any) -> EarlyStopping | None:
        """None when `cfg` is missing or its patience is 0 (off)."""
        if not cfg or not cfg.get("patience"):
            return None
        return cls(str(cfg.get("metric", "val_roc_auc")), int(cfg.patience),
                   float(cfg.get("min_delta", 0.0)))

    @property
    def stopped(self) -> bool:
        return self.stopped_step is not None

    def update(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Takes the validation at `step`; True when training should stop here."""
        if self.stopped:
            return True
        value = _metric_value(metrics, self.metric, f"{self.CONFIG_KEY}.metric", step)
        if value is None:
            return False
        if self.best.improves(value):
            self.best.value, self.best_step, self.wait = value, step, 0
        else:
            self.wait += 1
        if self.wait >= self.patience:
            self.stopped_step = step
        return self.stopped


@dataclasses.dataclass
class ReduceOnPlateau:
    metric: str
    patience: int
    factor: float = 0.5
    min_scale: float = 1e-3
    cooldown: int = 0
    min_delta: float = 0.0
    scale: float = 1.0
    best: _Best = dataclasses.field(init=False)
    wait: int = 0
    cooldown_left: int = 0

    CONFIG_KEY = "config.optimizer.reduce_on_plateau"

    def __post_init__(self):
        key = self.CONFIG_KEY
        _check(isinstance(self.patience, int) and self.patience > 0, f"{key}.patience",
               self.patience, "must be a positive number of validations (0 = off)")
        _check(0.0 < self.factor < 1.0, f"{key}.factor", self.factor, "must be in (0, 1)")
        _check(0.0 < self.min_scale <= 1.0, f"{key}.min_scale", self.min_scale,
               "must be in (0, 1]")
        _check(isinstance(self.cooldown, int) and self.cooldown >= 0, f"{key}.cooldown",
               self.cooldown, "must be a number of validations >= 0")
        _check(self.min_delta >= 0, f"{key}.min_delta", self.min_delta, "must be >= 0")
        self.best = _Best(metric_mode(self.metric), float(self.min_delta))

    @classmethod
    def from_config(cls, cfg: Any) -> ReduceOnPlateau | None:
        """None when `cfg` is missing or its patience is 0 (off)."""
        if not cfg or not cfg.get("patience"):
            return None
        return cls(str(cfg.get("metric", "val_log_loss")), int(cfg.patience),
                   factor=float(cfg.get("factor", 0.5)),
                   min_scale=float(cfg.get("min_scale", 1e-3)),
                   cooldown=int(cfg.get("cooldown", 0)),
                   min_delta=float(cfg.get("min_delta", 0.0)))

    def update(self, step: int, metrics: Mapping[str, Any]) -> float:
        """Takes the validation at `step`; returns the scale for the steps after it."""
        value = _metric_value(metrics, self.metric, f"{self.CONFIG_KEY}.metric", step)
        if value is None:
            return self.scale
        if self.best.improves(value):
            self.best.value, self.wait = value, 0
        else:
            self.wait += 1
        if self.cooldown_left > 0:  # PyTorch's order: `cooldown` validations are not counted
            self.cooldown_left -= 1  # (Keras' cooldown=1 counts the next one: no effect)
            self.wait = 0
        if self.wait >= self.patience and self.scale > self.min_scale:
            self.scale = max(self.scale * self.factor, self.min_scale)
            self.cooldown_left, self.wait = self.cooldown, 0
        return self.scale


@dataclasses.dataclass
class TrainingControl:
    """Both controls (each None when off), driven by the loop's validation summaries."""

    early_stopping: EarlyStopping | None = None
    plateau: ReduceOnPlateau | None = None

    @classmethod
    def from_config(cls, config: Any) -> TrainingControl:
        optimizer = config.get("optimizer") or {}
        return cls(EarlyStopping.from_config(config.get("early_stopping")),
                   ReduceOnPlateau.from_config(optimizer.get("reduce_on_plateau")))

    @property
    def enabled(self) -> bool:
        return self.early_stopping is not None or self.plateau is not None

    @property
    def lr_scale(self) -> float:
        return 1.0 if self.plateau is None else self.plateau.scale

    @property
    def stopped(self) -> bool:
        return self.early_stopping is not None and self.early_stopping.stopped

    @property
    def step_lr_scale(self) -> float | None:
        """What the train step gets: the scale, or None when reduce-on-plateau is off (the
        step is then compiled without the multiply, bit-identical to a run without it)."""
        return None if self.plateau is None else self.plateau.scale

    def update(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self.plateau is not None:
            self.plateau.update(step, metrics)
        if self.early_stopping is not None:
            self.early_stopping.update(step, metrics)

    def replay(self, history: Iterable[tuple[int, Mapping[str, Any]]]) -> TrainingControl:
        """Feeds past validations (step order) in; returns self."""
        for step, metrics in history:
            if self.stopped:
                break  # the run stopped here: later records cannot exist in the same run
            self.update(step, metrics)
        return self


def read_val_history(workdir: str, up_to_step: int) -> list[tuple[int, dict[str, Any]]]:
    """The "val" records of `<workdir>/metrics.jsonl` with step <= `up_to_step`, in step order.

    A step logged twice (a run cut between its validation and the next checkpoint logs that
    validation again when resumed) counts once, with its last record; records after
    `up_to_step` belong to steps the resumed run will redo. A line cut short by a crash is
    skipped.
    """
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    by_step: dict[int, dict[str, Any]] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                logging.warning("%s:%d is not JSON (cut short?): skipped", path, lineno)
                continue
            if row.get("kind") == "val" and int(row["step"]) <= up_to_step:
                by_step[int(row["step"])] = row
    return sorted(by_step.items())
