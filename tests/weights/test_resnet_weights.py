"""ResNet importers (torchvision / timm state dicts, Hugging Face ResNet): mapping, errors,
head replacement, and eval-mode logit parity with transformers' ``ResNetForImageClassification``.
"""

import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deepfake_jax.models.resnet import ResNet
from deepfake_jax.weights import resnet as rw
from deepfake_jax.weights.common import flatten

ATOL = 1e-4


def _flat(model):
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(state)).items()}


def _export_torchvision(model):
    """Our model -> torchvision-style numpy state dict (for the torch-free tests)."""
    out = {}
    for p, v in _flat(model).items():
        key, kind = rw.torchvision_key(p)
        v = v.T if kind == "linear" else v.transpose(3, 2, 0, 1) if kind == "conv" else v
        out[key] = np.ascontiguousarray(v)
        if key.endswith("running_var"):
            out[key.replace("running_var", "num_batches_tracked")] = np.array(7, np.int64)
    return out


def _model(variant, num_classes, seed=0, **kw):
    """A concrete ResNet with random numpy values, BN stats included (so BN is not the
    identity), built without nnx's per-op random init (slow to compile on a busy CPU)."""
    graphdef, state = nnx.split(nnx.eval_shape(
        lambda: ResNet(variant, num_classes, rngs=nnx.Rngs(0), **kw)))
    rng = np.random.default_rng(seed)

    def fill(s):
        if len(s.shape) > 1:  # kernels: He-normal in HWIO / (in, out)
            v = rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
        else:  # BN scale / bias / mean / var, fc bias: positive, around 1
            v = rng.uniform(0.5, 1.5, s.shape)
        return jnp.asarray(v.astype(s.dtype))

    return nnx.merge(graphdef, jax.tree.map(fill, state))


# ----------------------------------------------------------------------------- no torch
def test_torchvision_key_names():
    assert rw.torchvision_key(("conv1", "kernel")) == ("conv1.weight", "conv")
    assert rw.torchvision_key(("bn1", "var")) == ("bn1.running_var", "raw")
    assert rw.torchvision_key(("layer1", 0, "downsample_conv", "kernel")) == (
        "layer1.0.downsample.0.weight", "conv")
    assert rw.torchvision_key(("layer4", 2, "downsample_bn", "scale"))[0] == (
        "layer4.2.downsample.1.weight")
    assert rw.torchvision_key(("fc", "kernel")) == ("fc.weight", "linear")
    assert rw.hf_key(("layer3", 5, "bn2", "mean"))[0] == (
        "resnet.encoder.stages.2.layers.5.layer.1.normalization.running_mean")
    assert rw.hf_key(("layer2", 0, "downsample_conv", "kernel"))[0] == (
        "resnet.encoder.stages.1.layers.0.shortcut.convolution.weight")
    assert rw.hf_key(("conv1", "kernel"))[0] == "resnet.embedder.embedder.convolution.weight"
    assert rw.hf_key(("fc", "bias"))[0] == "classifier.1.bias"
    # torchvision resnet50's state_dict has 320 entries: 161 params + 159 BN buffers
    model = nnx.eval_shape(lambda: ResNet("50", 1000, rngs=nnx.Rngs(0)))
    assert len(_export_torchvision_abstract(model)) == 320


def _export_torchvision_abstract(model):
    keys = set()
    for p in flatten(nnx.to_pure_dict(nnx.state(model, nnx.Any(nnx.Param,
                                                                     nnx.BatchStat)))):
        key = rw.torchvision_key(p)[0]
        keys.add(key)
        if key.endswith("running_var"):
            keys.add(key.replace("running_var", "num_batches_tracked"))
    return keys


