"""Optimizers: learning-rate schedules, backbone/head parameter groups, start_after, two-phase
fine-tuning, and `build_optimizer` from `config.optimizer`."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx


def weight_decay_mask(params: Any) -> Any:
    """Decay matrices and conv kernels only: not biases, not norm scales (ndim <= 1)."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def learning_rate_schedule(opt_config: ml_collections.ConfigDict, total_steps: int):
    peak = float(opt_config.learning_rate)
    warmup = min(int(opt_config.warmup_steps), max(total_steps - 1, 0))
    if opt_config.get("schedule", "cosine") == "poly":  # BiSeNet's (1 - t/T)^power decay
        after = optax.polynomial_schedule(
            peak, peak * float(opt_config.get("end_lr_factor", 0.0)),
            float(opt_config.get("power", 0.9)), max(total_steps - warmup, 1))
    elif opt_config.get("schedule", "cosine") == "constant":
        after = optax.constant_schedule(peak)
    else:  # optax.warmup_cosine_decay_schedule's decay, without its warm-up
        end_factor = float(opt_config.get("end_lr_factor", 0.01))
        after = optax.cosine_decay_schedule(peak, max(total_steps, warmup + 1) - warmup,
                                            alpha=end_factor if peak else 0.0)
    if warmup <= 0:  # no ramp: optax logs "non-positive transition_steps" for an empty one
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


PARAM_GROUPS = ("backbone", "head")


def param_group_mask(graphdef_or_model: Any, params: Any, group: str) -> Any:
    """Bools shaped like `params` (a pure dict): True where the parameter is in `group`.

    Groups come from the model family's `HEAD_MODULES` (`ParamGroups.head_filter()` /
    `backbone_filter()`): "head" = those top-level modules, "backbone" = everything else.
    `graphdef_or_model`: the nnx GraphDef of the model, or the model (abstract is fine).
    """
    if group not in PARAM_GROUPS:
        raise ValueError(f"unknown parameter group {group!r}; valid: {', '.join(PARAM_GROUPS)}")
    cls = (type(graphdef_or_model) if isinstance(graphdef_or_model, nnx.Module)
           else graphdef_or_model.nodes[0].type)
    if not getattr(cls, "HEAD_MODULES", ()):
        raise ValueError(f"{cls.__name__} defines no HEAD_MODULES: its parameters cannot be "
                         "split into backbone and head")
    keep = cls.head_filter() if group == "head" else cls.backbone_filter()
    return jax.tree_util.tree_map_with_path(
        lambda path, x: bool(keep(tuple(getattr(k, "key", k) for k in path), x)), params)


def _base_optimizer(opt_config: ml_collections.ConfigDict, schedule
                    ) -> optax.GradientTransformation:
    name = opt_config.get("name", "adamw")
    if name == "adamw":
        return optax.adamw(schedule, b1=opt_config.b1, b2=opt_config.b2,
                           weight_decay=opt_config.weight_decay, mask=weight_decay_mask)
    if name == "sgd":
        return optax.chain(
            optax.add_decayed_weights(opt_config.weight_decay, mask=weight_decay_mask),
            optax.sgd(schedule, momentum=opt_config.get("momentum", 0.9), nesterov=True),
        )
    raise ValueError(f"config.optimizer.name={name!r}; choose adamw or sgd")


def phase1_steps(opt_config: ml_collections.ConfigDict, steps_per_epoch: int | None = None
                 ) -> int:
    """Length of phase 1 of `config.optimizer.two_phase` (0 = off): `phase1_steps` if set,
    else `phase1_epochs` x `steps_per_epoch`."""
    two_phase = opt_config.get("two_phase")
    if not two_phase:
        return 0
    if two_phase.get("phase1_steps") is not None:
        steps = int(two_phase.phase1_steps)
    else:
        epochs = float(two_phase.get("phase1_epochs") or 0)
        if epochs and not steps_per_epoch:
            raise ValueError("config.optimizer.two_phase.phase1_epochs needs the number of steps "
                             f"per epoch (got {steps_per_epoch!r}): build_optimizer(..., "
                             "steps_per_epoch=...), or set phase1_steps")
        steps = int(math.ceil(epochs * steps_per_epoch)) if epochs else 0
    if steps < 0:
        raise ValueError(f"config.optimizer.two_phase: phase 1 of {steps} steps; must be >= 0")
    return steps


class _StartAfterState(NamedTuple):
    count: jax.Array
    inner: Any


def start_after(inner: optax.GradientTransformation, steps: int
                ) -> optax.GradientTransformation:
    """`inner` from the `steps`-th update on. Before: zero updates and `inner`'s state left
    untouched (no moments, no weight decay, its schedule's count stays 0), so `inner` starts
    fresh, warm-up included, at the boundary."""

    def init(params):
        return _StartAfterState(jnp.zeros([], jnp.int32), inner.init(params))

    def update(updates, state, params=None):
        def run(_):
            return inner.update(updates, state.inner, params)

        def wait(_):
            return jax.tree.map(jnp.zeros_like, updates), state.inner

        new_updates, inner_state = jax.lax.cond(state.count >= steps, run, wait, None)
        return new_updates, _StartAfterState(optax.safe_increment(state.count), inner_state)

    return optax.GradientTransformation(init, update)


def _zero_before(mask_fn, steps: int) -> optax.GradientTransformation:
    """Zeroes the gradients where `mask_fn(grads)` is True for the first `steps` updates (so a
    following global-norm clip measures the trained parameters only)."""

    def update(updates, count, params=None):
        del params
        live = count >= steps
        out = jax.tree.map(lambda g, m: jnp.where(live, g, jnp.zeros_like(g)) if m else g,
                           updates, mask_fn(updates))
        return out, optax.safe_increment(count)

    return optax.GradientTransformation(lambda params: jnp.zeros([], jnp.int32), update)


