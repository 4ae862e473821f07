"""Ensembles of finished runs trained on the same data (e.g. a pretrained CNN + co-occurrence).

The ensemble's score is the mean of the members' log-odds, each standardised by the mean and
std of that run's own validation log-odds (`<workdir>/eval/<val_split>/predictions.csv`, written
by its final evaluation): runs differ in calibration, and averaged probabilities would follow
the most confident one. Its threshold is chosen on the combined validation scores; nothing
from a test split is used.
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Sequence

import numpy as np

from deepfake_jax import runs
from deepfake_jax.evaluation import metrics

EPS = 1e-6  # p_fake is clipped to [EPS, 1 - EPS] before its log-odds are taken


def log_odds(p_fake) -> np.ndarray:
    p = np.clip(np.asarray(p_fake, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def read_predictions(path: str) -> dict[int, tuple[str, int, float]]:
    """record index -> (path, label, p_fake) of an evaluation's `predictions.csv`."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: the run has no finished evaluation there "
                                "(train it to the end, or run python -m deepfake_jax.evaluate)")
    with open(path, newline="") as f:
        return {int(row["index"]): (row["path"], int(row["label"]), float(row["p_fake"]))
                for row in csv.DictReader(f)}


def aligned(per_member: Sequence[dict[int, tuple[str, int, float]]], names: Sequence[str],
            what: str) -> tuple[list[int], list[str], np.ndarray, list[np.ndarray]]:
    """(record indices, paths, labels, each member's p_fake) over the records every member
    scored; members that scored other images (other data, other splits) are refused."""
    first = per_member[0]
    for name, preds in zip(names[1:], per_member[1:], strict=True):
        if preds.keys() != first.keys() or any(
                preds[i][:2] != first[i][:2] for i in first):
            raise ValueError(f"{what}: {name} scored other images than {names[0]}: the members "
                             "of an ensemble must be trained and evaluated on the same data")
    order = sorted(first)
    return (order, [first[i][0] for i in order], np.array([first[i][1] for i in order]),
            [np.array([preds[i][2] for i in order]) for preds in per_member])


def write_predictions(path: str, indices: Sequence[int], paths: Sequence[str],
                      labels: np.ndarray, p_fake: np.ndarray,
                      member_p_fakes: Sequence[np.ndarray], threshold: float) -> None:
    """The ensemble's predictions.csv: the columns of an evaluation's, then each member's."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "label", "p_fake", "predicted",
                         *(f"p_fake_member{i}" for i in range(len(member_p_fakes)))])
        for k, (index, name, label, p) in enumerate(zip(indices, paths, labels, p_fake,
                                                        strict=True)):
            writer.writerow([index, name, int(label), f"{p:.6f}", int(p >= threshold),
                             *(f"{m[k]:.6f}" for m in member_p_fakes)])


@dataclasses.dataclass(frozen=True)
class Member:
    workdir: str
    mean: float  # of the run's validation log-odds
    std: float

    @classmethod
    def of_predictions(cls, workdir: str, val_p_fake) -> Member:
        """The member whose validation p_fake are `val_p_fake`."""
        z = log_odds(val_p_fake)
        return cls(workdir, float(z.mean()), float(z.std() + EPS))


@dataclasses.dataclass(frozen=True)
class Ensemble:
    members: tuple[Member, ...]
    threshold: float
    threshold_method: str
    val_split: str

    @classmethod
    def of_runs(cls, workdirs: Sequence[str], threshold_method: str | None = None
                ) -> Ensemble:
        """The ensemble of finished runs (two or more), from their validation predictions."""
        if len(workdirs) < 2:
            raise ValueError("an ensemble needs two or more --workdir runs")
        workdirs = [os.path.abspath(w) for w in workdirs]
        configs = [runs.load_run_config(w) for w in workdirs]
        for w, c in zip(workdirs, configs, strict=True):
            if c.get("task", "classification") != "classification":
                raise ValueError(f"{w} is a {c.task} run: only real/fake classifiers ensemble")
        val_split = configs[0].data.val_split
        val = [read_predictions(os.path.join(w, "eval", val_split, "predictions.csv"))
               for w in workdirs]
        _, _, labels, p_fakes = aligned(val, workdirs, f"validation split {val_split!r}")
        members = tuple(Member.of_predictions(w, p) for w, p in zip(workdirs, p_fakes,
                                                                    strict=True))
        method = threshold_method or configs[0].eval.threshold_method
        partial = cls(members, 0.5, method, val_split)
        threshold = metrics.choose_threshold(labels, partial.p_fake(p_fakes), method)
        return dataclasses.replace(partial, threshold=float(threshold))

    def p_fake(self, member_p_fakes: Sequence[np.ndarray]) -> np.ndarray:
        """The ensemble's p_fake from each member's p_fake of the same images (member order)."""
        if len(member_p_fakes) != len(self.members):
            raise ValueError(f"{len(member_p_fakes)} score arrays for {len(self.members)} members")
        z = np.mean([(log_odds(p) - m.mean) / m.std
                     for p, m in zip(member_p_fakes, self.members, strict=True)], axis=0)
        return 1.0 / (1.0 + np.exp(-z))

    def describe(self) -> str:
        return (f"ensemble of {len(self.members)} runs (threshold {self.threshold:.4f}, "
                f"{self.threshold_method} on {self.val_split})")