def test_torchvision_safetensors_roundtrip_head_kept_abstract(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file

    src = _model("tiny", 3, seed=1)
    file = str(tmp_path / "r.safetensors")
    save_file(_export_torchvision(src), file)

    dst = _model("tiny", 3, seed=2)
    before = _flat(dst)
    state = rw.load_torchvision_resnet(dst, file)
    for k, v in _flat(dst).items():  # the model itself is untouched
        np.testing.assert_array_equal(v, before[k])
    nnx.update(dst, state)
    for k, v in _flat(src).items():  # params AND batch stats
        np.testing.assert_array_equal(_flat(dst)[k], v)
    params, stats = nnx.split_state(state, nnx.Param, nnx.BatchStat)
    assert "mean" in stats["bn1"] and "scale" in params["bn1"]
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    np.testing.assert_array_equal(dst(x), src(x))

    # num_classes=1: checkpoint head (3 classes) does not fit -> head kept, rest loaded
    one = _model("tiny", 1, seed=3)
    head = np.asarray(one.fc.kernel[...])
    nnx.update(one, rw.load_torchvision_resnet(one, file))
    np.testing.assert_array_equal(one.fc.kernel[...], head)
    np.testing.assert_array_equal(one.features(x), src.features(x))

    # headless state dict (e.g. timm num_classes=0): head kept as well
    headless = {k: v for k, v in _export_torchvision(src).items() if not k.startswith("fc.")}
    nnx.update(one, rw.load_torchvision_resnet(one, headless))
    np.testing.assert_array_equal(one.fc.kernel[...], head)

    abstract = nnx.eval_shape(lambda: ResNet("tiny", 3, rngs=nnx.Rngs(4)))
    loaded = rw.load_torchvision_resnet(abstract, file)
    np.testing.assert_array_equal(loaded["bn1"]["var"][...], src.bn1.var[...])


def test_missing_unexpected_and_shape_errors():
    model = _model("tiny", 3)
    sd = _export_torchvision(model)
    del sd["layer2.0.bn1.running_mean"]
    sd["layer2.0.conv3.weight"] = np.zeros((32, 32, 1, 1), np.float32)
    sd["layer3.0.conv1.weight"] = np.zeros((64, 32, 5, 5), np.float32)
    with pytest.raises(ValueError) as e:
        rw.load_torchvision_resnet(model, sd)
    msg = str(e.value)
    assert "missing keys" in msg and "layer2.0.bn1.mean (layer2.0.bn1.running_mean)" in msg
    assert "unexpected keys" in msg and "layer2.0.conv3.weight" in msg
    assert "shape mismatches" in msg and "layer3.0.conv1.weight" in msg
    # another architecture entirely (resnet "50" weights into "18")
    r18 = nnx.eval_shape(lambda: ResNet("18", 1, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="(?s)missing keys.*shape mismatches.*more"):
        rw.load_torchvision_resnet(r18, _export_torchvision(model))


def test_pth_needs_torch_message(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *a, **k):
        if name == "torch":
            raise ImportError("no torch")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="needs PyTorch"):
        rw.read_torchvision_state_dict(str(tmp_path / "x.pth"))


def test_hf_config_checks():
    model = nnx.eval_shape(lambda: ResNet("50", 1, width=16, rngs=nnx.Rngs(0)))
    good = dict(layer_type="bottleneck", depths=[3, 4, 6, 3], embedding_size=16,
                hidden_sizes=[64, 128, 256, 512], downsample_in_bottleneck=False,
                downsample_in_first_stage=False, hidden_act="relu", num_channels=3)
    assert rw.check_hf_config(model, good) == []
    for field, value in [("downsample_in_bottleneck", True), ("downsample_in_first_stage", True),
                         ("hidden_act", "gelu"), ("depths", [3, 4, 23, 3]),
                         ("hidden_sizes", [256, 512, 1024, 2048]), ("layer_type", "basic")]:
        problems = rw.check_hf_config(model, {**good, field: value})
        assert len(problems) == 1 and field in problems[0], (field, problems)
    assert rw.resnet_kwargs_from_hf_config({**good, "num_labels": 2}) == dict(
        variant="50", width=16, num_classes=2)
    with pytest.raises(ValueError, match="depths"):
        rw.resnet_kwargs_from_hf_config({**good, "depths": [1, 2, 3, 4]})


# ----------------------------------------------------------------------------- torch parity
def _hf_model(**cfg):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    hf = transformers.ResNetForImageClassification(transformers.ResNetConfig(**cfg))
    with torch.no_grad():  # BN stats from a real batch, then perturbed: BN is not the identity
        bns = [m for m in hf.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.1)
            m.momentum = None
            m.reset_running_stats()
        hf.train()
        hf(torch.randn(4, 3, 64, 64))
        hf.eval()
        for m in bns:
            m.running_mean.add_(0.1 * torch.randn_like(m.running_mean))
            m.running_var.mul_(torch.empty_like(m.running_var).uniform_(0.8, 1.2))
        # logits of a few units (as a trained net's) instead of tens: the fixed 1e-4 tolerance
        # then measures mapping errors (O(1) when anything is mis-mapped), not fp32 rounding
        hf.classifier[1].weight.mul_(0.2)
    return hf


_BOTTLENECK = dict(embedding_size=16, hidden_sizes=[64, 128, 256, 512], depths=[3, 4, 6, 3],
                   layer_type="bottleneck", num_labels=5)
_BASIC = dict(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1],
              layer_type="basic", num_labels=5)


@pytest.fixture(scope="module")
def hf_bottleneck(tmp_path_factory):
    """A ResNet-50-layout HF model at base width 16 (same depths / strides / key set)."""
    hf = _hf_model(**_BOTTLENECK)
    folder = str(tmp_path_factory.mktemp("hf_resnet50_w16"))
    hf.save_pretrained(folder)
    return hf, folder


def _logits(hf, x_nchw):
    import torch

    with torch.no_grad():
        return hf(torch.from_numpy(x_nchw)).logits.numpy()


def _x(seed=0, n=2, size=64):
    return np.random.default_rng(seed).standard_normal((n, 3, size, size), np.float32)


def _ours(model, x_nchw, **kw):
    return np.asarray(model(jnp.asarray(x_nchw.transpose(0, 2, 3, 1)), **kw))


