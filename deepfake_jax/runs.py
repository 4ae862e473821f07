"""Opens a finished run: the config that wrote a checkpoint, its weights (EMA and BatchNorm
statistics, no optimizer state), its dataset and the validation threshold. Used by evaluate,
predict, segment, export and the app.
"""

from __future__ import annotations

import glob
import json
import os

import ml_collections
from absl import logging

from deepfake_jax.data import domain_mix
from deepfake_jax.training import checkpointing, metric_writer, train_state


def load_run_config(workdir: str, checkpoint: str | int | None = "latest"
                    ) -> ml_collections.ConfigDict:
    """The config to rebuild the run's model with: that of the run which saved `checkpoint`
    (latest, best or a step; see `run_config_at`), so a later rerun that failed or changed the
    model never takes its place. The newest recorded config (`config.json`, or the newest
    `config.N.json`) when `checkpoint` is None or the workdir has no checkpoint yet."""
    if not os.path.isdir(workdir):
        raise FileNotFoundError(f"--workdir {workdir} does not exist: give a training workdir "
                                "(the --workdir of python -m deepfake_jax.main)")
    paths = metric_writer.config_files(workdir)
    if not paths:
        raise FileNotFoundError(f"{workdir} has no config.json: is it a training workdir?")
    newest = read_config(paths[-1])
    if checkpoint is None or not os.path.isdir(os.path.join(workdir, "checkpoints")):
        return newest
    ckpt = checkpointing.open_run(workdir, newest)
    try:
        if not ckpt.all_steps():
            return newest
        name = metric_writer.config_for_step(workdir, ckpt, ckpt.select(checkpoint))
    finally:
        ckpt.close()
    return newest if name == os.path.basename(paths[-1]) else read_config(
        os.path.join(workdir, name))


def read_config(path: str) -> ml_collections.ConfigDict:
    try:
        with open(path) as f:
            return ml_collections.ConfigDict(json.load(f))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read the run config {path}: {checkpointing.one_line(e)}") from e


def run_config_at(workdir: str, checkpoint: str | int = "latest"
                  ) -> tuple[ml_collections.ConfigDict, int]:
    """(config of the run that saved the checkpoint, its step); `checkpoint`: latest, best or
    a step. A later rerun's config (one that changed the model, say) never replaces it."""
    workdir = os.path.abspath(workdir)
    newest = load_run_config(workdir, None)
    ckpt = checkpointing.open_run(workdir, newest)
    try:
        step = ckpt.select(checkpoint)
        name = metric_writer.config_for_step(workdir, ckpt, step)
    finally:
        ckpt.close()
    return read_config(os.path.join(workdir, name)), step


def run_dataset_dir(config: ml_collections.ConfigDict, workdir: str) -> str:
    """The run's converted dataset; with `config.data.mix`, a label for the domains (the files
    come from `datasets.split_files`)."""
    if config.data.get("mix"):
        return domain_mix.describe(domain_mix.parse_mix(config.data.mix))
    return config.data.get("dir") or os.path.join(workdir, "data", "arrayrecord")


def restore_weights(config, workdir: str, checkpoint: str | int, mesh):
    """(graphdef, state, step): the weights of `checkpoint` (latest, best by the run's own
    metric, or a step) on `mesh`, whatever device count wrote them; `state` is a TrainState
    whose optimizer state is None (never read from disk).

    The model is rebuilt from the config of the run that saved that checkpoint (`config` when
    the workdir does not say which), not from a later rerun's."""
    ckpt = checkpointing.open_run(workdir, config)
    try:
        step = ckpt.select(checkpoint)
        name = metric_writer.config_for_step(workdir, ckpt, step)
        if name is not None:
            config = read_config(os.path.join(workdir, name))
        graphdef, abstract = train_state.abstract_weights(config, mesh)
        state = ckpt.restore_weights(step, abstract)
    finally:
        ckpt.close()
    return graphdef, state, step


DEFAULT_THRESHOLD = 0.5


def find_threshold(workdir: str, val_split: str = "valid") -> tuple[float, str]:
    """(threshold, where it came from): the one the run's final evaluation chose on its
    validation split (`<workdir>/eval/<val_split>/metrics.json`), else the newest
    `<workdir>/eval/*/*/metrics.json` (written by `evaluate`), else 0.5 with a warning."""
    own = os.path.join(workdir, "eval", val_split, "metrics.json")
    candidates = [own] if os.path.isfile(own) else sorted(
        glob.glob(os.path.join(workdir, "eval", "*", "*", "metrics.json")),
        key=lambda p: (os.path.getmtime(p), p), reverse=True)
    for path in candidates:
        try:
            with open(path) as f:
                return float(json.load(f)["threshold"]), path
        except (OSError, ValueError, KeyError, TypeError) as e:
            logging.warning("ignoring %s: %s", path, e)
    logging.warning("no evaluation metrics.json with a threshold under %s/eval: using %.2f",
                    workdir, DEFAULT_THRESHOLD)
    return DEFAULT_THRESHOLD, f"default {DEFAULT_THRESHOLD} (no eval metrics.json found)"
