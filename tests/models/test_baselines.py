"""Tests for the seed baselines: SmallCNN, VGG, DenseNet, Xception (CPU, fast).

Full-size models are only built with ``nnx.eval_shape`` (nothing is computed); everything that
runs uses the tiny variants on 32-px inputs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from deepfake_jax.models import count_params
from deepfake_jax.models.cnn import SmallCNN, flat_size
from deepfake_jax.models.densenet import DenseNet
from deepfake_jax.models.vgg import VGG, adaptive_avg_pool, adaptive_pool_matrix
from deepfake_jax.models.xception import Xception

FAMILIES = {"SmallCNN": SmallCNN, "VGG": VGG, "DenseNet": DenseNet, "Xception": Xception}

# (family, variant, constructor kwargs) -> (nnx.Param count, nnx.BatchStat count), 1000 classes.
REFERENCE_COUNTS = [
    # torchvision vgg*, == Keras VGG16/VGG19 (which have no BN).
    ("VGG", "11", {}, 132_863_336, 0),
    ("VGG", "13", {}, 133_047_848, 0),
    ("VGG", "16", {}, 138_357_544, 0),
    ("VGG", "19", {}, 143_667_240, 0),
    # torchvision vgg16_bn: conv biases kept, + BN scale/bias (2 x 4224 channels).
    ("VGG", "16", {"batch_norm": True}, 138_365_992, 8_448),
    # torchvision densenet* == Keras DenseNet121 trainable; Keras total 8,062,504 adds the
    # BN moving statistics (our BatchStat).
    ("DenseNet", "121", {}, 7_978_856, 83_648),
    # optional variants, ~4 s each to trace: marked slow (deselect with -m "not slow").
    pytest.param("DenseNet", "169", {}, 14_149_480, 158_400, marks=pytest.mark.slow),
    pytest.param("DenseNet", "201", {}, 20_013_928, 229_056, marks=pytest.mark.slow),
    pytest.param("DenseNet", "161", {}, 28_681_000, 219_936, marks=pytest.mark.slow),
    # Keras Xception: trainable 22,855,952; total 22,910,480 incl. BN moving statistics.
    ("Xception", "standard", {}, 22_855_952, 54_528),
]

TINY = {
    "SmallCNN": dict(variant="tiny", image_size=32),
    "VGG": dict(variant="tiny"),
    "VGG_bn": dict(variant="tiny", batch_norm=True),
    "DenseNet": dict(variant="tiny"),
    "Xception": dict(variant="tiny"),
}


def _family(name: str):
    return FAMILIES[name.split("_")[0]]


def _tiny(name: str, num_classes: int = 1, seed: int = 0, **kw):
    return _family(name)(num_classes=num_classes, rngs=nnx.Rngs(seed), **TINY[name], **kw)


def _abstract(family: str, variant: str, num_classes: int = 1000, **kw):
    return _abstract_cached(family, variant, num_classes, tuple(sorted(kw.items())))


@functools.cache
def _abstract_cached(family, variant, num_classes, kw):
    return nnx.eval_shape(
        lambda: FAMILIES[family](variant, num_classes, rngs=nnx.Rngs(0), **dict(kw)))


# Jitted forwards: one compilation per model and mode, far cheaper than eager op dispatch.
_eval = nnx.jit(lambda model, x: model(x))
_eval_rngs = nnx.jit(lambda model, x, rngs: model(x, rngs=rngs))
_train = nnx.jit(lambda model, x, rngs: model(x, train=True, rngs=rngs))


def _n(state) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def _batch(n: int = 4, size: int = 32, seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), (n, size, size, 3), jnp.float32)


def _batch_stats(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


# --------------------------------------------------------------------------- param counts
def _count_id(case) -> str:
    family, variant, kw = (case.values if hasattr(case, "values") else case)[:3]
    return f"{family}{variant}{'_bn' if kw else ''}"


@pytest.mark.parametrize("family,variant,kw,n_params,n_stats", REFERENCE_COUNTS,
                         ids=[_count_id(c) for c in REFERENCE_COUNTS])
def test_param_counts_match_reference(family, variant, kw, n_params, n_stats):
    model = _abstract(family, variant, 1000, **kw)
    assert count_params(model) == n_params
    assert _n(nnx.state(model, nnx.BatchStat)) == n_stats


def test_keras_totals_include_bn_statistics():
    dn = _abstract("DenseNet", "121")
    assert count_params(dn) + _n(nnx.state(dn, nnx.BatchStat)) == 8_062_504
    xc = _abstract("Xception", "standard")
    assert count_params(xc) + _n(nnx.state(xc, nnx.BatchStat)) == 22_910_480


def _small_cnn_formula(size, filters, dense, k):
    f1, f2, f3 = filters
    h3, w3 = flat_size(size)
    return (27 * f1 + f1) + (9 * f1 * f2 + f2) + (9 * f2 * f3 + f3) + (
        h3 * w3 * f3 * dense + dense) + (dense * k + k)


@pytest.mark.parametrize("variant,size,filters,dense", [
    ("seed", 128, (32, 64, 128), 128),
    ("seed", 224, (32, 64, 128), 128),
    ("seed", 64, (32, 64, 128), 128),
    ("tiny", 32, (4, 8, 16), 16),
])
def test_small_cnn_param_count_formula(variant, size, filters, dense):
    model = nnx.eval_shape(lambda: SmallCNN(variant, 1, rngs=nnx.Rngs(0), image_size=size))
    assert count_params(model) == _small_cnn_formula(size, filters, dense, 1)
    if (variant, size) == ("seed", 128):
        assert count_params(model) == 3_304_769  # Keras model.summary() of the seed CNN
        assert model.num_features == 14 * 14 * 128


@pytest.mark.parametrize("family,variant,feat", [
    ("VGG", "16", None), ("DenseNet", "121", 1024), ("Xception", "standard", 2048),
])
def test_head_backbone_filters_partition_params(family, variant, feat):
    model = _abstract(family, variant, 1)
    cls = FAMILIES[family]
    head = _n(nnx.state(model, nnx.All(nnx.Param, cls.head_filter())))
    backbone = _n(nnx.state(model, nnx.All(nnx.Param, cls.backbone_filter())))
    assert head > 0 and backbone > 0
    assert head + backbone == count_params(model)
    if feat is not None:
        assert model.num_features == feat and head == feat + 1
    else:  # VGG: the whole 4096-4096-1 classifier is the head
        assert head == (25088 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 + 1)
    assert all(hasattr(model, name) for name in cls.HEAD_MODULES)


def _paths(model) -> set[str]:
    return {".".join(str(p) for p in path) for path, _ in nnx.to_flat_state(nnx.state(model))}


@pytest.mark.parametrize("family,variant,keys", [
    ("VGG", "16", ["block1_conv1.kernel", "block5_conv3.bias", "fc1.kernel", "fc2.bias",
                   "predictions.kernel"]),
    ("DenseNet", "121", ["conv0.kernel", "norm0.scale", "norm0.mean",
                         "denseblock1.0.conv1.kernel", "denseblock4.15.norm2.var",
                         "transition3.conv.kernel", "transition1.norm.bias", "norm5.scale",
                         "classifier.kernel", "classifier.bias"]),
    ("Xception", "standard", ["block1.conv1.kernel", "block1.conv2_bn.var",
                              "block2.sepconv1.depthwise.kernel",
                              "block4.sepconv2.pointwise.kernel", "block13.residual.kernel",
                              "block13.residual_bn.mean", "middle.7.sepconv3_bn.scale",
                              "block14.sepconv2.pointwise.kernel", "predictions.bias"]),
])
def test_state_paths_are_documented_names(family, variant, keys):
    paths = _paths(_abstract(family, variant, 1))
    for key in keys:
        assert key in paths, key


def test_no_bias_before_batchnorm():
    for model in (_abstract("DenseNet", "121"), _abstract("Xception", "standard")):
        for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param)):
            if path[-1] == "bias":
                # only BN biases and the Linear head have one
                assert path[0] in type(model).HEAD_MODULES or "norm" in str(path[-2]) or str(
                    path[-2]).endswith("_bn"), path


def test_xception_depthwise_kernel_shape():
    model = _abstract("Xception", "standard")
    assert model.block2.sepconv1.depthwise.kernel.shape == (3, 3, 1, 64)
    assert model.block2.sepconv1.pointwise.kernel.shape == (1, 1, 64, 128)


@pytest.mark.parametrize("family,variant,size,fmap", [
    ("Xception", "standard", 299, (10, 10, 2048)),  # Keras: block14_sepconv2_act 10x10x2048
    ("DenseNet", "121", 224, (7, 7, 1024)),
])
def test_feature_map_shapes_match_reference(family, variant, size, fmap):
    model = _abstract(family, variant, 1)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m.feature_map(x), model, x).shape == (1, *fmap)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("family,valid", [
    ("SmallCNN", "seed, tiny"), ("VGG", "tiny, 11, 13, 16, 19"),
    ("DenseNet", "tiny, 121, 169, 201, 161"), ("Xception", "tiny, standard"),
])
def test_unknown_variant_lists_valid_ones(family, valid):
    with pytest.raises(ValueError, match=f"valid variants: {valid}$"):
        FAMILIES[family]("bogus", 1, rngs=nnx.Rngs(0))


def test_small_cnn_rejects_other_image_sizes():
    model = _abstract("SmallCNN", "tiny", 1, image_size=32)
    with pytest.raises(ValueError, match="image_size"):
        model(jnp.zeros((1, 48, 48, 3)))
    with pytest.raises(ValueError, match="too small"):
        SmallCNN("tiny", rngs=nnx.Rngs(0), image_size=16)


# --------------------------------------------------------------------------- VGG pooling
def test_adaptive_pool_matches_torch_bins():
    m = adaptive_pool_matrix(10, 7)
    # torch bins for 10 -> 7: [0,2) [1,3) [2,5) [4,6) [5,8) [7,9) [8,10)
    bins = [(0, 2), (1, 3), (2, 5), (4, 6), (5, 8), (7, 9), (8, 10)]
    for i, (s, e) in enumerate(bins):
        expected = np.zeros(10)
        expected[s:e] = 1 / (e - s)
        np.testing.assert_allclose(m[i], expected, rtol=1e-6)
    x = _batch(2, 1)
    np.testing.assert_allclose(adaptive_avg_pool(x, 7), jnp.broadcast_to(x, (2, 7, 7, 3)))
    x = _batch(2, 7)
    assert adaptive_avg_pool(x, 7) is x
    x = _batch(2, 14)
    np.testing.assert_allclose(
        adaptive_avg_pool(x, 7), nnx.avg_pool(x, (2, 2), strides=(2, 2)), rtol=1e-5, atol=1e-6)


def test_vgg_accepts_any_input_size_from_32():
    model = _abstract("VGG", "16", 2)  # shapes only: nothing is computed
    for size in (32, 40, 224):
        x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
        assert nnx.eval_shape(lambda m, x: m(x), model, x).shape == (2, 2)
        assert nnx.eval_shape(lambda m, x: m.features(x), model, x).shape == (2, 25088)


# --------------------------------------------------------------------------- tiny forward
@pytest.mark.parametrize("name", sorted(TINY))
def test_tiny_forward_and_modes(name):
    model = _tiny(name, num_classes=3)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)  # covers all state
    del graphdef, params, stats
    x = _batch()
    stats_before = _batch_stats(model)
    y = _eval(model, x)
    assert y.shape == (4, 3) and bool(jnp.all(jnp.isfinite(y)))
    np.testing.assert_array_equal(_eval(model, x), y)  # eval deterministic
    for a, b in zip(stats_before, _batch_stats(model), strict=True):
        np.testing.assert_array_equal(a, b)  # eval leaves BN stats alone

    has_bn = len(stats_before) > 0
    has_dropout = name in ("SmallCNN", "VGG", "VGG_bn")
    if has_dropout:  # eval mode ignores the dropout rngs
        np.testing.assert_array_equal(_eval_rngs(model, x, nnx.Rngs(dropout=5)), y)
    yt1 = _train(model, x, nnx.Rngs(dropout=1))
    assert bool(jnp.all(jnp.isfinite(yt1)))
    stats_after = _batch_stats(model)
    if has_bn:
        assert any(not np.array_equal(a, b) for a, b in zip(stats_before, stats_after,
                                                            strict=True))
    yt2 = _train(model, x, nnx.Rngs(dropout=2))
    if has_dropout:
        assert not np.allclose(yt1, yt2)


# --------------------------------------------------------------------------- training step
@pytest.mark.parametrize("name", ["SmallCNN", "VGG_bn", "DenseNet", "Xception"])
def test_tiny_sgd_steps_reduce_loss(name):
    model = _tiny(name, num_classes=1)
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    params, stats = nnx.to_pure_dict(params), nnx.to_pure_dict(stats)
    x = _batch(8, seed=3)
    y = jnp.asarray([0, 1] * 4, jnp.float32)
    key = jax.random.key(7)  # fixed dropout masks: a deterministic objective

    @jax.jit
    def step(params, stats):
        def loss_fn(p):
            # The Rngs must be created inside the differentiated function: drawing a key
            # mutates its counter, which nnx forbids across trace levels.
            rngs = nnx.Rngs(dropout=key)
            m = nnx.merge(graphdef, p, stats)
            logits = m(x, train=True, rngs=rngs)
            loss = optax.sigmoid_binary_cross_entropy(logits[:, 0], y).mean()
            return loss, nnx.to_pure_dict(nnx.state(m, nnx.BatchStat))

        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        params = jax.tree.map(lambda p, g: p - 0.05 * g, params, grads)
        return params, new_stats, loss

    losses = []
    for _ in range(6):
        params, stats, loss = step(params, stats)
        losses.append(float(loss))
    assert all(np.isfinite(losses))
    assert losses[-1] < losses[0], losses
