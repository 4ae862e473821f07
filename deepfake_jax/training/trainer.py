"""The training loop: mesh, data, state, jitted steps, checkpoints, validation, final evaluation.

What is trained and how it is scored comes from a task (`deepfake_jax.tasks`): the loop has no
task-specific code. Resumes from the workdir's latest checkpoint; SIGTERM/SIGINT or
`halt_after_steps` checkpoint and stop (the caller exits 75).
"""

from __future__ import annotations

import math
import os
import signal
from typing import Any

import jax
import ml_collections
from absl import logging

from deepfake_jax.data import datasets, input_pipeline
from deepfake_jax.training import checkpointing, metric_writer, sharding, training_control
from deepfake_jax.training.optim import build_optimizer, phase1_steps
from deepfake_jax.training.train_state import (
    abstract_model,
    abstract_state_like,
    create_train_state,
)


def check_batch_sizes(config, mesh) -> None:
    """Batch sizes that cannot work, refused before any data is generated or read."""
    for key in ("batch_size", "eval_batch_size"):
        value = config.input.get(key)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.input.{key}={value!r}: must be a positive number of "
                             "images (global, over all devices)")
        sharding.global_batch_size_ok(mesh, value)


def total_train_steps(config, num_train_examples: int) -> int:
    if config.get("num_train_steps"):
        return int(config.num_train_steps)
    steps_per_epoch = num_train_examples // config.input.batch_size
    if steps_per_epoch == 0:
        raise ValueError(
            f"config.input.batch_size={config.input.batch_size} is larger than the "
            f"{num_train_examples} training examples: lower it, or set "
            "config.num_train_steps")
    return int(math.ceil(config.num_epochs * steps_per_epoch))


