"""`evaluate` restores the trainer's checkpoints on any device count and reproduces its numbers."""

import json
import os

import jax
import pytest

from data_prep import convert, synthetic
from deepfake_jax import evaluate, runs
from deepfake_jax.tasks import classification


def test_one_device_reproduces_end_of_training_metrics(trained_workdir):
    workdir, summary = trained_workdir
    final = summary["eval"]["test"]
    results = evaluate.evaluate_checkpoint(workdir, devices=jax.devices()[:1], bootstrap=50)
    m = next(iter(results.values()))
    assert m["checkpoint_step"] == summary["step"]
    assert m["roc_auc"] == pytest.approx(final["roc_auc"], abs=1e-6)
    assert m["threshold"] == pytest.approx(final["threshold"], abs=1e-6)
    assert m["accuracy"] == final["accuracy"]
    assert m["confusion_matrix"] == final["confusion_matrix"]
    lo, hi = m["bootstrap_95"]["accuracy"]
    assert lo <= m["accuracy"] <= hi
    table = evaluate.summary_table(results)
    assert "roc_auc" in table and f"{m['roc_auc']:.4f}" in table


def test_threshold_comes_from_validation_never_from_the_test_split(trained_workdir, tmp_path):
    workdir, summary = trained_workdir
    # A second dataset with other images: its test split differs, the threshold must not.
    images, other = str(tmp_path / "img"), str(tmp_path / "other")
    synthetic.generate_140k(images, counts={"train": 4, "valid": 4, "test": 16}, image_size=32,
                            difficulty=1.0, seed=7)
    convert.convert(images, other, layout="140k", show_progress=False)
    results = evaluate.evaluate_checkpoint(workdir, data=[other], bootstrap=0)
    (name, m), = results.items()
    assert name == "other"
    assert m["threshold"] == pytest.approx(summary["eval"]["valid"]["threshold"], abs=1e-9)
    assert m["threshold_from"].endswith(":valid")
    with open(os.path.join(workdir, "eval", "other", "test", "metrics.json")) as f:
        assert json.load(f)["num_examples"] == 32


def test_checkpoint_choice(trained_workdir):
    workdir, summary = trained_workdir
    best = evaluate.evaluate_checkpoint(workdir, checkpoint="best", bootstrap=0)
    assert next(iter(best.values()))["checkpoint_step"] == summary["best_step"]
    with pytest.raises(ValueError, match="use latest, best or one of"):
        evaluate.evaluate_checkpoint(workdir, checkpoint="12345", bootstrap=0)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        evaluate.evaluate_checkpoint(os.path.dirname(workdir), bootstrap=0)


def test_robustness_sweep_writes_a_table_and_plot(trained_workdir, tiny_dataset):
    from deepfake_jax.data import input_pipeline, records
    from deepfake_jax.evaluation import evaluators
    from deepfake_jax.training import sharding

    workdir, summary = trained_workdir
    config = runs.load_run_config(workdir)
    mesh = sharding.make_mesh(None)
    graphdef, state, _ = runs.restore_weights(config, workdir, "latest", mesh)
    evals = classification.make_eval_steps(config, mesh, graphdef,
                                  jax.tree.map(lambda x: x.sharding, state))
    out = os.path.join(workdir, "robustness_test")
    rows = evaluators.robustness_sweep(
        evals[True], state, mesh, input_pipeline.Preprocess.from_config(config.input), 16,
        records.split_files(tiny_dataset, "test"), summary["eval"]["test"]["threshold"], out,
        levels={"jpeg": (50,), "blur": (3,)})
    assert [(r["corruption"], r["level"]) for r in rows] == [("none", 0.0), ("jpeg", 50),
                                                              ("blur", 3)]
    assert rows[0]["roc_auc"] == pytest.approx(summary["eval"]["test"]["roc_auc"], abs=1e-6)
    assert rows[2]["roc_auc"] != rows[0]["roc_auc"], "the corruption reached the model"
    with open(os.path.join(out, "robustness.json")) as f:
        assert len(json.load(f)["rows"]) == 3
    assert os.path.getsize(os.path.join(out, "robustness.png")) > 1000
    assert "blur" in evaluators.format_robustness(rows)


def test_ciplab_data_gets_difficulty_and_region_tables(trained_workdir, tmp_path):
    workdir, _ = trained_workdir
    images, converted = str(tmp_path / "ciplab"), str(tmp_path / "ciplab_ar")
    synthetic.generate_ciplab(images, num_real=40, num_fake=40, image_size=32, seed=1)
    convert.convert(images, converted, layout="ciplab", show_progress=False)
    results = evaluate.evaluate_checkpoint(workdir, data=[converted], bootstrap=0)
    subsets = results["ciplab_ar"]["subsets"]
    kinds = {r["subset"] for r in subsets}
    assert kinds == {"difficulty", "edited"}
    num_fakes = results["ciplab_ar"]["num_fake"]
    assert sum(r["num_fake"] for r in subsets if r["subset"] == "difficulty") == num_fakes
    with open(os.path.join(workdir, "eval", "ciplab_ar", "test", "metrics.json")) as f:
        assert json.load(f)["subsets"] == subsets
