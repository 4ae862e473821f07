"""K-fold cross-validation: seeded stratified folds on disk, one run per fold, pooled tables."""

import csv
import json
import os

import numpy as np
import pytest

from data_prep import folds
from deepfake_jax.data import input_pipeline, records


def test_folds_are_stratified_disjoint_and_seeded():
    labels = np.array([0] * 30 + [1] * 20)
    parts = folds.assign_folds(labels, 5, seed=3, val_fraction=0.1)
    tests = np.concatenate([p["test"] for p in parts])
    assert sorted(tests) == list(range(50))  # every record held out exactly once
    for p in parts:
        assert np.bincount(labels[p["test"]]).tolist() == [6, 4]  # stratified
        assert not set(p["train"]) & set(p["valid"]) and not set(p["train"]) & set(p["test"])
        assert len(p["train"]) + len(p["valid"]) + len(p["test"]) == 50
    again = folds.assign_folds(labels, 5, seed=3, val_fraction=0.1)
    assert all((a["valid"] == b["valid"]).all() for a, b in zip(parts, again, strict=True))
    other = folds.assign_folds(labels, 5, seed=4, val_fraction=0.1)
    assert any((a["test"] != b["test"]).any() for a, b in zip(parts, other, strict=True))
    with pytest.raises(ValueError, match="at least 5 records of each class"):
        folds.assign_folds(np.array([0] * 10 + [1] * 3), 5, 0, 0.1)


def test_fold_datasets_on_disk(tiny_dataset, tmp_path):
    dirs = folds.make_folds(tiny_dataset, str(tmp_path / "f"), k=3, seed=0)
    pooled = {r["path"] for s in ("train", "valid")
              for r in input_pipeline.read_metadata(records.split_files(tiny_dataset, s))}
    held_out = []
    for d in dirs:
        paths = {s: [r["path"] for r in input_pipeline.read_metadata(records.split_files(d, s))]
                 for s in ("train", "valid", "test")}
        assert set().union(*map(set, paths.values())) == pooled
        held_out += paths["test"]
    assert sorted(held_out) == sorted(pooled)
    with open(tmp_path / "f" / folds.FOLDS_INDEX) as f:
        index = list(csv.DictReader(f))
    assert len(index) == len(pooled) and {r["test_fold"] for r in index} == {"0", "1", "2"}
    with pytest.raises(ValueError, match="holds folds made with"):
        folds.make_folds(tiny_dataset, str(tmp_path / "f"), k=4, seed=0)


def test_kfold_run_writes_per_fold_and_pooled_tables(tiny_dataset, tmp_path):
    from configs import default
    from deepfake_jax.experiments import kfold

    config = default.get_config("tiny")
    config.data.dir = tiny_dataset
    config.kfold = 2
    config.num_epochs = 1
    workdir = str(tmp_path / "cv")
    results = kfold.run_kfold(config, workdir)

    assert len(results["per_fold"]) == 2
    for i in range(2):
        assert os.path.exists(os.path.join(workdir, f"fold_{i}", "eval", "test", "metrics.json"))
    with open(os.path.join(workdir, "kfold", "results.json")) as f:
        saved = json.load(f)
    pooled = saved["pooled"]
    assert pooled["num_examples"] == 72  # every train+valid record scored once, held out
    assert np.sum(pooled["confusion_matrix"]) == 72
    assert sum(m["num_examples"] for m in saved["per_fold"]) == 72
    aucs = [m["roc_auc"] for m in saved["per_fold"]]
    assert saved["mean_std"]["roc_auc"]["mean"] == pytest.approx(np.mean(aucs))
    table = open(os.path.join(workdir, "kfold", "results.md")).read()
    assert "| mean ± std |" in table and "| pooled |" in table
    for png in ("roc.png", "pr.png", "confusion_matrix.png"):
        assert os.path.exists(os.path.join(workdir, "kfold", png))

    # Rerunning reuses the finished folds (no training) and gives the same table.
    again = kfold.run_kfold(config, workdir)
    assert again["pooled"]["roc_auc"] == results["pooled"]["roc_auc"]
