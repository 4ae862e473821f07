"""Training control: two-phase fine-tuning, early stopping, reduce-on-plateau."""

import json
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import default
from deepfake_jax import runs, tasks
from deepfake_jax.training import checkpointing, optim, sharding, train_state
from deepfake_jax.training import training_control as tc
from deepfake_jax.weights.common import flatten

# ----------------------------------------------------------------------------- pure logic


def _run(control, values, metric, start=1):
    """Feeds {metric: value} validations at steps start, start+1, ...; the states after each."""
    out = []
    for i, v in enumerate(values):
        control.update(start + i, {metric: v})
        out.append(control)
    return out


def test_early_stopping_counts_validations_without_improvement():
    es = tc.EarlyStopping("val_roc_auc", patience=2)
    assert es.best.mode == "max"
    stops = [es.update(s, {"val_roc_auc": v}) for s, v in
             enumerate([0.5, 0.6, 0.6, 0.7, 0.65, 0.69], 1)]
    # 0.6 again is no improvement (strict); 0.7 resets the count; 2 misses in a row stop
    assert stops == [False, False, False, False, False, True]
    assert (es.best_step, es.best.value, es.stopped_step) == (4, 0.7, 6)
    assert es.update(7, {"val_roc_auc": 1.0}) and es.best_step == 4, "stopped is final"

    loss = tc.EarlyStopping("val_log_loss", patience=1, min_delta=0.1)
    assert loss.best.mode == "min"
    assert not loss.update(1, {"val_log_loss": 0.5})
    assert not loss.update(2, {"val_log_loss": 0.35})  # better by > 0.1
    assert loss.update(3, {"val_log_loss": 0.30})  # better, but only by 0.05
    assert (loss.best_step, loss.stopped_step) == (2, 3)


def test_nan_is_no_improvement_and_none_is_no_information():
    es = tc.EarlyStopping("val_log_loss", patience=2)
    assert not es.update(1, {"val_log_loss": None})  # undefined: nothing changes
    assert (es.wait, es.best_step) == (0, None)
    assert not es.update(2, {"val_log_loss": math.nan})  # diverged: counts as a miss
    assert es.update(3, {"val_log_loss": math.nan}) and es.best_step is None
    es = tc.EarlyStopping("val_log_loss", patience=1)
    es.update(1, {"val_log_loss": 0.3})
    assert es.update(2, {"val_log_loss": math.nan}) and es.best.value == 0.3


def test_reduce_on_plateau_with_cooldown_and_floor():
    p = tc.ReduceOnPlateau("val_log_loss", patience=2, factor=0.5, min_scale=0.2, cooldown=1)
    losses = [1.0, 0.9, 0.95, 0.91, 0.92, 0.93, 0.94, 0.8, 0.85, 0.86, 0.87, 0.88, 0.89, 0.9]
    scales = [p.update(s, {"val_log_loss": v}) for s, v in enumerate(losses, 1)]
    # misses at 3, 4 -> 0.5; 5 is the cooldown (not counted); misses 6, 7 -> 0.25; 8 improves
    # (the cooldown); misses 9, 10 -> 0.2 (the floor, not 0.125); at the floor nothing changes
    assert scales == [1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.2, 0.2, 0.2, 0.2, 0.2]
    assert p.best.value == 0.8

    auc = tc.ReduceOnPlateau("val_roc_auc", patience=1, factor=0.1, min_scale=1e-3)
    assert [auc.update(s, {"val_roc_auc": v}) for s, v in enumerate([0.8, 0.7, 0.9, 0.9], 1)] \
        == pytest.approx([1, 0.1, 0.1, 0.01])


