"""Weights from another deepfake_jax training run (format ``"deepfake_jax"``): two-stage training.

    config.init_from = {"path": "runs/stage1", "format": "deepfake_jax", "use_ema": True}

``path``: a training workdir (best checkpoint, else latest), its ``checkpoints/`` folder or one
step folder. Only the weights and BatchNorm statistics are read (EMA or raw), by an orbax partial
restore onto the current model's shardings. A head of another shape keeps its random init; any
other mismatch raises one ``ValueError`` (``strict=False``: logged).

Details: docs/models.md#deepfake_jaxweightsown_runpy
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from deepfake_jax.weights.common import flatten, listing, path_str, unflatten

STATE_ITEM = "state"  # checkpointing.Checkpointer's item names
METRICS_ITEM = "metrics"


def _is_step_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, STATE_ITEM))


def _steps(checkpoints_dir: str) -> list[int]:
    # orbax writes into "<step>.orbax-checkpoint-tmp-*" and renames when committed
    return sorted(int(name) for name in os.listdir(checkpoints_dir)
                  if name.isdigit() and _is_step_dir(os.path.join(checkpoints_dir, name)))


def _best_metric(workdir: str) -> str:
    """The metric the run ranked its checkpoints by (its task's `best_metric`, higher=better)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            task = json.load(f).get("task", "classification")
    except (OSError, ValueError):
        task = "classification"
    return "val_miou" if task == "segmentation" else "val_roc_auc"


def _read_metrics(step_dir: str) -> dict[str, Any] | None:
    try:
        with open(os.path.join(step_dir, METRICS_ITEM, METRICS_ITEM)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def resolve_checkpoint(path: str) -> tuple[str, str]:
    """(step folder, how it was chosen) for a workdir, its checkpoints/ folder or a step folder."""
    path = os.path.abspath(str(path))
    if _is_step_dir(path):
        return path, "the given step"
    for checkpoints_dir in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(checkpoints_dir) and (checkpoints_dir != path or _steps(path)):
            break
    else:
        raise FileNotFoundError(
            f"init_from (format deepfake_jax): {path!r} is not a deepfake_jax training workdir or "
            "checkpoint: expected <workdir>/checkpoints/<step>/state/ (pass the workdir, its "
            "checkpoints/ folder or one <step> folder)")
    steps = _steps(checkpoints_dir)
    if not steps:
        raise FileNotFoundError(
            f"init_from (format deepfake_jax): no checkpoint in {checkpoints_dir} (no committed "
            "<step>/state folder): did the first run save one?")
    workdir = os.path.dirname(checkpoints_dir)
    metric = _best_metric(workdir)
    ranked = {s: m[metric] for s in steps
              if (m := _read_metrics(os.path.join(checkpoints_dir, str(s)))) is not None
              and isinstance(m.get(metric), (int, float)) and np.isfinite(m[metric])}
    if ranked:
        step = max(ranked, key=lambda s: (ranked[s], s))
        how = f"best by {metric}={ranked[step]:.4f}"
    else:
        step, how = steps[-1], "latest (no ranked checkpoint)"
    return os.path.join(checkpoints_dir, str(step)), how


def _metadata(state_dir: str) -> dict[str, Any]:
    try:
        meta = ocp.PyTreeCheckpointer().metadata(state_dir)
        tree = meta.item_metadata.tree if hasattr(meta, "item_metadata") else meta
    except Exception as e:  # orbax raises many types for unreadable files
        raise _unreadable(state_dir, e) from e
    if not isinstance(tree, dict):
        raise _unreadable(state_dir, TypeError(f"metadata is a {type(tree).__name__}"))
    return tree


def _unreadable(state_dir: str, e: Exception) -> Exception:
    from deepfake_jax.training.checkpointing import CheckpointError

    return CheckpointError(
        f"init_from (format deepfake_jax): cannot read the checkpoint in {state_dir}: "
        f"{type(e).__name__}: {e}. It may be truncated or still being written; pass another "
        "step folder (<workdir>/checkpoints/<step>).")


def load_deepfake_jax(model_or_state: nnx.Module | nnx.State, path: str, *, strict: bool = True,
                      use_ema: bool = True) -> nnx.State:
    """The model's Param + BatchStat state filled from a deepfake_jax run's checkpoint.

    Loaded leaves are jax.Arrays with the model's own shardings (a concrete model) and dtypes.
    Leaves not loaded (a replaced head; anything with `strict=False`) are the model's own
    objects, so the caller can tell them apart.
    """
    step_dir, how = resolve_checkpoint(path)
    state_dir = os.path.join(step_dir, STATE_ITEM)
    keys = ("ema_params", "ema_batch_stats") if use_ema else ("params", "batch_stats")
    meta = _metadata(state_dir)
    if not all(k in meta for k in keys):
        raise ValueError(f"init_from (format deepfake_jax): {state_dir} holds {sorted(meta)}, not "
                         f"a deepfake_jax train state with {' and '.join(keys)}")

    if isinstance(model_or_state, nnx.Module):
        params_state = nnx.state(model_or_state, nnx.Param)
        stats_state = nnx.state(model_or_state, nnx.BatchStat)
    else:
        params_state, stats_state = nnx.split_state(model_or_state, nnx.Param, nnx.BatchStat)
    ours = {}  # ("params"|"batch_stats" path in the checkpoint, str keys) -> our leaf
    for key, sub in zip(keys, (params_state, stats_state), strict=True):
        for p, leaf in flatten(nnx.to_pure_dict(sub)).items():
            ours[(key,) + tuple(str(k) for k in p)] = (p, leaf)
    theirs = {}
    for key in keys:
        for p, m in flatten(meta[key]).items():
            theirs[(key,) + tuple(str(k) for k in p)] = m

    cls = type(model_or_state) if isinstance(model_or_state, nnx.Module) else None
    head = tuple(getattr(cls, "HEAD_MODULES", ()) or ())
    mismatched, replaced, target = [], [], {}
    for p, (_, leaf) in ours.items():
        m = theirs.get(p)
        if m is None:
            continue
        if tuple(m.shape) != tuple(leaf.shape):
            (replaced if len(p) > 1 and p[1] in head else mismatched).append(
                f"{path_str(p)}: checkpoint {tuple(m.shape)}, model {tuple(leaf.shape)}")
            continue
        sharding = getattr(leaf, "sharding", None) or jax.sharding.SingleDeviceSharding(
            jax.local_devices()[0])
        target[p] = jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding)
    missing = [path_str(p) for p in ours if p not in theirs]
    unexpected = [path_str(p) for p in theirs if p not in ours]
    problems = []  # (the first one, in words), kind, all of that kind
    if mismatched:
        problems.append((f"shape mismatch {mismatched[0]}", "shape mismatches", mismatched))
    if missing:
        problems.append((f"{missing[0]} is in the model but not in the checkpoint", "missing",
                         missing))
    if unexpected:
        problems.append((f"{unexpected[0]} is in the checkpoint but not in the model",
                         "unexpected", unexpected))
    if problems:
        report = (f"init_from (format deepfake_jax): the model does not match the checkpoint "
                  f"{step_dir} (another model_name / model config?); first mismatching "
                  f"parameter: {problems[0][0]}. All: " + "; ".join(
                      f"{kind}: {listing(items)}" for _, kind, items in problems))
        if strict:
            raise ValueError(report)
        logging.warning("%s (strict=False: the model keeps its own values there)", report)
    if replaced:
        logging.info("init_from: checkpoint head does not fit the model (%s); head %s kept from "
                     "the model (random init)", ", ".join(replaced), "/".join(head))

    if target:
        nested = unflatten(target)
        try:
            restored = ocp.PyTreeCheckpointer().restore(state_dir, args=ocp.args.PyTreeRestore(
                item=nested, restore_args=ocp.checkpoint_utils.construct_restore_args(nested),
                partial_restore=True))
        except Exception as e:
            raise _unreadable(state_dir, e) from e
        loaded = flatten(restored)
    else:
        loaded = {}
    logging.info("init_from: %d of %d variables from %s (%s, %s weights)", len(loaded), len(ours),
                 step_dir, how, "EMA" if use_ema else "raw")
    out = {}
    for p, (our_path, leaf) in ours.items():
        out.setdefault(p[0], {})[our_path] = loaded.get(p, leaf)
    new_states = []
    for key, sub in zip(keys, (params_state, stats_state), strict=True):
        new = jax.tree.map(lambda x: x, sub)  # a copy: the model stays untouched
        if out.get(key):
            nnx.replace_by_pure_dict(new, unflatten(out[key]))
        new_states.append(new)
    return nnx.merge_state(*new_states)
