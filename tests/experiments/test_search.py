"""Hyper-parameter search: >= 3 trials of the tiny recipe, a results table, resumable."""

import json
import os

import pytest

pytest.importorskip("optuna", reason="the search extra (optuna) is not installed")


def test_search_runs_trials_reports_the_best_and_resumes(tiny_dataset, tmp_path):
    from configs import default
    from deepfake_jax import search

    config = default.get_config("tiny")
    config.data.dir = tiny_dataset
    config.num_epochs = 1
    config.search.update(num_trials=3, space=(
        ("optimizer.learning_rate", "log", 1e-3, 1e-1), ("input.flip_prob", "choice", (0.0, 0.5))))
    workdir = str(tmp_path / "search")
    rows = search.run_search(config, workdir)

    assert len(rows) == 3
    values = [r["value"] for r in rows]
    assert values == sorted(values, reverse=True)  # best (highest validation AUC) first
    for r in rows:
        assert 1e-3 <= r["params"]["optimizer.learning_rate"] <= 1e-1
        assert r["params"]["input.flip_prob"] in (0.0, 0.5)
        with open(os.path.join(r["workdir"], "config.json")) as f:
            saved = json.load(f)
        assert saved["optimizer"]["learning_rate"] == r["params"]["optimizer.learning_rate"]
        with open(os.path.join(r["workdir"], "eval", "valid", "metrics.json")) as f:
            assert json.load(f)["roc_auc"] == r["value"]
    table = open(os.path.join(workdir, "results.md")).read()
    assert table.count("\n| ") == 4  # header + 3 trials

    # Rerunning the finished search trains nothing new and reports the same trials.
    again = search.run_search(config, workdir)
    assert [r["trial"] for r in again] == [r["trial"] for r in rows]


def test_bad_search_space_is_reported():
    from configs import default
    from deepfake_jax import search

    class FakeTrial:
        def suggest_float(self, *a, **k):
            return 0.1

    with pytest.raises(ValueError, match="kind 'uniformish' is not one of"):
        search.sample(FakeTrial(), (("optimizer.learning_rate", "uniformish", 0, 1),))
    with pytest.raises(KeyError, match="'optimizer.no_such_key', which is not in the config"):
        search.trial_config(default.get_config("tiny"), {"optimizer.no_such_key": 1}, "/d")