def test_config_defaults_are_off_and_bad_values_are_named():
    config = default.get_config("tiny")
    control = tc.TrainingControl.from_config(config)
    assert not control.enabled and control.lr_scale == 1.0 and not control.stopped
    assert control.step_lr_scale is None  # the train step is compiled without a scale
    assert optim.phase1_steps(config.optimizer, steps_per_epoch=3) == 0
    with pytest.raises(ValueError, match=r"reduce_on_plateau.factor=1.5: must be in \(0, 1\)"):
        tc.ReduceOnPlateau.from_config(ml_collections.ConfigDict(dict(patience=2, factor=1.5)))
    with pytest.raises(ValueError, match="early_stopping.min_delta=-1.0: must be >= 0"):
        tc.EarlyStopping("val_roc_auc", 1, min_delta=-1.0)
    es = tc.EarlyStopping("val_auc", patience=1)
    with pytest.raises(ValueError, match=r"early_stopping.metric='val_auc' is not a validation "
                       r"metric \(step 4 reported: val_log_loss, val_roc_auc\)"):
        es.update(4, {"val_roc_auc": 0.5, "val_log_loss": 0.7})
    config.optimizer.two_phase.phase1_epochs = 2
    with pytest.raises(ValueError, match="phase1_epochs needs the number of steps per epoch"):
        optim.phase1_steps(config.optimizer)
    assert optim.phase1_steps(config.optimizer, steps_per_epoch=3) == 6
    config.optimizer.two_phase.phase1_steps = 5  # wins over epochs
    assert optim.phase1_steps(config.optimizer, steps_per_epoch=3) == 5