def _two_phase_optimizer(opt_config, total_steps: int, model: Any, phase1: int):
    """Phase 1 (`phase1` steps): the head alone at `two_phase.phase1_learning_rate` (linear
    warm-up over `phase1_warmup_steps`, then constant); the backbone gets nothing (see
    `start_after`). Phase 2 (the rest): every parameter with the run's schedule over the
    remaining steps; the head keeps its moments, the backbone starts fresh ones."""
    two_phase = opt_config.two_phase
    if opt_config.get("freeze"):
        raise ValueError("config.optimizer.freeze and config.optimizer.two_phase are exclusive: "
                         "two_phase already freezes the backbone during phase 1")
    if model is None:
        raise ValueError("config.optimizer.two_phase needs the model: build_optimizer(..., "
                         "model=graphdef_or_abstract_model)")
    param_group_mask(model, {}, "head")  # fails early on a model without groups
    lr1 = float(two_phase.get("phase1_learning_rate", 1e-3))
    warmup1 = min(int(two_phase.get("phase1_warmup_steps", 0)), max(phase1 - 1, 0))
    phase1_schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, lr1, warmup1), optax.constant_schedule(lr1)], [warmup1])
    phase2_schedule = learning_rate_schedule(opt_config, max(total_steps - phase1, 1))
    head_schedule = optax.join_schedules([phase1_schedule, phase2_schedule], [phase1])

    def backbone_schedule(step):
        return jnp.where(step < phase1, 0.0, phase2_schedule(jnp.maximum(step - phase1, 0)))

    # Logged as learning_rate (the head's) and learning_rate_backbone (see lr_metrics).
    head_schedule.group_schedules = {"backbone": backbone_schedule}

    def labels(params):
        head = param_group_mask(model, params, "head")
        return jax.tree.map(lambda h: "head" if h else "backbone", head)

    tx = optax.multi_transform({
        "head": _base_optimizer(opt_config, head_schedule),
        "backbone": start_after(_base_optimizer(opt_config, phase2_schedule), phase1),
    }, labels)
    if opt_config.get("grad_clip_norm"):
        # Phase 1 clips by the head's gradient norm only; phase 2 by everyone's, as a plain run.
        tx = optax.chain(
            _zero_before(lambda g: param_group_mask(model, g, "backbone"), phase1),
            clip_by_global_norm(opt_config.grad_clip_norm), tx)
    return tx, head_schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """`optax.clip_by_global_norm` as one scale factor: t * min(1, max_norm / norm). Optax's
    select between t and t / norm * max_norm has a divide per value, so XLA materialises the
    clipped gradients before the moment updates instead of fusing them in; this saves that pass
    (VGG-16's train step 1.02x faster, docs/cpu_benchmarks.md). Equal to optax's up to a
    rounding of the clipped values; the same (empty) state, so checkpoints are unchanged."""

    def update(updates, state, params=None):
        del params
        scale = jnp.minimum(1.0, max_norm / optax.tree.norm(updates))
        return jax.tree.map(lambda t: t * scale.astype(t.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def build_optimizer(opt_config: ml_collections.ConfigDict, total_steps: int, *,
                    model: Any = None, steps_per_epoch: int | None = None):
    """(optax transform, learning-rate schedule) from `config.optimizer`.

    `opt_config.freeze` ("backbone" | "head" | None) freezes that parameter group: its
    updates are zero, it gets no weight decay, no optimizer moments and no share of the
    gradient-clipping norm (`optax.multi_transform`). Needs `model` (its GraphDef or an
    abstract model) to tell the groups apart. BatchNorm statistics of a frozen group still
    update in training (the step runs the model in train mode).

    `opt_config.two_phase` (phase 1 > 0 steps, see `phase1_steps`; needs `model`, and
    `steps_per_epoch` when given in epochs): Keras-style fine-tuning in one run, see
    `_two_phase_optimizer`. Phase 1 is part of `total_steps`. The returned schedule is the
    head's and has `group_schedules={"backbone": ...}`.
    """
    phase1 = phase1_steps(opt_config, steps_per_epoch)
    if phase1 >= total_steps > 0:
        raise ValueError(f"config.optimizer.two_phase: phase 1 of {phase1} steps leaves no phase 2 "
                         f"in a run of {total_steps} steps")
    if phase1:
        return _two_phase_optimizer(opt_config, total_steps, model, phase1)
    schedule = learning_rate_schedule(opt_config, total_steps)
    tx = _base_optimizer(opt_config, schedule)
    if opt_config.get("grad_clip_norm"):
        tx = optax.chain(clip_by_global_norm(opt_config.grad_clip_norm), tx)
    freeze = opt_config.get("freeze")
    if freeze:
        if model is None:
            raise ValueError("config.optimizer.freeze needs the model: build_optimizer(..., "
                             "model=graphdef_or_abstract_model)")
        param_group_mask(model, {}, freeze)  # fails early on a bad group or model

        def labels(params):
            frozen = param_group_mask(model, params, freeze)
            return jax.tree.map(lambda f: "frozen" if f else "trained", frozen)

        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def lr_metrics(schedule, step: jax.Array, lr_scale: jax.Array | None = None
               ) -> dict[str, jax.Array]:
    """The learning rate this step used (times `lr_scale`): "learning_rate", and
    "learning_rate_<group>" for each of the schedule's `group_schedules` (two-phase)."""
    scale = (lambda lr: lr) if lr_scale is None else (lambda lr: lr * lr_scale)
    out = {"learning_rate": scale(schedule(step))}
    for group, group_schedule in getattr(schedule, "group_schedules", {}).items():
        out[f"learning_rate_{group}"] = scale(group_schedule(step))
    return out
