"""Compare k-fold runs on the same folds, and their ensemble, with bootstrap intervals.

    python bench/compare_folds.py --run pretrained=runs/pt_cv --run cooc=runs/cooc_cv \
        [--folds 5] [--bootstrap 2000] [--json out.json]

Each `--run NAME=WORKDIR` is a `--config.kfold=K` workdir of `deepfake_jax.main` (its
`fold_<i>/eval/{valid,test}/predictions.csv`); every run must hold out the same images
(same converted folder, seed and K), which is checked. The ensemble averages the runs'
log-odds after standardising each with the mean and std of its own validation log-odds of
that fold (the runs differ in calibration: an averaged probability would follow the most
confident one); nothing from the test split is used to fit it. Printed: ROC AUC per fold,
mean and pooled over the folds with a 95% bootstrap interval (images resampled with
replacement, stratified by class), and each run's pooled difference to the first run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os

import numpy as np
from sklearn.metrics import roc_auc_score

_EPS = 1e-6


def read_predictions(path: str) -> dict[str, tuple[int, float]]:
    """path of each image -> (label, log-odds of p_fake)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: is this a finished k-fold workdir?")
    with open(path) as f:
        out = {}
        for row in csv.DictReader(f):
            p = min(max(float(row["p_fake"]), _EPS), 1 - _EPS)
            out[row["path"]] = (int(row["label"]), float(np.log(p / (1 - p))))
    return out


def fold_scores(runs: dict[str, str], fold: int) -> tuple[list[str], np.ndarray, dict]:
    """(test paths, labels, {name: standardised test log-odds}) of one fold, runs aligned."""
    tests, stats = {}, {}
    for name, workdir in runs.items():
        base = os.path.join(workdir, f"fold_{fold}", "eval")
        tests[name] = read_predictions(os.path.join(base, "test", "predictions.csv"))
        valid = np.array([s for _, s in read_predictions(
            os.path.join(base, "valid", "predictions.csv")).values()])
        stats[name] = (valid.mean(), valid.std() + _EPS)
    first = next(iter(tests.values()))
    paths = sorted(first)
    for name, t in tests.items():
        if sorted(t) != paths:
            raise ValueError(f"fold {fold}: run {name!r} held out other images than "
                             f"{next(iter(runs))!r}: not the same folds")
    labels = np.array([first[p][0] for p in paths])
    scores = {name: (np.array([tests[name][p][1] for p in paths]) - stats[name][0])
              / stats[name][1] for name in runs}
    return paths, labels, scores


def bootstrap_auc(labels: np.ndarray, scores: dict[str, np.ndarray], reference: str,
                  n: int, seed: int = 0) -> dict[str, dict[str, float]]:
    """Per run: pooled AUC, its 95% interval, and the interval of (AUC - reference's AUC)."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    draws = {name: [] for name in scores}
    diffs = {name: [] for name in scores}
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        aucs = {name: roc_auc_score(labels[idx], s[idx]) for name, s in scores.items()}
        for name in scores:
            draws[name].append(aucs[name])
            diffs[name].append(aucs[name] - aucs[reference])
    return {name: {"pooled_auc": float(roc_auc_score(labels, scores[name])),
                   "ci95": [float(v) for v in np.percentile(draws[name], [2.5, 97.5])],
                   "diff_to_" + reference: float(np.mean(diffs[name])),
                   "diff_ci95": [float(v) for v in np.percentile(diffs[name], [2.5, 97.5])]}
            for name in scores}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=WORKDIR",
                        help="a k-fold workdir; repeat for each run (the first is the reference)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    runs = {}
    for spec in args.run:
        name, sep, workdir = spec.partition("=")
        if not sep or not name or not workdir:
            parser.error(f"--run {spec!r}: expected NAME=WORKDIR")
        runs[name] = workdir
    names = list(runs) + (["ensemble"] if len(runs) > 1 else [])
    per_fold = {name: [] for name in names}
    all_labels, all_scores = [], {name: [] for name in names}
    for fold in range(args.folds):
        _, labels, scores = fold_scores(runs, fold)
        if len(runs) > 1:
            scores["ensemble"] = np.mean([scores[n] for n in runs], axis=0)
        all_labels.append(labels)
        for name in names:
            per_fold[name].append(float(roc_auc_score(labels, scores[name])))
            all_scores[name].append(scores[name])
    labels = np.concatenate(all_labels)
    pooled = bootstrap_auc(labels, {n: np.concatenate(s) for n, s in all_scores.items()},
                           names[0], args.bootstrap)
    ref = names[0]
    print(f"ROC AUC on {args.folds} folds ({len(labels)} held-out images); 95% bootstrap "
          f"intervals from {args.bootstrap} stratified resamples\n")
    print("| run | " + " | ".join(f"fold {i}" for i in range(args.folds))
          + f" | mean ± std | pooled [95% CI] | pooled - {ref} [95% CI] |")
    print("|---|" + "---:|" * (args.folds + 3))
    for name in names:
        f = per_fold[name]
        p = pooled[name]
        print(f"| {name} | " + " | ".join(f"{v:.3f}" for v in f)
              + f" | {np.mean(f):.3f} ± {np.std(f):.3f} | {p['pooled_auc']:.3f} "
              f"[{p['ci95'][0]:.3f}, {p['ci95'][1]:.3f}] | {p['diff_to_' + ref]:+.3f} "
              f"[{p['diff_ci95'][0]:+.3f}, {p['diff_ci95'][1]:+.3f}] |")
    result = {"runs": runs, "per_fold_auc": per_fold, "pooled": pooled}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