def _write_jsonl(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_rebuild_after_resume_equals_the_uninterrupted_state(tmp_path):
    """Replaying metrics.jsonl up to the restored step gives the live run's state there."""
    config = default.get_config("tiny")
    config.early_stopping.update(metric="val_roc_auc", patience=3, min_delta=0.01)
    config.optimizer.reduce_on_plateau.update(patience=1, factor=0.5, cooldown=1)
    vals = {2: (0.60, 0.70), 4: (0.62, 0.69), 6: (0.65, 0.71), 8: (0.66, 0.72), 10: (0.70, 0.60),
            12: (0.70, 0.61), 14: (0.69, 0.62)}
    summary = lambda v: {"val_roc_auc": v[0], "val_log_loss": v[1], "val_accuracy": 0.5}

    live, states = tc.TrainingControl.from_config(config), {}
    for step, v in vals.items():
        live.update(step, summary(v))
        states[step] = (live.lr_scale, repr(live))

    # The log as a run cut at step 9 (checkpoint 8), resumed, then cut again leaves it:
    # train rows, step 10 logged twice, a record past the checkpoint, a line cut short.
    rows = [{"step": s, "kind": "val", "time": 0.0, **summary(v)} for s, v in vals.items()
            if s <= 10]
    rows.insert(1, {"step": 2, "kind": "train", "loss": 0.3})
    rows.append({"step": 10, "kind": "val", **summary((0.5, 9.9))})  # superseded below
    rows.append({"step": 10, "kind": "val", **summary(vals[10])})
    _write_jsonl(tmp_path / "metrics.jsonl", rows)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 12, "kind": "va')
    for restored in (4, 8, 10):
        history = tc.read_val_history(str(tmp_path), restored)
        assert [s for s, _ in history] == [s for s in vals if s <= restored]
        rebuilt = tc.TrainingControl.from_config(config).replay(history)
        assert (rebuilt.lr_scale, repr(rebuilt)) == states[restored], restored
    assert states[4][0] == 1.0 and states[10][0] == 0.5  # the history does change the scale
    assert tc.read_val_history(str(tmp_path / "nowhere"), 10) == []


def test_replay_stops_at_the_recorded_stop():
    config = default.get_config("tiny")
    config.early_stopping.update(metric="val_log_loss", patience=1)
    history = [(2, {"val_log_loss": 0.5}), (4, {"val_log_loss": 0.6}),
               (6, {"val_log_loss": 0.1})]  # not seen by the stopped run
    control = tc.TrainingControl.from_config(config).replay(history)
    assert control.stopped and control.early_stopping.stopped_step == 4
    assert control.early_stopping.best_step == 2


# ----------------------------------------------------------------------------- optimizer


def _tiny_params(config):
    graphdef, params, _ = train_state._split(train_state.abstract_model(config))
    rng = np.random.default_rng(0)
    return graphdef, jax.tree.map(lambda s: jnp.asarray(rng.standard_normal(s.shape),
                                                       s.dtype), params)


def _groups(graphdef, tree):
    head = flatten(optim.param_group_mask(graphdef, tree, "head"))
    flat = {p: np.asarray(v) for p, v in flatten(jax.device_get(tree)).items()}
    return ({p: v for p, v in flat.items() if head[p]},
            {p: v for p, v in flat.items() if not head[p]})


@pytest.mark.parametrize("scale", [0.1, 30.0])  # below the max norm (untouched), above it
def test_clip_by_global_norm_matches_optax_with_the_same_state(scale):
    grads = {"w": scale * jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.full((4,), scale)}
    ours, theirs = optim.clip_by_global_norm(2.0), optax.clip_by_global_norm(2.0)
    state = ours.init(grads)
    assert jax.tree.structure(state) == jax.tree.structure(theirs.init(grads))
    clipped, _ = jax.jit(ours.update)(grads, state)
    reference, _ = jax.jit(theirs.update)(grads, theirs.init(grads))
    for name in grads:
        np.testing.assert_allclose(clipped[name], reference[name], rtol=1e-6, atol=0)
        if scale < 1:
            np.testing.assert_array_equal(clipped[name], grads[name])
    assert float(optax.tree.norm(clipped)) == pytest.approx(min(2.0, float(
        optax.tree.norm(grads))), rel=1e-6)
    zeros, _ = ours.update(jax.tree.map(jnp.zeros_like, grads), state)
    assert all(not np.any(z) and np.isfinite(z).all() for z in jax.tree.leaves(zeros))


def test_two_phase_optimizer_matches_references():
    """Phase 1: head only, clipped by its own norm; phase 2: the backbone's first update is a
    fresh optimizer's first update (moments and warm-up restart at the boundary)."""
    config = default.get_config("tiny")
    config.optimizer.update(name="sgd", weight_decay=0.0, warmup_steps=0, grad_clip_norm=1.0,
                            learning_rate=0.1, schedule="constant")
    config.optimizer.two_phase.update(phase1_steps=2, phase1_learning_rate=0.01)
    graphdef, params = _tiny_params(config)
    tx, schedule = optim.build_optimizer(config.optimizer, 10, model=graphdef)
    head_mask = optim.param_group_mask(graphdef, params, "head")
    n_head = sum(int(np.prod(p.shape)) for p, h in
                 zip(jax.tree.leaves(params), jax.tree.leaves(head_mask), strict=True) if h)
    # head gradients of global norm 0.5 (under the clip), backbone ones huge
    grads = jax.tree.map(lambda p, h: np.full(p.shape, 0.5 / math.sqrt(n_head) if h else 1e4,
                                              np.float32), params, head_mask)
    # everything jitted: eager optax ops would compile once per leaf shape
    state = jax.jit(tx.init)(params)
    update = jax.jit(tx.update)
    ref_head = optax.sgd(0.01, momentum=0.9, nesterov=True)
    ref_state = jax.jit(ref_head.init)(params)
    for step in range(2):
        updates, state = update(grads, state, params)
        ref_updates, ref_state = jax.jit(ref_head.update)(grads, ref_state)
        head, backbone = _groups(graphdef, updates)
        assert all(not np.any(v) for v in backbone.values()), step
        ref, _ = _groups(graphdef, ref_updates)
        for p in head:
            np.testing.assert_allclose(head[p], ref[p], rtol=1e-6, err_msg=str(p))
    assert float(schedule(1)) == pytest.approx(0.01)
    assert float(schedule.group_schedules["backbone"](1)) == 0.0
    assert float(schedule(2)) == float(schedule.group_schedules["backbone"](2)) \
        == pytest.approx(0.1)
    # no moment accumulated for the backbone in phase 1
    backbone_state = state[-1].inner_states["backbone"].inner_state
    assert int(backbone_state.count) == 2
    assert all(not np.any(x) for x in jax.tree.leaves(jax.device_get(backbone_state.inner)))
    # phase 2, first update: the global clip now counts the backbone
    updates, state = update(grads, state, params)
    fresh = optax.chain(optax.clip_by_global_norm(1.0),
                        optax.sgd(0.1, momentum=0.9, nesterov=True))
    ref_backbone, _ = jax.jit(fresh.update)(grads, jax.jit(fresh.init)(params))
    _, backbone = _groups(graphdef, updates)
    _, ref = _groups(graphdef, ref_backbone)
    for p in backbone:
        np.testing.assert_allclose(backbone[p], ref[p], rtol=1e-6, err_msg=str(p))
    assert any(np.any(v) for v in backbone.values())


def test_two_phase_errors_and_train_step_scale():
    config = default.get_config("tiny")
    config.optimizer.two_phase.phase1_steps = 2
    with pytest.raises(ValueError, match="two_phase needs the model"):
        optim.build_optimizer(config.optimizer, 10)
    config.optimizer.freeze = "backbone"
    with pytest.raises(ValueError, match="freeze and config.optimizer.two_phase are exclusive"):
        optim.build_optimizer(config.optimizer, 10, model=train_state.abstract_model(config))

    # The scale multiplies the updates, and a new value does not recompile the step.
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    rep = sharding.replicated(mesh)
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params={"w": jnp.ones(3)},
                             batch_stats={}, opt_state=optax.sgd(1.0).init({"w": jnp.ones(3)}),
                             ema_params={"w": jnp.ones(3)}, ema_batch_stats={})

    def step_fn(state, batch, lr_scale):
        grads = {"w": batch["g"].mean(0)}
        new = train_state.apply_gradients(state, grads, {}, tx=optax.sgd(1.0), ema_decay=0.5,
                                    lr_scale=lr_scale)
        return new, optim.lr_metrics(optax.constant_schedule(0.1), state.step, lr_scale)

    shardings = jax.tree.map(lambda _: rep, state)
    state = jax.device_put(state, shardings)  # as the trainer's state: placed, committed
    fn = train_state.TrainStep(step_fn, mesh, shardings)
    batch = sharding.host_to_global(mesh, {"g": np.ones((2, 3), np.float32)})
    out = []
    for scale in (1.0, 0.5, 0.25):
        state, m = fn(state, batch, scale)
        out.append((float(state.params["w"][0]), float(m["learning_rate"])))
    assert np.ravel(out) == pytest.approx([0.0, 0.1, -0.5, 0.05, -0.75, 0.025], abs=1e-7)
    assert fn.jitted._cache_size() == 1
    state, m = fn(state, batch)  # no scale: compiled without the multiply
    assert float(state.params["w"][0]) == pytest.approx(-1.75)
    assert float(m["learning_rate"]) == pytest.approx(0.1)


