"""The training spine: sharding invariance, resume equivalence, end-to-end outputs."""

import json
import os

import jax
import numpy as np
import pytest

from configs import default
from deepfake_jax import tasks
from deepfake_jax.data import input_pipeline, records
from deepfake_jax.tasks import classification
from deepfake_jax.training import optim, sharding, train_state


def _tiny_config(data_dir=None):
    config = default.get_config("tiny")
    if data_dir:
        config.data.dir = data_dir
    return config


def _run_steps(config, mesh, files, num_steps):
    tx, schedule = optim.build_optimizer(config.optimizer, total_steps=10)
    graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
    train_fn, _ = classification.make_steps(config, mesh, graphdef, tx, schedule, shardings)
    preprocess = input_pipeline.Preprocess.from_config(config.input)
    it = input_pipeline.train_iterator(files, preprocess, config.input.batch_size, seed=0)
    losses = []
    for _ in range(num_steps):
        state, m = train_fn(state, sharding.host_to_global(mesh, next(it)))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state)


def test_train_steps_identical_on_8_devices_and_on_1(tiny_dataset):
    assert jax.device_count() == 8, "conftest must set 8 fake CPU devices before jax import"
    config = _tiny_config(tiny_dataset)
    # SGD: updates linear in the gradients. Adam's g / sqrt(v) turns a float-rounding
    # difference in a near-zero gradient into a full +-lr step (seen: 4.8e-5 after 3 steps).
    config.optimizer.name = "sgd"
    files = records.split_files(tiny_dataset, "train")
    losses8, state8 = _run_steps(config, sharding.make_mesh(devices=jax.devices()), files, 3)
    losses1, state1 = _run_steps(config, sharding.make_mesh(devices=jax.devices()[:1]), files, 3)
    np.testing.assert_allclose(losses8, losses1, rtol=0, atol=1e-5)
    flat8 = jax.tree.leaves(state8.params) + jax.tree.leaves(state8.batch_stats)
    flat1 = jax.tree.leaves(state1.params) + jax.tree.leaves(state1.batch_stats)
    for a, b in zip(flat8, flat1, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert losses8[0] != losses8[2], "the steps must actually train"


def test_batch_must_divide_over_devices():
    mesh = sharding.make_mesh(devices=jax.devices())
    with pytest.raises(ValueError, match="divisible by the 8 devices"):
        sharding.global_batch_size_ok(mesh, 12)
    with pytest.raises(ValueError, match="devices are available"):
        sharding.make_mesh(type("M", (), {"data": 16})())


def test_ema_follows_weights_with_warmup():
    import jax.numpy as jnp

    assert float(train_state.ema_decay_at(jnp.array(0), 0.999)) == pytest.approx(0.1)
    assert float(train_state.ema_decay_at(jnp.array(10**6), 0.999)) == pytest.approx(0.999)


def _log_rows(workdir, kind):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["kind"] == kind}


def test_resume_matches_uninterrupted_run_and_writes_evaluation(tmp_path):
    # Uninterrupted run; data generated into the workdir because config.data.dir is unset.
    full = str(tmp_path / "full")
    summary = tasks.train_and_evaluate(_tiny_config(), full)
    data_dir = os.path.join(full, "data", "arrayrecord")
    assert os.path.exists(os.path.join(data_dir, records.MANIFEST_NAME))
    assert summary["step"] == 12  # 96 train images / batch 16 * 2 epochs

    # The same run cut after 5 steps (checkpoint saved), then resumed by running it again.
    split = str(tmp_path / "split")
    config = _tiny_config(data_dir)
    config.halt_after_steps = 5
    halted = tasks.train_and_evaluate(config, split)
    assert halted["step"] == 5 and "halted" in halted
    assert not os.path.exists(os.path.join(split, "eval"))
    resumed = tasks.train_and_evaluate(_tiny_config(data_dir), split)
    assert resumed["step"] == 12

    full_rows, split_rows = _log_rows(full, "train"), _log_rows(split, "train")
    for step in (6, 8, 10, 12):
        assert split_rows[step]["loss"] == pytest.approx(full_rows[step]["loss"], abs=1e-5), step
    assert resumed["eval"]["test"]["roc_auc"] == pytest.approx(
        summary["eval"]["test"]["roc_auc"], abs=1e-6)

    # What the end of training writes.
    for name in ("config.json", "metrics.jsonl"):
        assert os.path.exists(os.path.join(full, name))
    assert os.path.exists(os.path.join(split, "config.1.json")), "resume keeps both configs"
    for split_name in ("valid", "test"):
        out = os.path.join(full, "eval", split_name)
        with open(os.path.join(out, "metrics.json")) as f:
            m = json.load(f)
        for key in ("accuracy", "precision", "recall", "f1", "roc_auc", "average_precision",
                    "eer", "confusion_matrix", "threshold"):
            assert key in m, key
        assert m["num_examples"] == 32 and np.sum(m["confusion_matrix"]) == 32
        for png in ("roc.png", "pr.png", "confusion_matrix.png"):
            assert os.path.getsize(os.path.join(out, png)) > 1000
        with open(os.path.join(out, "predictions.csv")) as f:
            assert len(f.readlines()) == 33
    valid_m = json.load(open(os.path.join(full, "eval", "valid", "metrics.json")))
    test_m = json.load(open(os.path.join(full, "eval", "test", "metrics.json")))
    assert test_m["threshold"] == valid_m["threshold"] and test_m["threshold_from"] == "valid"
    assert os.listdir(os.path.join(full, "checkpoints"))


@pytest.mark.parametrize("schedule", ["cosine", "constant", "poly"])
def test_schedules_without_warmup_equal_optax_and_log_nothing(schedule, caplog):
    import logging

    import ml_collections
    import optax

    opt = ml_collections.ConfigDict(dict(learning_rate=0.1, warmup_steps=0, schedule=schedule,
                                         end_lr_factor=0.01, power=0.9))
    with caplog.at_level(logging.INFO):
        lr = optim.learning_rate_schedule(opt, 20)
        with_ramp = optim.learning_rate_schedule(ml_collections.ConfigDict(
            dict(opt, warmup_steps=3)), 20)
    # optax logs "non-positive `transition_steps`" for an empty warm-up ramp: none is built.
    assert "transition_steps" not in caplog.text
    reference = {"cosine": optax.warmup_cosine_decay_schedule(0.0, 0.1, 0, 20, end_value=0.001),
                 "constant": optax.constant_schedule(0.1),
                 "poly": optax.polynomial_schedule(0.1, 0.001, 0.9, 20)}[schedule]
    np.testing.assert_allclose([float(lr(i)) for i in range(25)],
                               [float(reference(i)) for i in range(25)], rtol=1e-6)
    assert float(with_ramp(0)) == 0.0 and float(with_ramp(3)) == pytest.approx(0.1)
