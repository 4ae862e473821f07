"""configs/pretrained_faces.py: the packaged ImageNet EfficientNet-Lite0 reaches the train
state through `init_from = pypi:...` (the family trains end to end in test_zoo_training), and
`frozen_stages` keeps the stem and the first stages fixed."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import pretrained_faces
from deepfake_jax.models.efficientnet import EfficientNet, Frozen
from deepfake_jax.training import optim, sharding, train_state
from deepfake_jax.weights import packaged
from deepfake_jax.weights.common import read_state_dict


@pytest.fixture(scope="module")
def lite0_state_dict():
    pytest.importorskip("torch")
    try:
        return read_state_dict(packaged.resolve(pretrained_faces.WEIGHTS))
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_recipe_starts_from_the_packaged_imagenet_weights(lite0_state_dict):
    config = pretrained_faces.get_config("tiny")
    mesh = sharding.make_mesh(None, devices=jax.devices()[:1])
    tx, _ = optim.build_optimizer(config.optimizer, 10)
    _, state, _ = train_state.create_train_state(config, mesh, tx)
    stem = np.asarray(state.params["stem_conv"]["kernel"])
    np.testing.assert_array_equal(stem, lite0_state_dict["_conv_stem.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(np.asarray(state.batch_stats["blocks"][15]["project_bn"]["var"]),
                                  lite0_state_dict["_blocks.15._bn2.running_var"])
    assert state.params["fc"]["kernel"].shape == (1280, 1)  # the 1000-class head replaced


def test_scratch_form_has_no_weights():
    config = pretrained_faces.get_config("scratch")
    assert not config.init_from.path and config.model.variant == "lite0"


def test_frozen_stages_hold_the_stem_and_first_blocks():
    model = EfficientNet("tiny", 1, rngs=nnx.Rngs(0), frozen_stages=2, drop_connect=0.0,
                         dropout=0.0)
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    frozen = nnx.state(model, Frozen)
    assert set(nnx.to_pure_dict(frozen)) == {"stem_conv", "stem_bn", "blocks"}
    assert sorted(nnx.to_pure_dict(frozen)["blocks"]) == [0, 1]  # stages 0 and 1 of "tiny"
    assert "stem_conv" not in nnx.to_pure_dict(params)
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))

    def loss(params, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        out = m(x, train=True)
        return (out ** 2).mean(), nnx.state(m, nnx.BatchStat)

    (_, new_rest), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, rest)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    before = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
    after = nnx.to_pure_dict(new_rest)
    for key in ("stem_bn", "blocks"):  # frozen BatchNorm statistics do not move
        first = after[key] if key == "stem_bn" else after[key][0]["depthwise_bn"]
        want = before[key] if key == "stem_bn" else before[key][0]["depthwise_bn"]
        np.testing.assert_array_equal(first["mean"], want["mean"])
    moved = after["blocks"][3]["depthwise_bn"]["mean"]  # a trained block's statistics move
    assert not np.allclose(moved, before["blocks"][3]["depthwise_bn"]["mean"])
    with pytest.raises(ValueError, match="frozen_stages must be in 0..6"):
        EfficientNet("tiny", 1, rngs=nnx.Rngs(0), frozen_stages=7)