# ----------------------------------------------------------------------------- end to end


def _config(data_dir, steps, **kw):
    config = default.get_config("tiny")
    config.data.dir = data_dir
    config.num_train_steps = steps
    config.checkpoint.every_steps = 100  # only the validations' (and halts') saves: faster
    config.update(kw)
    return config


def _rows(workdir, kind):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return {r["step"]: r for r in map(json.loads, f) if r["kind"] == kind}


def test_two_phase_run_keeps_backbone_until_the_boundary(tiny_dataset, tmp_path):
    config = _config(tiny_dataset, 8, halt_after_steps=4)
    config.optimizer.two_phase.update(phase1_steps=4, phase1_learning_rate=2e-3)
    workdir = str(tmp_path / "run")
    assert tasks.train_and_evaluate(config, workdir)["halted"]
    mesh = sharding.make_mesh(None)
    graphdef, _, _ = train_state._split(train_state.abstract_model(config))
    tx, _ = optim.build_optimizer(config.optimizer, 8, model=graphdef)
    initial = jax.device_get(train_state.create_train_state(config, mesh, tx)[1].params)
    _, at4, step = runs.restore_weights(config, workdir, "latest", mesh)  # two-phase restores
    assert step == 4
    (head0, back0), (head4, back4) = _groups(graphdef, initial), _groups(graphdef,
                                                                         at4.params)
    assert all(np.array_equal(back4[p], back0[p]) for p in back0), "backbone moved in phase 1"
    assert all(not np.array_equal(head4[p], head0[p]) for p in head0)

    config.halt_after_steps = None
    assert tasks.train_and_evaluate(config, workdir)["step"] == 8
    _, at8, _ = runs.restore_weights(config, workdir, "latest", mesh)
    head8, back8 = _groups(graphdef, at8.params)
    assert all(not np.array_equal(back8[p], back0[p]) for p in back0 if p[-1] == "kernel")
    assert all(not np.array_equal(head8[p], head4[p]) for p in head0)

    rows = _rows(workdir, "train")  # logged rate: the one step s-1 used
    assert [rows[s]["learning_rate"] for s in (2, 4)] == pytest.approx([2e-3, 2e-3])
    assert [rows[s]["learning_rate_backbone"] for s in (2, 4)] == [0.0, 0.0]
    # step index 5 = phase-2 step 1: the warm-up (2 steps) restarted at the boundary
    assert rows[6]["learning_rate"] == rows[6]["learning_rate_backbone"] == pytest.approx(
        config.optimizer.learning_rate / 2)


