"""Two-stage training: `config.init_from.format = "deepfake_jax"` (weights/own_run.py)."""

import logging
import os

import jax
import numpy as np
import optax
import pytest

from configs import default
from deepfake_jax.training import checkpointing, optim, sharding, train_state
from deepfake_jax.weights import own_run
from deepfake_jax.weights.common import flatten


def _flat(tree):
    return {k: np.asarray(v) for k, v in flatten(jax.device_get(tree)).items()}


def _stage1(workdir, aucs=((1, 0.9), (2, 0.5)), num_devices=1):
    """A stage-1 workdir with one checkpoint per (step, val AUC); every saved state has its own
    params / EMA values (random, distinct per step). Returns {step: host TrainState}."""
    config = default.get_config("tiny")
    mesh = sharding.make_mesh(devices=jax.devices()[:num_devices])
    tx = optax.adamw(1e-3)
    _, state, _ = train_state.create_train_state(config, mesh, tx)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
    saved = {}
    for step, auc in aucs:
        rng = np.random.default_rng(step)

        def noisy(x, rng=rng):
            return (x + rng.standard_normal(x.shape).astype(x.dtype)).astype(x.dtype)

        state = state.replace(step=state.step + 1,
                              params=jax.tree.map(noisy, state.params),
                              ema_params=jax.tree.map(noisy, state.params),
                              batch_stats=jax.tree.map(noisy, state.batch_stats),
                              ema_batch_stats=jax.tree.map(noisy, state.batch_stats))
        ckpt.save(step, state, metrics=None if auc is None else {"val_roc_auc": auc})
        saved[step] = jax.device_get(state)
    ckpt.close()
    return saved


def _stage2_state(config, devices, tx=None):
    mesh = sharding.make_mesh(devices=devices)
    _, state, _ = train_state.create_train_state(config, mesh, tx or optax.adamw(1e-3))
    return state


@pytest.mark.parametrize("use_ema,num_devices", [(True, 1), (False, 8)])
def test_stage2_starts_from_stage1_best_checkpoint(tmp_path, use_ema, num_devices):
    # best = step 1 (AUC 0.9), latest = step 2; written on 8 devices, read on 1 or 8
    saved = _stage1(str(tmp_path), num_devices=8)
    config = default.get_config("tiny")
    config.seed = 7  # another random init: everything must come from the checkpoint
    config.init_from.update(path=str(tmp_path), format="deepfake_jax", use_ema=use_ema)
    state = _stage2_state(config, jax.devices()[:num_devices])
    best = saved[1]
    want_p, want_s = ((best.ema_params, best.ema_batch_stats) if use_ema
                      else (best.params, best.batch_stats))
    for got, want in ((state.params, want_p), (state.batch_stats, want_s),
                      (state.ema_params, want_p), (state.ema_batch_stats, want_s)):
        got, want = _flat(got), _flat(want)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
    assert int(state.step) == 0  # a new run: step, optimizer and data start fresh
    leaf = jax.tree.leaves(state.params)[0]
    assert len(leaf.sharding.device_set) == num_devices  # restored onto this run's mesh


def test_step_folder_and_latest_fallback(tmp_path):
    saved = _stage1(str(tmp_path), aucs=((1, None), (2, None)))
    assert own_run.resolve_checkpoint(str(tmp_path)) == (
        str(tmp_path / "checkpoints" / "2"), "latest (no ranked checkpoint)")
    config = default.get_config("tiny")
    config.init_from.update(path=str(tmp_path / "checkpoints" / "1"), format="deepfake_jax")
    state = _stage2_state(config, jax.devices()[:1])
    np.testing.assert_array_equal(_flat(state.params)[("fc", "kernel")],
                                  _flat(saved[1].ema_params)[("fc", "kernel")])


def test_head_replaced_when_num_classes_differs(tmp_path, caplog):
    saved = _stage1(str(tmp_path))
    config = default.get_config("tiny")
    config.num_classes = 2  # stage 1 had one logit
    config.init_from.update(path=str(tmp_path), format="deepfake_jax", strict=False)
    # the "absl" logger's own level: earlier tests (absl flag parsing) may have raised it
    with caplog.at_level(logging.INFO, logger="absl"):
        state = _stage2_state(config, jax.devices()[:1])
    assert "kept from the random init (head replaced): fc.bias, fc.kernel" in caplog.text
    plain = default.get_config("tiny")
    plain.num_classes = 2
    plain_state = _stage2_state(plain, jax.devices()[:1])
    got, best, fresh = _flat(state.params), _flat(saved[1].ema_params), _flat(plain_state.params)
    for k in got:
        if k[0] == "fc":  # the model's own random init, as in a run without init_from
            np.testing.assert_array_equal(got[k], fresh[k])
        else:
            np.testing.assert_array_equal(got[k], best[k], err_msg=str(k))


def test_clear_errors(tmp_path):
    config = default.get_config("tiny")
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    tx = optax.adamw(1e-3)

    def create(path):
        config.init_from.update(path=str(path), format="deepfake_jax")
        return train_state.create_train_state(config, mesh, tx)

    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="is not a deepfake_jax training workdir"):
        create(tmp_path / "empty")
    (tmp_path / "nockpt" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no checkpoint in .*nockpt/checkpoints"):
        create(tmp_path / "nockpt")

    _stage1(str(tmp_path / "run"), aucs=((1, 0.9),))
    other = default.get_config("tiny")
    other.model.stem = "imagenet"  # another model: the first mismatch is named
    other.init_from.update(path=str(tmp_path / "run"), format="deepfake_jax")
    with pytest.raises(ValueError, match=r"does not match the checkpoint .*first mismatching "
                       r"parameter: shape mismatch ema_params\.conv1\.kernel: checkpoint "
                       r"\(3, 3, 3, 16\), model \(7, 7, 3, 16\)"):
        train_state.create_train_state(other, mesh, tx)

    for root, _, files in os.walk(tmp_path / "run" / "checkpoints" / "1" / "state"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 0 and "metadata" not in name.lower():
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(checkpointing.CheckpointError, match="cannot read the checkpoint in .*"
                       "checkpoints/1/state.* truncated"):
        create(tmp_path / "run")


def test_stage2_from_a_trained_run(trained_workdir):
    """A real stage-1 run (conftest): stage 2 starts from its best checkpoint's EMA weights."""
    workdir, summary = trained_workdir
    best = summary["best_step"]
    step_dir, how = own_run.resolve_checkpoint(workdir)
    assert step_dir == os.path.join(workdir, "checkpoints", str(best)) and how.startswith("best")
    config = default.get_config("tiny")
    mesh = sharding.make_mesh(devices=jax.devices()[:2])
    tx, _ = optim.build_optimizer(config.optimizer, 10, model=train_state.abstract_model(config))
    _, abstract, _ = train_state.create_train_state(config, mesh, tx, abstract_only=True)
    ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"))
    stage1, _ = ckpt.restore(best, abstract)
    ckpt.close()
    config.init_from.update(path=workdir, format="deepfake_jax")
    _, state, _ = train_state.create_train_state(config, mesh, tx)
    for got, want in ((state.params, stage1.ema_params),
                      (state.batch_stats, stage1.ema_batch_stats)):
        got, want = _flat(got), _flat(want)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=str(k))