def test_hf_bottleneck_parity(hf_bottleneck):
    hf, folder = hf_bottleneck
    assert "resnet.encoder.stages.3.layers.2.layer.2.normalization.running_var" in (
        hf.state_dict())
    x = _x()
    ref = _logits(hf, x)
    kwargs = rw.resnet_kwargs_from_hf_config(json.load(open(f"{folder}/config.json")))
    assert kwargs == dict(variant="50", width=16, num_classes=5)
    model = rw.create_resnet_from_hf(folder, rngs=nnx.Rngs(0))  # abstract build + fill
    assert model.variant == "50" and model.num_classes == 5
    diff = np.abs(_ours(model, x) - ref).max()
    print(f"max abs logit diff: {diff:.2e}")
    assert diff <= ATOL, diff

    # a stride in the first 1x1 (downsample_in_bottleneck) is another net: refused by name
    cfg = json.load(open(f"{folder}/config.json"))
    with pytest.raises(ValueError, match="downsample_in_bottleneck"):
        rw.load_hf_resnet(model, folder, config={**cfg, "downsample_in_bottleneck": True})


def test_torchvision_parity_from_hf_weights(hf_bottleneck, tmp_path):
    """HF weights renamed to torchvision's state_dict names (.safetensors and .pth)."""
    import torch
    from safetensors.numpy import save_file

    hf, _ = hf_bottleneck
    renames = [
        (r"^resnet\.embedder\.embedder\.convolution\.", "conv1."),
        (r"^resnet\.embedder\.embedder\.normalization\.", "bn1."),
        (r"^resnet\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.convolution\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.0."),
        (r"^resnet\.encoder\.stages\.(\d)\.layers\.(\d+)\.shortcut\.normalization\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.downsample.1."),
        (r"^resnet\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.convolution\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.conv{int(m[3]) + 1}."),
        (r"^resnet\.encoder\.stages\.(\d)\.layers\.(\d+)\.layer\.(\d)\.normalization\.",
         lambda m: f"layer{int(m[1]) + 1}.{m[2]}.bn{int(m[3]) + 1}."),
        (r"^classifier\.1\.", "fc."),
    ]
    sd = {}
    for k, v in hf.state_dict().items():
        for pattern, repl in renames:
            k = re.sub(pattern, repl, k)
        sd[k] = v
    assert len(sd) == 320  # as torchvision's resnet50().state_dict()
    for key in ("conv1.weight", "bn1.num_batches_tracked", "layer1.0.downsample.0.weight",
                "layer3.5.conv2.weight", "layer4.2.bn3.running_var", "fc.bias"):
        assert key in sd, key

    x = _x(1)
    ref = _logits(hf, x)
    model = _model("50", 5, width=16)
    file = str(tmp_path / "tv.safetensors")
    save_file({k: v.numpy() for k, v in sd.items()}, file)
    nnx.update(model, rw.load_torchvision_resnet(model, file))
    diff = np.abs(_ours(model, x) - ref).max()
    print(f"max abs logit diff: {diff:.2e}")
    assert diff <= ATOL, diff

    pth = str(tmp_path / "tv.pth")  # DDP prefix + training-checkpoint wrapper
    torch.save({"state_dict": {f"module.{k}": v for k, v in sd.items()}, "epoch": 3}, pth)
    other = nnx.eval_shape(lambda: ResNet("50", 5, width=16, rngs=nnx.Rngs(1)))
    other = nnx.merge(nnx.graphdef(other), rw.load_torchvision_resnet(other, pth))
    for k, v in _flat(model).items():
        np.testing.assert_array_equal(_flat(other)[k], v)


def test_hf_basic_parity_and_head_replacement(tmp_path):
    torch = pytest.importorskip("torch")

    hf = _hf_model(**_BASIC)
    hf.save_pretrained(str(tmp_path))
    x = _x(2)
    model = _model("tiny", 5)
    nnx.update(model, rw.load_hf_resnet(model, str(tmp_path)))
    diff = np.abs(_ours(model, x) - _logits(hf, x)).max()
    print(f"max abs logit diff: {diff:.2e}")
    assert diff <= ATOL, diff

    one = _model("tiny", 1, seed=1)  # 5-class checkpoint -> binary head kept random
    head = np.asarray(one.fc.kernel[...])
    nnx.update(one, rw.load_hf_resnet(one, str(tmp_path)))
    np.testing.assert_array_equal(one.fc.kernel[...], head)
    with torch.no_grad():
        pooled = hf.resnet(torch.from_numpy(x)).pooler_output.flatten(1).numpy()
    feats = np.asarray(one.features(jnp.asarray(x.transpose(0, 2, 3, 1))))
    np.testing.assert_allclose(feats, pooled, atol=ATOL)

    # headless ResNetModel checkpoint (no "resnet." prefix, no classifier)
    hf.resnet.save_pretrained(str(tmp_path / "base"))
    nnx.update(one, rw.load_hf_resnet(one, str(tmp_path / "base")))
    np.testing.assert_array_equal(one.fc.kernel[...], head)

    wrong = nnx.eval_shape(lambda: ResNet("18", 5, rngs=nnx.Rngs(0)))
    with pytest.raises(ValueError, match="depths"):
        rw.load_hf_resnet(wrong, str(tmp_path))
