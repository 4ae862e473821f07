"""bf16 compute with float32 master weights: trains, and stays close to the float32 run."""

import jax
import jax.numpy as jnp
import numpy as np

from configs import default
from deepfake_jax.data import input_pipeline, records
from deepfake_jax.tasks import classification
from deepfake_jax.training import optim, sharding, train_state


def _losses(config, steps=3):
    mesh = sharding.make_mesh(devices=jax.devices()[:2])
    tx, schedule = optim.build_optimizer(config.optimizer, total_steps=10)
    graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
    train_fn, _ = classification.make_steps(config, mesh, graphdef, tx, schedule, shardings)
    it = input_pipeline.train_iterator(records.split_files(config.data.dir, "train"),
                                       input_pipeline.Preprocess.from_config(config.input),
                                       config.input.batch_size, seed=0)
    losses = []
    for _ in range(steps):
        state, m = train_fn(state, sharding.host_to_global(mesh, next(it)))
        losses.append(float(m["loss"]))
    return losses, state


def test_bfloat16_compute_keeps_float32_weights_and_tracks_float32(tiny_dataset):
    config = default.get_config("tiny")
    config.data.dir = tiny_dataset
    f32_losses, _ = _losses(config)
    config.model.dtype = "bfloat16"
    bf16_losses, state = _losses(config)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.params))
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state.opt_state)
               if hasattr(x, "dtype") and x.ndim > 0)
    assert np.all(np.isfinite(bf16_losses))
    assert bf16_losses != f32_losses  # the compute really is bf16...
    np.testing.assert_allclose(bf16_losses, f32_losses, rtol=0.05)  # ...and close to float32
