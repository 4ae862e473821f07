"""Tests for the ResNet family and the model registry (CPU, fast: big models via eval_shape)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deepfake_jax.models import MODEL_REGISTRY, ResNet, count_params, create_model
from deepfake_jax.models.resnet import VARIANTS, stem_max_pool

TORCHVISION_PARAMS = {
    "18": 11_689_512,
    "34": 21_797_672,
    "50": 25_557_032,
    "101": 44_549_160,
    "152": 60_192_808,
}


def _abstract(variant: str, num_classes: int = 1000, **kw) -> ResNet:
    return nnx.eval_shape(lambda: ResNet(variant, num_classes, rngs=nnx.Rngs(0), **kw))


def _tiny(num_classes: int = 3, seed: int = 0, **kw) -> ResNet:
    return ResNet("tiny", num_classes, rngs=nnx.Rngs(seed), **kw)


def _batch(shape=(2, 32, 32, 3), seed: int = 1) -> jax.Array:
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def _batch_stats(model) -> list[np.ndarray]:
    return [np.asarray(v) for v in jax.tree.leaves(nnx.state(model, nnx.BatchStat))]


# --------------------------------------------------------------------------- param counts
@pytest.mark.parametrize("variant", sorted(TORCHVISION_PARAMS))
def test_param_counts_match_torchvision(variant):
    assert count_params(_abstract(variant, 1000)) == TORCHVISION_PARAMS[variant]


@pytest.mark.parametrize("variant,feat", [("18", 512), ("50", 2048)])
def test_binary_head_param_count(variant, feat):
    model = _abstract(variant, 1)
    assert model.num_features == feat
    head = nnx.state(model, nnx.All(nnx.Param, ResNet.head_filter()))
    assert sum(x.size for x in jax.tree.leaves(head)) == feat + 1
    backbone = nnx.state(model, nnx.All(nnx.Param, ResNet.backbone_filter()))
    n_backbone = sum(x.size for x in jax.tree.leaves(backbone))
    assert n_backbone == TORCHVISION_PARAMS[variant] - (feat * 1000 + 1000)
    assert count_params(model) == n_backbone + feat + 1


def test_state_paths_mirror_torchvision_names():
    model = _abstract("50", 1)
    paths = {".".join(str(p) for p in path) for path, _ in nnx.to_flat_state(nnx.state(model))}
    for key in [
        "conv1.kernel",
        "bn1.scale",
        "bn1.bias",
        "bn1.mean",
        "bn1.var",
        "layer1.0.conv3.kernel",
        "layer1.0.bn3.scale",
        "layer1.0.downsample_conv.kernel",
        "layer1.0.downsample_bn.var",
        "layer4.2.bn2.mean",
        "fc.kernel",
        "fc.bias",
    ]:
        assert key in paths, key
    assert "layer1.1.downsample_conv.kernel" not in paths
    # no bias before any BatchNorm
    assert not [p for p in paths if p.endswith(".bias") and "conv" in p.split(".")[-2]]
    assert nnx.state(model).fc.kernel.shape == (2048, 1)
    assert nnx.state(model).conv1.kernel.shape == (7, 7, 3, 64)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("hw,out_hw", [(224, 7), (64, 2)])
def test_feature_map_shape_resnet50(hw, out_hw):
    graphdef, state = nnx.split(_abstract("50", 1))

    def fwd(state, x):
        model = nnx.merge(graphdef, state)
        return model.feature_map(x), model(x)

    fmap, logits = jax.eval_shape(fwd, state, jax.ShapeDtypeStruct((2, hw, hw, 3), jnp.float32))
    assert fmap.shape == (2, out_hw, out_hw, 2048)
    assert logits.shape == (2, 1)


def test_tiny_forward_shape_finite_deterministic():
    model = _tiny(num_classes=3)
    x = _batch()
    out = model(x)
    assert out.shape == (2, 3)
    assert np.all(np.isfinite(np.asarray(out)))
    np.testing.assert_array_equal(np.asarray(out), np.asarray(model(x)))
    feats = model.features(x)
    assert feats.shape == (2, model.num_features)
    assert model.feature_map(x).shape == (2, 1, 1, model.num_features)
    np.testing.assert_allclose(np.asarray(model.head(feats)), np.asarray(out), rtol=1e-6)


def test_bf16_compute_float32_params():
    model = _tiny(dtype=jnp.bfloat16)
    out = model(_batch())
    assert out.dtype == jnp.bfloat16
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


# --------------------------------------------------------------------------- batch norm
def test_train_updates_batch_stats_eval_does_not():
    model = _tiny()
    x = _batch()
    before = _batch_stats(model)
    model(x, train=False)
    for a, b in zip(before, _batch_stats(model), strict=True):
        np.testing.assert_array_equal(a, b)
    model(x, train=True)
    after = _batch_stats(model)
    assert any(not np.array_equal(a, b) for a, b in zip(before, after, strict=True))


def test_bn_matches_manual_numpy():
    model = _tiny()
    bn = model.bn1
    c = bn.mean.shape[0]
    rng = np.random.default_rng(0)
    mean0 = rng.normal(size=c).astype(np.float32)
    var0 = rng.uniform(0.5, 2.0, size=c).astype(np.float32)
    gamma = rng.normal(size=c).astype(np.float32)
    beta = rng.normal(size=c).astype(np.float32)
    bn.mean[...] = jnp.asarray(mean0)
    bn.var[...] = jnp.asarray(var0)
    bn.scale[...] = jnp.asarray(gamma)
    bn.bias[...] = jnp.asarray(beta)
    x = rng.normal(size=(4, 5, 5, c)).astype(np.float32) * 3 + 1

    # eval: running statistics, eps 1e-5
    y = np.asarray(bn(jnp.asarray(x), use_running_average=True))
    np.testing.assert_allclose(y, (x - mean0) / np.sqrt(var0 + 1e-5) * gamma + beta, atol=1e-5)

    # train: batch statistics (biased var); running = 0.9 * old + 0.1 * batch (torch m=0.1)
    y = np.asarray(bn(jnp.asarray(x), use_running_average=False))
    mu, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    np.testing.assert_allclose(y, (x - mu) / np.sqrt(var + 1e-5) * gamma + beta, atol=1e-4)
    np.testing.assert_allclose(np.asarray(bn.mean[...]), 0.9 * mean0 + 0.1 * mu, atol=1e-5)
    np.testing.assert_allclose(np.asarray(bn.var[...]), 0.9 * var0 + 0.1 * var, atol=1e-4)
    assert bn.epsilon == 1e-5 and bn.momentum == 0.9


# --------------------------------------------------------------------------- padding
def test_stem_conv_padding_matches_torch():
    """Corner pixels of the 7x7/2 stem see exactly 3 rows/cols of zero padding on each side."""
    model = _tiny()
    conv = model.conv1
    x = np.random.default_rng(0).normal(size=(1, 16, 16, 3)).astype(np.float32)
    y = np.asarray(conv(jnp.asarray(x)))
    assert y.shape == (1, 8, 8, 16)
    k = np.asarray(conv.kernel[...])  # HWIO
    xp = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))  # torch: symmetric padding 3
    for i, j in [(0, 0), (0, 7), (7, 7), (3, 5)]:
        patch = xp[0, 2 * i : 2 * i + 7, 2 * j : 2 * j + 7, :]
        ref = np.einsum("hwc,hwco->o", patch, k)
        np.testing.assert_allclose(y[0, i, j], ref, rtol=1e-4, atol=1e-4)


def test_stem_max_pool_pads_with_neg_inf():
    x = -1.0 - jnp.arange(2 * 8 * 8, dtype=jnp.float32).reshape(1, 8, 8, 2)  # all negative
    y = np.asarray(stem_max_pool(x))
    assert y.shape == (1, 4, 4, 2)
    xn = np.asarray(x)
    xp = np.pad(xn, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    ref = np.stack(
        [
            np.stack(
                [xp[0, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(0, 1)) for j in range(4)]
            )
            for i in range(4)
        ]
    )[None]
    np.testing.assert_array_equal(y, ref)
    assert y.max() < 0


# --------------------------------------------------------------------------- zero init
@pytest.mark.parametrize("variant", ["tiny"])
def test_zero_init_last_bn_gives_identity_residual(variant):
    model = ResNet(variant, 1, rngs=nnx.Rngs(0), zero_init_last_bn=True)
    x = _batch((2, 8, 8, 16))
    plain = model.layer1[0]  # no downsample: out == relu(x)
    assert plain.downsample_conv is None
    np.testing.assert_allclose(np.asarray(plain(x)), np.asarray(jax.nn.relu(x)), atol=1e-6)
    down = model.layer2[0]  # stride 2 + channel change: out == relu(shortcut(x))
    assert down.downsample_conv is not None
    for train in (False, True):
        ref = jax.nn.relu(down.shortcut(x, train=train))
        np.testing.assert_allclose(np.asarray(down(x, train=train)), np.asarray(ref), atol=1e-5)
    assert np.all(np.asarray(model.layer4[0].bn2.scale[...]) == 0)
    assert np.all(np.asarray(model.bn1.scale[...]) == 1)
    assert np.all(np.asarray(model.layer4[0].bn1.scale[...]) == 1)


def test_zero_init_last_bn_bottleneck_values():
    from deepfake_jax.models.resnet import Bottleneck

    block = Bottleneck(
        16,
        4,
        1,
        rngs=nnx.Rngs(0),
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        momentum=0.9,
        zero_last=True,
    )
    assert np.all(np.asarray(block.bn3.scale[...]) == 0)
    assert np.all(np.asarray(block.bn2.scale[...]) == 1)
    x = _batch((1, 4, 4, 16))
    np.testing.assert_allclose(np.asarray(block(x)), np.asarray(jax.nn.relu(x)), atol=1e-6)


# --------------------------------------------------------------------------- registry
def test_registry_create_and_errors():
    assert "resnet" in MODEL_REGISTRY
    model = create_model("resnet", variant="tiny", num_classes=2, rngs=nnx.Rngs(0))
    assert isinstance(model, ResNet) and model.fc.out_features == 2
    with pytest.raises(ValueError, match="resnet"):
        create_model("nope", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError) as exc:
        create_model("resnet", variant="77", rngs=nnx.Rngs(0))
    for v in VARIANTS:
        assert v in str(exc.value)


def test_count_params_tiny_concrete():
    model = _tiny(num_classes=1)
    manual = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    assert count_params(model) == manual
    assert 100_000 < count_params(model) < 500_000


def test_small_stem_keeps_resolution_and_names():
    """stem="small": one 3x3/1 conv, no pooling -> the first block sees the full image."""
    model = ResNet("18", 1, stem="small", rngs=nnx.Rngs(0))
    assert model.conv1.kernel.shape == (3, 3, 3, 64)
    # 11,689,512 - 1000-class head (513,000) + 1-logit head (513) - 7x7 stem + 3x3 stem.
    assert count_params(model) == 11_689_512 - 513_000 + 513 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64
    fmap = model.feature_map(jnp.zeros((1, 32, 32, 3)))
    assert fmap.shape == (1, 4, 4, 512)  # only the three stride-2 stages: 32 / 8
    with pytest.raises(ValueError, match="valid stems: imagenet, small"):
        ResNet("tiny", 1, stem="cifar", rngs=nnx.Rngs(0))
