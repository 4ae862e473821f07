"""Fine-tuning support in the trainer: `config.init_from` and `config.optimizer.freeze`."""

import logging

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from configs import default
from deepfake_jax import models
from deepfake_jax.models.vit import ViT, resize_pos_embed
from deepfake_jax.tasks import classification
from deepfake_jax.training import optim, sharding, train_state
from deepfake_jax.weights import vit_timm
from deepfake_jax.weights.common import flatten


def _config(**optimizer):
    """The tiny recipe with a tiny ViT (compiles ~2x faster than the tiny ResNet)."""
    config = default.get_config("tiny")
    config.model_name = "vit"
    config.model = ml_collections.ConfigDict(dict(variant="tiny", image_size=28))  # 3x3 patches
    config.optimizer.update(optimizer)
    return config


def _batch(mesh, seed=0):
    rng = np.random.default_rng(seed)
    return sharding.host_to_global(mesh, {
        "image": rng.integers(0, 256, (16, 28, 28, 3), dtype=np.uint8),
        "label": rng.integers(0, 2, 16).astype(np.int32)})


def _flat(tree):
    return {k: np.asarray(v) for k, v in flatten(jax.device_get(tree)).items()}


def _train(config, mesh, steps=2, **state_kw):
    """(initial state, final state) as host numpy trees after `steps` train steps."""
    tx, schedule = optim.build_optimizer(config.optimizer, 10,
                                         model=train_state.abstract_model(config))
    graphdef, state, shardings = train_state.create_train_state(config, mesh, tx, **state_kw)
    initial = jax.device_get(state)
    train_fn, _ = classification.make_steps(config, mesh, graphdef, tx, schedule, shardings)
    for i in range(steps):
        state, metrics = train_fn(state, _batch(mesh, i))
        assert np.isfinite(float(metrics["loss"]))
    return initial, jax.device_get(state)


def _write_timm_checkpoint(path, seed=5):
    """A timm-format ViT state dict with random values: 3 classes, 32 px (4x4 patches)."""
    from safetensors.numpy import save_file

    abstract = nnx.eval_shape(lambda: ViT("tiny", 3, image_size=32, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    rng = np.random.default_rng(seed)
    model = nnx.merge(graphdef, jax.tree.map(
        lambda s: rng.standard_normal(s.shape).astype(np.float32), state))
    save_file(vit_timm.to_timm_state_dict(model), str(path))
    return _flat(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_init_from_and_freeze_backbone_on_8_devices(tmp_path, caplog):
    """One run loads a file and freezes the backbone; a plain run is the comparison."""
    pytest.importorskip("safetensors")
    mesh = sharding.make_mesh(devices=jax.devices())
    config = _config(freeze="backbone")
    values = _write_timm_checkpoint(tmp_path / "vit.safetensors")
    config.init_from.update(path=str(tmp_path / "vit.safetensors"), format="timm_vit")
    with caplog.at_level(logging.INFO, logger="absl"):
        initial, final = _train(config, mesh)
    assert ("kept from the random init (head replaced): classifier.bias, classifier.kernel"
            in caplog.text)
    plain_initial, plain_final = _train(_config(), mesh)  # no file, no freeze

    params = _flat(initial.params)
    head = ("classifier",)
    for p, v in values.items():
        if p[:1] == head:
            continue  # 3 classes in the file, 1 in the model: replaced
        if p == ("position_embeddings",):  # 4x4 patches in the file, 3x3 in the model
            v = np.asarray(resize_pos_embed(v, (3, 3)))
        np.testing.assert_array_equal(params[p], v, err_msg=str(p))
    # the replaced head is the model's own random init (same seed as the plain run)
    np.testing.assert_array_equal(params[("classifier", "kernel")],
                                  _flat(plain_initial.params)[("classifier", "kernel")])
    for a, b in zip(jax.tree.leaves(initial.ema_params), jax.tree.leaves(initial.params),
                    strict=True):
        np.testing.assert_array_equal(a, b)  # EMA starts from the loaded weights
    assert int(final.step) == 2

    after = _flat(final.params)
    assert all(np.array_equal(after[p], params[p]) for p in params if p[:1] != head), \
        "frozen backbone moved"
    assert all(not np.array_equal(after[p], params[p]) for p in params if p[:1] == head)
    plain_before, plain_after = _flat(plain_initial.params), _flat(plain_final.params)
    assert all(not np.array_equal(plain_after[p], plain_before[p]) for p in plain_before)
    # no Adam moments for the frozen backbone
    assert len(jax.tree.leaves(final.opt_state)) < len(jax.tree.leaves(plain_final.opt_state))


def test_init_from_errors(tmp_path):
    config = _config()
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    tx, _ = optim.build_optimizer(config.optimizer, 10)
    config.init_from.update(path=str(tmp_path), format="")
    with pytest.raises(ValueError, match="needs config.init_from.format, one of: hf_vit"):
        train_state.create_train_state(config, mesh, tx)
    config.init_from.update(path=str(tmp_path / "nope.safetensors"), format="timm_resnet")
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        train_state.create_train_state(config, mesh, tx)


@pytest.mark.parametrize("name,kwargs", [
    ("resnet", dict(variant="tiny")), ("vit", dict(variant="tiny", image_size=32)),
    ("cnn", dict(variant="tiny", image_size=32)), ("vgg", dict(variant="tiny")),
    ("densenet", dict(variant="tiny")), ("xception", dict(variant="tiny")),
    ("bisenet", dict(variant="tiny"))])
def test_param_group_mask_every_family(name, kwargs):
    model = nnx.eval_shape(lambda: models.create_model(name, num_classes=2, rngs=nnx.Rngs(0),
                                                        **kwargs))
    graphdef, params, _ = nnx.split(model, nnx.Param, ...)
    params = nnx.to_pure_dict(params)
    head = flatten(optim.param_group_mask(graphdef, params, "head"))
    backbone = flatten(optim.param_group_mask(model, params, "backbone"))
    assert any(head.values()) and any(backbone.values())
    # the same split as nnx's own filtering with the family's filters
    head_paths = set(flatten(nnx.to_pure_dict(nnx.state(model, nnx.All(
        nnx.Param, type(model).head_filter())))))
    assert {p for p, h in head.items() if h} == head_paths
    assert all(head[p] != backbone[p] for p in head)
    tx, _ = optim.build_optimizer(_config(freeze="backbone").optimizer, 10, model=graphdef)
    opt_state = jax.eval_shape(tx.init, params)  # multi_transform accepts the tree
    updates, _ = jax.eval_shape(tx.update, params, opt_state, params)
    assert jax.tree.structure(updates) == jax.tree.structure(params)


def test_freeze_errors():
    model = nnx.eval_shape(lambda: models.create_model("resnet", variant="tiny", num_classes=1,
                                                        rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="unknown parameter group 'neck'; valid: backbone, head"):
        optim.param_group_mask(model, {}, "neck")
    with pytest.raises(ValueError, match="needs the model"):
        optim.build_optimizer(_config(freeze="head").optimizer, 10)