class _StopSignal:
    """SIGTERM/SIGINT -> finish the current step, checkpoint, exit (preemption-safe)."""

    def __init__(self):
        self.received = None
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. some test runners): no handler
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, task) -> dict[str, Any]:
    """Trains, checkpoints and evaluates `task` (a `deepfake_jax.tasks.Task`); resumes from
    `workdir` if it holds a checkpoint.

    Returns a summary dict (final step, last train metrics, final evaluation metrics).
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir} is a file, not a folder: give a new or "
                                 "an existing run folder")
    os.makedirs(workdir, exist_ok=True)
    mesh = sharding.make_mesh(config.get("mesh"))
    check_batch_sizes(config, mesh)  # before any data is generated (the task checks its own)
    dataset_dir = task.prepare_data(workdir)

    train_files = datasets.split_files(config, dataset_dir, config.data.train_split)
    num_train = input_pipeline.num_records(train_files)
    total_steps = total_train_steps(config, num_train)
    steps_per_epoch = num_train // config.input.batch_size
    phase1 = phase1_steps(config.optimizer, steps_per_epoch)
    tx, schedule = build_optimizer(config.optimizer, total_steps, model=abstract_model(config),
                                   steps_per_epoch=steps_per_epoch)
    ckpt = checkpointing.Checkpointer(
        os.path.join(workdir, "checkpoints"), keep_best=config.checkpoint.keep_best,
        best_metric=task.best_metric, async_save=config.checkpoint.get("async_save", True))
    start = ckpt.latest_step()
    # Building and compiling the state takes tens of seconds for the larger models: say so.
    logging.info("Building the %s model and its optimizer state", config.model_name)
    # config.init_from seeds a new run only: a resumed run continues from its checkpoint
    graphdef, state, state_shardings = create_train_state(config, mesh, tx,
                                                          use_init_from=start is None)
    train_fn, evals = task.make_steps(mesh, graphdef, tx, schedule, state_shardings)
    train_iter = task.train_iterator(train_files)
    if start is not None:
        logging.info("Resuming from checkpoint step %d in %s", start, ckpt.directory)
        try:
            state, restored_iter = ckpt.restore(
                start, abstract_state_like(state, state_shardings), train_iter)
        except checkpointing.CheckpointError as e:
            advice = _how_to_resume(config, workdir, ckpt, start)
            ckpt.close()
            raise checkpointing.CheckpointError(f"{e}; nothing was written. {advice}") from e
        if restored_iter is None:  # saved by a job with another process count
            logging.warning("Checkpoint %d was written by a job with a different process "
                            "count: the data stream is re-positioned at its global batch.", start)
            input_pipeline.skip_to_batch(train_iter, int(jax.device_get(state.step)))
        else:
            train_iter = restored_iter
    start = int(jax.device_get(state.step))
    # The run has started: record its config now (a rerun that failed above left none behind)
    # and name it in every checkpoint it saves, so loaders rebuild the model with it.
    # (orbax writes step metadata from process 0 only: the other processes' name is unused)
    config_path = (metric_writer.save_config(config, workdir) if jax.process_index() == 0
                   else metric_writer.next_config_path(workdir))
    ckpt.config_file = os.path.basename(config_path)
    control = training_control.TrainingControl.from_config(config)
    if control.enabled and start:
        # Not in the checkpoint: rebuilt from the validations logged up to the restored step
        # (every process reads the same workdir, so all processes agree).
        control.replay(training_control.read_val_history(workdir, start))
        logging.info("Rebuilt training control at step %d: lr scale %g%s", start,
                     control.lr_scale, ", early stopping already triggered at step "
                     f"{control.early_stopping.stopped_step}" if control.stopped else "")
    if control.early_stopping is not None:
        ckpt.keep_step(control.early_stopping.best_step)
    if phase1:
        logging.info("Two-phase: steps 0-%d train the head only (learning rate %g), steps "
                     "%d-%d everything", phase1, config.optimizer.two_phase.phase1_learning_rate,
                     phase1, total_steps)

    writer = metric_writer.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                        resume_step=start)
    progress = metric_writer.Progress(total_steps, start, config.input.batch_size)
    halt_at = (start + config.halt_after_steps) if config.get("halt_after_steps") else None
    val_files = datasets.split_files(config, dataset_dir, config.data.val_split)
    train_metrics: dict[str, float] = {}
    step = start
    logging.info("Training %s on %s: %d examples, %d steps of %d, mesh %s (compiling the train "
                 "step first)", config.model_name, dataset_dir, num_train, total_steps,
                 config.input.batch_size, dict(mesh.shape))

    with _StopSignal() as stop:
        while step < total_steps and not control.stopped:
            batch = sharding.host_to_global(mesh, next(train_iter))
            state, step_metrics = train_fn(state, batch, control.step_lr_scale)
            step += 1
            is_last = step == total_steps
            if step % config.log_every_steps == 0 or is_last:
                train_metrics = {k: float(v) for k, v in jax.device_get(step_metrics).items()}
                if control.plateau is not None:
                    train_metrics["lr_scale"] = control.lr_scale
                writer.write(step, "train", train_metrics | progress.rates(step))
                logging.info("%s", progress.line(step, train_metrics))
            if step % config.eval_every_steps == 0 or is_last:
                summary = task.validate(evals[bool(config.eval.use_ema)], state, mesh,
                                        val_files)
                writer.write(step, "val", summary)
                logging.info("step %d validation: %s", step, metric_writer.format_metrics(summary))
                ranked = summary if summary[task.best_metric] is not None else None
                ckpt.save(step, state, train_iter, metrics=ranked)
                if control.enabled:
                    scale = control.lr_scale
                    control.update(step, summary)
                    if control.lr_scale != scale:
                        logging.info("Reduce-on-plateau at step %d: learning-rate scale %g -> %g",
                                     step, scale, control.lr_scale)
                    if control.early_stopping is not None:
                        ckpt.keep_step(control.early_stopping.best_step)
                    if control.stopped:
                        break
            elif step % config.checkpoint.every_steps == 0:
                ckpt.save(step, state, train_iter)
            if stop.received or (halt_at is not None and step >= halt_at and not is_last):
                reason = stop.received or f"halt_after_steps={config.halt_after_steps}"
                logging.warning("Stopping at step %d (%s); checkpoint saved, rerun to resume.",
                                step, reason)
                if ckpt.latest_step() != step:
                    ckpt.save(step, state, train_iter)
                ckpt.close()
                writer.close()
                return {"step": step, "train": train_metrics, "halted": reason}

    best_step = ckpt.best_step()
    stopped = {}
    if control.stopped:
        state, stopped = _restore_early_stopping_best(control.early_stopping, ckpt, state,
                                                      state_shardings, step)
        writer.write(step, "early_stop", stopped)
    ckpt.close()
    results = task.final_evaluation(evals[bool(config.eval.use_ema)], state, mesh, dataset_dir,
                                    workdir, writer, step)
    writer.close()
    return {"step": step, "train": train_metrics, "eval": results,
            "best_step": best_step, **({"early_stopping": stopped} if stopped else {})}


# What a resumed run must keep: its model and the structure of its optimizer state.
_RESTORE_KEYS = ("task", "model_name", "model", "num_classes", "optimizer")


def _how_to_resume(config, workdir: str, ckpt, step: int) -> str:
    """After a failed restore of checkpoint `step`: what to change (the config, when it is not
    the one that wrote the checkpoint; else the checkpoint looks damaged)."""
    import json

    recorded = metric_writer.config_for_step(workdir, ckpt, step)
    if recorded:
        with open(os.path.join(workdir, recorded)) as f:
            wrote = json.load(f)
        mine = json.loads(config.to_json_best_effort())
        changed = [f"config.{k}" for k in _RESTORE_KEYS if mine.get(k) != wrote.get(k)]
        if changed:
            return (f"This run's {', '.join(changed)} differ from {recorded}'s, the config "
                    "that wrote it: to resume, rerun with that config (a resume may change "
                    "e.g. num_epochs or halt_after_steps), or train in a new --workdir")
    older = sorted(s for s in ckpt.all_steps() if s < step)
    target = f"step {older[-1]}" if older else "the start"
    return (f"The config matches the one that wrote it, so its files look damaged: to resume "
            f"from {target}, move the folder {os.path.join(ckpt.directory, str(step))} out of "
            f"{ckpt.directory} (keep it until the run is back on track), or train in a new "
            "--workdir")


def _restore_early_stopping_best(es, ckpt, state, state_shardings, step: int):
    """(state of the early-stopping best step, summary): like Keras' restore_best_weights,
    the final evaluation sees the best validated state, not the last one."""
    evaluated = es.best_step
    if evaluated is None or evaluated not in ckpt.all_steps():
        logging.warning("Early stopping: best step %s has no checkpoint; the final evaluation "
                        "uses the state of step %d", evaluated, step)
        evaluated = step
    elif evaluated != step:
        ckpt.wait()
        state, _ = ckpt.restore(evaluated, abstract_state_like(state, state_shardings))
    best = es.best.value
    logging.info("Early stopping at step %d: %s did not improve by more than %g for %d "
                 "validations (best %s at step %s); the final evaluation uses the state of "
                 "step %d", es.stopped_step, es.metric, es.min_delta, es.patience,
                 "none" if best is None else f"{best:.4f}", es.best_step, evaluated)
    return state, {"stopped_step": es.stopped_step, "best_step": es.best_step,
                   "best_value": best, "evaluated_step": evaluated}
