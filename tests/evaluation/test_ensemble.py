"""Ensembles of runs: standardised log-odds, the validation threshold, evaluate and predict."""

import csv
import glob
import json
import os
import shutil

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from deepfake_jax import evaluate, predict
from deepfake_jax.evaluation import ensemble, metrics


def _fake_run(root, name, p_valid, labels, paths=None, task="classification"):
    """A workdir holding just what an ensemble reads: config.json and the final evaluation's
    validation predictions."""
    workdir = root / name
    (workdir / "eval" / "valid").mkdir(parents=True)
    config = {"task": task, "data": {"val_split": "valid"}, "eval": {"threshold_method": "eer"}}
    (workdir / "config.json").write_text(json.dumps(config))
    paths = paths or [f"img{i}.png" for i in range(len(labels))]
    with open(workdir / "eval" / "valid" / "predictions.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["index", "path", "label", "p_fake", "predicted", "meta"])
        for i, (path, label, p) in enumerate(zip(paths, labels, p_valid, strict=True)):
            writer.writerow([i, path, label, p, int(p >= 0.5), "{}"])
    return str(workdir)


def test_members_are_standardised_by_their_own_validation_log_odds(tmp_path):
    labels = np.array([0, 0, 0, 1, 1, 1])
    confident = np.array([0.01, 0.2, 0.05, 0.9, 0.99, 0.6])  # well separated, extreme
    timid = np.array([0.45, 0.5, 0.48, 0.52, 0.49, 0.55])  # barely moves from 0.5
    a = _fake_run(tmp_path, "a", confident, labels)
    b = _fake_run(tmp_path, "b", timid, labels)
    ens = ensemble.Ensemble.of_runs([a, b])

    za, zb = ensemble.log_odds(confident), ensemble.log_odds(timid)
    assert ens.members[0].mean == pytest.approx(za.mean())
    assert ens.members[1].std == pytest.approx(zb.std() + ensemble.EPS)
    new_a, new_b = np.array([0.3, 0.7]), np.array([0.5, 0.51])
    expected = ((ensemble.log_odds(new_a) - za.mean()) / (za.std() + ensemble.EPS)
                + (ensemble.log_odds(new_b) - zb.mean()) / (zb.std() + ensemble.EPS)) / 2
    np.testing.assert_allclose(ens.p_fake([new_a, new_b]), 1 / (1 + np.exp(-expected)))
    # the threshold is the validation EER threshold of the combined scores
    combined = ens.p_fake([confident, timid])
    assert ens.threshold == pytest.approx(metrics.choose_threshold(labels, combined, "eer"))
    # standardising keeps the timid run from being drowned by the confident one
    assert roc_auc_score(labels, combined) >= roc_auc_score(labels, confident)


def test_members_of_other_data_and_non_classifiers_are_refused(tmp_path):
    labels = [0, 1, 0, 1]
    a = _fake_run(tmp_path, "a", [0.1, 0.9, 0.2, 0.8], labels)
    other = _fake_run(tmp_path, "other", [0.1, 0.9, 0.2, 0.8], labels,
                      paths=["x0.png", "x1.png", "x2.png", "x3.png"])
    with pytest.raises(ValueError, match="scored other images than .*same data"):
        ensemble.Ensemble.of_runs([a, other])
    with pytest.raises(ValueError, match="two or more"):
        ensemble.Ensemble.of_runs([a])
    parsing = _fake_run(tmp_path, "parsing", [0.1, 0.9, 0.2, 0.8], labels, task="segmentation")
    with pytest.raises(ValueError, match="only real/fake classifiers"):
        ensemble.Ensemble.of_runs([a, parsing])
    unfinished = tmp_path / "unfinished"
    shutil.copytree(a, unfinished)
    shutil.rmtree(unfinished / "eval")
    with pytest.raises(FileNotFoundError, match="no finished evaluation"):
        ensemble.Ensemble.of_runs([a, str(unfinished)])


def test_evaluate_and_predict_an_ensemble_of_two_runs(trained_workdir, tmp_path, capsys):
    trained, _ = trained_workdir  # copied: the shared run stays as it is
    workdir, twin = str(tmp_path / "run"), str(tmp_path / "twin")
    for copy in (workdir, twin):
        shutil.copytree(trained, copy)
    assert evaluate.main(["--workdir", workdir, "--workdir", twin, "--bootstrap", "20"]) == 0
    assert "members' ROC AUC" in capsys.readouterr().out
    (out,) = glob.glob(os.path.join(workdir, "eval", "ensemble", "*", "test"))
    with open(os.path.join(out, "metrics.json")) as f:
        m = json.load(f)
    member_auc = m["members"][0]["roc_auc"]
    # two identical members: the ensemble is a monotone map of the member's score
    assert m["roc_auc"] == pytest.approx(member_auc) and len(m["members"]) == 2
    assert "bootstrap_95" in m and os.path.exists(os.path.join(out, "roc.png"))
    with open(os.path.join(out, "predictions.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["num_examples"]
    member = np.array([float(r["p_fake_member0"]) for r in rows])
    stats = ensemble.Ensemble.of_runs([workdir, twin]).members[0]
    z = (ensemble.log_odds(member) - stats.mean) / stats.std
    np.testing.assert_allclose([float(r["p_fake"]) for r in rows], 1 / (1 + np.exp(-z)),
                               atol=2e-6)

    images = tmp_path / "images"
    images.mkdir()
    from data_prep import synthetic

    synthetic.generate_140k(str(images / "gen"), counts={"test": 2}, image_size=32, seed=5)
    (images / "broken.jpg").write_bytes(b"\xff\xd8\xff nothing")
    csv_path = str(tmp_path / "p.csv")
    assert predict.main(["--workdir", workdir, "--workdir", twin, "--output", csv_path,
                         "--recursive", str(images)]) == 0
    with open(csv_path) as f:
        scored = {os.path.basename(r["path"]): r for r in csv.DictReader(f)}
    assert scored["broken.jpg"]["status"] == "error" and scored["broken.jpg"]["p_fake"] == ""
    ok = [r for r in scored.values() if r["status"] == "ok"]
    assert len(ok) == 4
    for r in ok:
        assert r["threshold_source"].startswith("ensemble of 2 runs")
        assert r["label"] == ("fake" if float(r["p_fake"]) >= float(r["threshold"]) else "real")
        assert r["p_fake_run"] == r["p_fake_twin"]
    with pytest.raises(SystemExit, match="--heatmaps explains one run"):
        predict.main(["--workdir", workdir, "--workdir", twin, "--output", csv_path,
                      "--heatmaps", str(tmp_path / "h"), str(images)])
