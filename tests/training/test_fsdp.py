"""FSDP (weights split over an `fsdp` mesh axis) gives the data-parallel run's numbers."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from configs import default
from deepfake_jax.data import input_pipeline, records
from deepfake_jax.tasks import classification
from deepfake_jax.training import optim, sharding, train_state


def _vit_config(data_dir: str, **mesh):
    config = default.get_config("tiny")
    config.data.dir = data_dir
    config.model_name = "vit"
    config.model = dict(variant="tiny", image_size=32)
    config.input.crop_size = 32  # a multiple of the tiny ViT's patch size 8
    config.mesh.update(mesh)
    return config


def _run(config, num_steps: int = 3):
    mesh = sharding.make_mesh(config.mesh)
    files = records.split_files(config.data.dir, "train")
    tx, schedule = optim.build_optimizer(config.optimizer, total_steps=10)
    graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
    train_fn, _ = classification.make_steps(config, mesh, graphdef, tx, schedule, shardings)
    it = input_pipeline.train_iterator(files, input_pipeline.Preprocess.from_config(
        config.input), config.input.batch_size, seed=0)
    losses = []
    for _ in range(num_steps):
        state, m = train_fn(state, sharding.host_to_global(mesh, next(it)))
        losses.append(float(m["loss"]))
    return losses, state, mesh


def test_fsdp_and_data_parallel_give_the_same_losses(tiny_dataset):
    dp_losses, dp_state, _ = _run(_vit_config(tiny_dataset, data=8))
    config = _vit_config(tiny_dataset, data=2, fsdp=4, fsdp_min_size=256)
    fsdp_losses, fsdp_state, mesh = _run(config)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 4}
    np.testing.assert_allclose(fsdp_losses, dp_losses, rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(fsdp_state.params), jax.tree.leaves(dp_state.params),
                    strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-5)
    # The big weights, their Adam moments and their EMA really are split over `fsdp`.
    kernel = fsdp_state.params["encoder"][0]["intermediate"]["kernel"]  # (32, 64)
    assert kernel.sharding.spec == P(None, "fsdp")
    assert kernel.addressable_shards[0].data.shape == (32, 16)
    split = [x for x in jax.tree.leaves(fsdp_state.opt_state) if hasattr(x, "sharding")
             and "fsdp" in str(x.sharding.spec)]
    assert len(split) >= 2 * 4  # mu and nu of at least the 4 large kernels per block
    assert "fsdp" in str(fsdp_state.ema_params["encoder"][0]["intermediate"]["kernel"]
                         .sharding.spec)


def test_fsdp_rules_choose_the_dimension():
    spec = sharding.fsdp_spec
    assert spec("params/classifier/bias", (8,), 4, min_size=4) == P("fsdp")
    assert spec("params/a/kernel", (6, 8), 4, min_size=4) == P(None, "fsdp")
    assert spec("params/a/kernel", (6, 8), 4, min_size=100) == P()  # too small
    assert spec("params/a/kernel", (6, 10), 4, min_size=4) == P()  # nothing divisible
    rules = ((r"attention/query/kernel$", 0), (r"layernorm", None))
    assert spec("params/x/attention/query/kernel", (8, 16), 4, rules, 4) == P("fsdp", None)
    assert spec("params/layernorm/scale", (64,), 4, rules, 4) == P()
    with pytest.raises(ValueError, match="not divisible by fsdp=4"):
        spec("params/x/attention/query/kernel", (6, 16), 4, rules, 4)
    with pytest.raises(ValueError, match="must divide the 8 devices"):
        sharding.make_mesh(type("M", (), {"data": -1, "fsdp": 3})())
