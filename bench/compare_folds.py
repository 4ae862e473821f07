"""Compare k-fold runs on the same folds, and their ensemble, with bootstrap intervals.

    python bench/compare_folds.py --run pretrained=runs/pt_cv --run cooc=runs/cooc_cv \
        [--folds 5] [--bootstrap 2000] [--json out.json]

Each `--run NAME=WORKDIR` is a `--config.kfold=K` workdir of `deepfake_jax.main` (its
`fold_<i>/eval/{valid,test}/predictions.csv`); every run must hold out the same images
(same converted folder, seed and K), which is checked. The ensemble is that of
`python -m deepfake_jax.evaluate --workdir A/fold_<i> --workdir B/fold_<i>`
(`evaluation.ensemble`: the mean of the runs' log-odds, each standardised by its own
validation log-odds of that fold); nothing from the test split is used to fit it.
Printed: ROC AUC per fold, mean and pooled over the folds with a 95% bootstrap interval
(images resampled with replacement, stratified by class), and each run's pooled difference
to the first run.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from sklearn.metrics import roc_auc_score

from deepfake_jax.evaluation import ensemble


def fold_scores(runs: dict[str, str], fold: int) -> tuple[list[str], np.ndarray, dict]:
    """(test paths, labels, {name: standardised test log-odds}) of one fold, runs aligned:
    `evaluation.ensemble`'s standardisation (the ensemble is their mean)."""
    workdirs = [os.path.join(w, f"fold_{fold}") for w in runs.values()]
    members = [ensemble.Member.of_predictions(w, [p for _, _, p in ensemble.read_predictions(
        os.path.join(w, "eval", "valid", "predictions.csv")).values()]) for w in workdirs]
    tests = [ensemble.read_predictions(os.path.join(w, "eval", "test", "predictions.csv"))
             for w in workdirs]
    _, paths, labels, p_fakes = ensemble.aligned(tests, list(runs), f"fold {fold} test")
    scores = {name: (ensemble.log_odds(p) - m.mean) / m.std
              for name, p, m in zip(runs, p_fakes, members, strict=True)}
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
