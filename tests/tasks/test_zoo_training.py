"""Every registered family's tiny variant trains in the real trainer step on an 8-device mesh."""

import jax
import numpy as np
import pytest

from configs import default
from deepfake_jax import models
from deepfake_jax.data import input_pipeline, records
from deepfake_jax.tasks import classification
from deepfake_jax.training import optim, sharding, train_state

# (model_name, model kwargs, crop): crops fit each family's tiny variant.
ZOO = [
    ("resnet", {"variant": "tiny"}, 28),
    ("vit", {"variant": "tiny", "image_size": 32, "dropout": 0.1, "drop_path": 0.1}, 32),
    ("cnn", {"variant": "tiny", "image_size": 32}, 32),
    ("vgg", {"variant": "tiny"}, 32),
    ("densenet", {"variant": "tiny"}, 32),
    ("xception", {"variant": "tiny"}, 32),
    ("efficientnet", {"variant": "tiny", "drop_connect": 0.2, "dropout": 0.2}, 32),
    ("cooccurrence", {"variant": "tiny", "hidden": 8, "dropout": 0.1}, 32),
]


# Face parsing trains through its own task and tests (test_bisenet, test_segmentation).
SEGMENTATION_MODELS = {"bisenet"}


def test_every_registered_family_is_covered():
    classifiers = [m for m in models.available_models() if m not in SEGMENTATION_MODELS]
    assert sorted(name for name, _, _ in ZOO) == classifiers


@pytest.mark.parametrize("name,kwargs,crop", ZOO, ids=[name for name, _, _ in ZOO])
def test_tiny_variant_trains_sharded(tiny_dataset, name, kwargs, crop):
    config = default.get_config("tiny")
    config.model_name = name
    config.model = kwargs
    config.input.crop_size = crop
    mesh = sharding.make_mesh(devices=jax.devices())
    tx, schedule = optim.build_optimizer(config.optimizer, total_steps=10)
    graphdef, state, shardings = train_state.create_train_state(config, mesh, tx)
    train_fn, evals = classification.make_steps(config, mesh, graphdef, tx, schedule, shardings)
    before = jax.device_get(state.params)
    it = input_pipeline.train_iterator(records.split_files(tiny_dataset, "train"),
                                       input_pipeline.Preprocess(crop), 16, seed=0)
    for _ in range(2):
        state, m = train_fn(state, sharding.host_to_global(mesh, next(it)))
        assert np.isfinite(float(m["loss"]))
    after = jax.device_get(state.params)
    changed = [not np.array_equal(a, b) for a, b in
               zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True)]
    assert all(changed), f"{sum(not c for c in changed)} parameter arrays did not train"
    batch = sharding.host_to_global(mesh, next(it))
    p = evals[True](state, {"image": batch["image"], "label": batch["label"]})
    assert p.shape == (16,) and np.all((np.asarray(p) >= 0) & (np.asarray(p) <= 1))