def test_early_stopping_restores_the_best_and_stays_stopped(tiny_dataset, tmp_path):
    config = _config(tiny_dataset, 12, eval_every_steps=2)
    config.checkpoint.keep_best = 1  # ranks by val_roc_auc: only keep_step keeps step 2
    config.early_stopping.update(metric="val_log_loss", patience=1, min_delta=1e9)
    workdir = str(tmp_path / "run")
    summary = tasks.train_and_evaluate(config, workdir)
    assert summary["step"] == 4 < 12
    assert summary["early_stopping"] == {"stopped_step": 4, "best_step": 2, "evaluated_step": 2,
                                         "best_value": pytest.approx(_rows(workdir, "val")[2][
                                             "val_log_loss"])}
    assert 2 in checkpointing.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
    vals = _rows(workdir, "val")
    # the final evaluation of the valid split saw step 2's state, not step 4's
    final = summary["eval"]["valid"]["log_loss"]
    assert final == pytest.approx(vals[2]["val_log_loss"], rel=1e-5)
    assert final != pytest.approx(vals[4]["val_log_loss"], rel=1e-5)

    again = tasks.train_and_evaluate(config, workdir)  # a rerun does not train past the stop
    assert again["step"] == 4 and again["early_stopping"]["evaluated_step"] == 2
    assert max(_rows(workdir, "train")) == 4
    assert again["eval"]["valid"]["log_loss"] == pytest.approx(final, rel=1e-6)


def test_reduce_on_plateau_scales_the_logged_rate_across_a_resume(tiny_dataset, tmp_path):
    config = _config(tiny_dataset, 8, eval_every_steps=2, halt_after_steps=5)
    config.optimizer.reduce_on_plateau.update(patience=1, min_delta=1e9, factor=0.5)
    workdir = str(tmp_path / "run")
    assert tasks.train_and_evaluate(config, workdir)["step"] == 5
    config.halt_after_steps = None
    assert tasks.train_and_evaluate(config, workdir)["step"] == 8
    rows = _rows(workdir, "train")
    # vals at 2 (best), 4 (miss -> 0.5 from step 5 on), 6 (miss -> 0.25); 4 came from the log
    assert [rows[s]["lr_scale"] for s in (2, 4, 6, 8)] == [1.0, 1.0, 0.5, 0.25]
    schedule = optim.learning_rate_schedule(config.optimizer, 8)
    for s in (2, 4, 6, 8):
        assert rows[s]["learning_rate"] == pytest.approx(
            rows[s]["lr_scale"] * float(schedule(s - 1)), rel=1e-6), s
