import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from deepfake_jax import runs
from deepfake_jax.training import checkpointing


def _state(x):
    return {"w": jnp.full((4, 3), x, jnp.float32), "step": jnp.array(int(x), jnp.int32)}


def _abstract(state):
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), state)


def test_keeps_latest_and_best_k_and_round_trips(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), keep_best=2, async_save=False)
    aucs = {1: 0.9, 2: 0.5, 3: 0.95, 4: 0.6, 5: 0.7}
    for step, auc in aucs.items():
        ckpt.save(step, _state(step), metrics={"val_roc_auc": auc})
    ckpt.save(6, _state(6))  # no metrics (e.g. preemption): kept only as the latest
    ckpt.wait()
    assert ckpt.latest_step() == 6
    assert ckpt.best_step() == 3
    assert sorted(ckpt.all_steps()) == [1, 3, 6]
    restored, _ = ckpt.restore(3, _abstract(_state(0)))
    np.testing.assert_array_equal(restored["w"], np.full((4, 3), 3.0))
    ckpt.close()


def test_truncated_checkpoint_gives_a_clear_error(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), async_save=False)
    ckpt.save(1, _state(1.0), metrics={"val_roc_auc": 0.5})
    ckpt.wait()
    for root, _, files in os.walk(tmp_path / "1"):
        for name in files:
            path = os.path.join(root, name)
            if os.path.getsize(path) > 0 and "metadata" not in name:
                with open(path, "r+b") as f:
                    f.truncate(os.path.getsize(path) // 2)
    with pytest.raises(checkpointing.CheckpointError, match="could not restore checkpoint step 1"):
        ckpt.restore(1, _abstract(_state(0.0)))


def _validated(workdir: str, metric: str) -> dict[int, float]:
    """{step: metric} of the run's validations (metrics.jsonl), the ranking's ground truth."""
    import json

    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return {r["step"]: r[metric] for r in rows if r["kind"] == "val" and metric in r}


@pytest.mark.parametrize("run, metric", [("trained_workdir", "val_roc_auc"),
                                         ("parsing_run", "val_miou")])
def test_best_latest_and_step_of_a_run_use_its_own_metric(run, metric, request):

    workdir, _ = request.getfixturevalue(run)
    config = runs.load_run_config(workdir)
    assert checkpointing.best_metric_of(config) == metric
    ckpt = checkpointing.open_run(workdir, config)
    steps = sorted(ckpt.all_steps())
    validated = {s: v for s, v in _validated(workdir, metric).items() if s in steps}
    assert validated, "the tiny run keeps at least one validated checkpoint"
    best = ckpt.select("best")
    assert validated[best] == max(validated.values())
    assert ckpt.select("latest") == steps[-1]
    assert ckpt.select(str(steps[0])) == ckpt.select(steps[0]) == steps[0]
    for bad in ("first", "999", "-1"):
        with pytest.raises(ValueError, match=rf"use latest, best or one of \[{steps[0]}"):
            ckpt.select(bad)
    ckpt.close()
    # What every command calls (evaluate, predict, export, segment, the app): the weights
    # without the optimizer state.
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    _, state, step = runs.restore_weights(config, workdir, "best", mesh)
    assert step == best and state.opt_state is None
    assert int(state.step) == best


def test_best_of_a_run_never_validated_is_refused(tmp_path):
    ckpt = checkpointing.Checkpointer(str(tmp_path), best_metric="val_miou", async_save=False)
    ckpt.save(2, _state(2))  # e.g. a run halted before its first validation
    ckpt.wait()
    assert ckpt.select("latest") == 2
    with pytest.raises(ValueError, match="has val_miou .no validation yet.; use latest or one "
                                         r"of \[2\]"):
        ckpt.select("best")
    ckpt.close()
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        checkpointing.Checkpointer(str(tmp_path / "empty"), async_save=False).select("best")


def test_best_metric_of_names_the_task():
    import ml_collections

    assert checkpointing.best_metric_of(ml_collections.ConfigDict()) == "val_roc_auc"
    config = ml_collections.ConfigDict({"task": "segmentation"})
    assert checkpointing.best_metric_of(config) == "val_miou"
    config.task = "detection"
    with pytest.raises(ValueError, match="config.task='detection': expected one of"):
        checkpointing.best_metric_of(config)
