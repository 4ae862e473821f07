"""BiSeNet (face-parsing.PyTorch) model + importer: parity with a PyTorch transcription of the
reference, parameter count, import errors, head replacement, sharded training of the tiny variant.
"""

import functools
import logging
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from deepfake_jax.models import MODEL_REGISTRY, count_params, create_model
from deepfake_jax.models.bisenet import (
    BiSeNet,
    align_corners_matrix,
    bilinear_resize_align_corners,
    nearest_resize,
    torch_nearest_indices,
)
from deepfake_jax.training import sharding
from deepfake_jax.weights import bisenet as bw
from deepfake_jax.weights import load_pretrained
from deepfake_jax.weights.common import AbstractHeadError, flatten, to_ours, unflatten

FULL_PARAMS = 13_300_416  # BiSeNet("resnet18", 19): nnx.Param entries == the torch reference's
ATOL = 1e-4
FAST_COMPILE = {"xla_backend_optimization_level": 0}  # fewer LLVM passes: tests compile faster
TINY = dict(width=8, mid=16)  # the "tiny" variant's widths, for the torch reference


# ----------------------------------------------------------------------------- torch reference
def _torch_bisenet(num_classes=19, width=64, mid=128, seed=0):
    """face-parsing.PyTorch's BiSeNet (model.py + resnet.py), transcribed with its module names,
    widths as parameters; random weights and non-trivial BatchNorm statistics, eval mode."""
    torch = pytest.importorskip("torch", reason="PyTorch is needed for the reference model")
    from torch import nn
    from torch.nn import functional as F

    class ConvBNReLU(nn.Module):
        def __init__(self, cin, cout, k, pad):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=1, padding=pad, bias=False)
            self.bn = nn.BatchNorm2d(cout)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, stride=1, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if cin != cout or stride != 1:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            r = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
            return F.relu(r + (x if self.downsample is None else self.downsample(x)))

    class Resnet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            cin = width
            for i in range(4):
                cout = width * 2**i
                stride = 1 if i == 0 else 2
                setattr(self, f"layer{i + 1}", nn.Sequential(
                    BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
                cin = cout

        def forward(self, x):
            x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
            feat8 = self.layer2(self.layer1(x))
            feat16 = self.layer3(feat8)
            return feat8, feat16, self.layer4(feat16)

    class AttentionRefinementModule(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv = ConvBNReLU(cin, cout, 3, 1)
            self.conv_atten = nn.Conv2d(cout, cout, 1, bias=False)
            self.bn_atten = nn.BatchNorm2d(cout)

        def forward(self, x):
            feat = self.conv(x)
            atten = F.adaptive_avg_pool2d(feat, output_size=(1, 1))
            return feat * torch.sigmoid(self.bn_atten(self.conv_atten(atten)))

    class ContextPath(nn.Module):
        def __init__(self):
            super().__init__()
            self.resnet = Resnet18()
            self.arm16 = AttentionRefinementModule(4 * width, mid)
            self.arm32 = AttentionRefinementModule(8 * width, mid)
            self.conv_head32 = ConvBNReLU(mid, mid, 3, 1)
            self.conv_head16 = ConvBNReLU(mid, mid, 3, 1)
            self.conv_avg = ConvBNReLU(8 * width, mid, 1, 0)

        def forward(self, x):
            feat8, feat16, feat32 = self.resnet(x)
            avg = self.conv_avg(F.adaptive_avg_pool2d(feat32, output_size=(1, 1)))
            avg_up = F.interpolate(avg, feat32.shape[2:], mode="nearest")
            feat32_up = F.interpolate(self.arm32(feat32) + avg_up, feat16.shape[2:],
                                      mode="nearest")
            feat32_up = self.conv_head32(feat32_up)
            feat16_up = F.interpolate(self.arm16(feat16) + feat32_up, feat8.shape[2:],
                                      mode="nearest")
            return feat8, self.conv_head16(feat16_up), feat32_up

    class FeatureFusionModule(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.convblk = ConvBNReLU(cin, cout, 1, 0)
            self.conv1 = nn.Conv2d(cout, cout // 4, 1, bias=False)
            self.conv2 = nn.Conv2d(cout // 4, cout, 1, bias=False)

        def forward(self, fsp, fcp):
            feat = self.convblk(torch.cat([fsp, fcp], dim=1))
            atten = F.adaptive_avg_pool2d(feat, output_size=(1, 1))
            atten = torch.sigmoid(self.conv2(F.relu(self.conv1(atten))))
            return feat * atten + feat

    class BiSeNetOutput(nn.Module):
        def __init__(self, cin, cmid, n):
            super().__init__()
            self.conv = ConvBNReLU(cin, cmid, 3, 1)
            self.conv_out = nn.Conv2d(cmid, n, 1, bias=False)

        def forward(self, x):
            return self.conv_out(self.conv(x))

    class TorchBiSeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.cp = ContextPath()
            self.ffm = FeatureFusionModule(2 * width + mid, 2 * mid)
            self.conv_out = BiSeNetOutput(2 * mid, 2 * mid, num_classes)
            self.conv_out16 = BiSeNetOutput(mid, mid // 2, num_classes)
            self.conv_out32 = BiSeNetOutput(mid, mid // 2, num_classes)

        def forward(self, x):
            size = x.shape[2:]
            feat8, cp8, cp16 = self.cp(x)
            outs = (self.conv_out(self.ffm(feat8, cp8)), self.conv_out16(cp8),
                    self.conv_out32(cp16))
            return tuple(F.interpolate(o, size, mode="bilinear", align_corners=True)
                         for o in outs)

    torch.manual_seed(seed)
    net = TorchBiSeNet()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for m in bns:
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_(0.0, 0.2)
            m.momentum = None  # cumulative average: running stats = this batch's statistics
        # Running statistics from one batch in train mode: every BN has its own non-trivial
        # mean / var, and activations stay O(1) in eval mode (random stats would not be).
        net.train()(torch.randn(4, 3, 64, 64))
        for m in bns:
            m.momentum = 0.1
        for head in (net.conv_out, net.conv_out16, net.conv_out32):
            head.conv_out.weight.mul_(0.25)  # logits of a few units: 1e-4 is not a loose bound
    return net.eval()


def _save(torch_net, path, drop=(), replace=None):
    import torch

    sd = {k: v for k, v in torch_net.state_dict().items() if k not in drop}
    sd.update(replace or {})
    torch.save(sd, path)
    return str(path)


def _abstract(variant, num_classes):
    return nnx.eval_shape(lambda: BiSeNet(variant, num_classes, rngs=nnx.Rngs(0)))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """The tiny torch reference (19 classes) and its ``torch.save``d state dict."""
    net = _torch_bisenet(19, **TINY)
    return net, _save(net, tmp_path_factory.mktemp("bisenet") / "tiny.pth")


@pytest.fixture(scope="module")
def tiny_state():
    """A concrete tiny BiSeNet (5 classes) filled from numpy: nnx's random init compiles
    slowly on a busy CPU (over a minute under jit). Kernels He-normal, BN as initialised."""
    graphdef, state = nnx.split(_abstract("tiny", 5))
    rng = np.random.default_rng(0)

    def fill(leaf, s):
        if leaf == "kernel":
            v = rng.standard_normal(s.shape) * np.sqrt(2.0 / np.prod(s.shape[:-1]))
        else:
            v = np.ones(s.shape) if leaf in ("scale", "var") else np.zeros(s.shape)
        return jnp.asarray(v, s.dtype)

    flat = flatten(nnx.to_pure_dict(state))
    nnx.replace_by_pure_dict(state, unflatten({p: fill(p[-1], s) for p, s in flat.items()}))
    return graphdef, state


# ----------------------------------------------------------------------------- parity
def test_full_model_eval_parity_with_torch_reference(tmp_path):
    torch = pytest.importorskip("torch", reason="PyTorch is needed for the reference model")
    net = _torch_bisenet(19)
    path = _save(net, tmp_path / "79999_iter.pth")
    abstract = _abstract("resnet18", 19)
    # (2) parameter count: ours == the torch reference's == the documented literal
    assert count_params(abstract) == sum(p.numel() for p in net.parameters()) == FULL_PARAMS
    model = nnx.merge(nnx.graphdef(abstract), bw.load_face_parsing_bisenet(abstract, path))

    # non-square on purpose: the resizes handle H and W separately
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 128)).astype(np.float32)
    with torch.no_grad():
        want = [o.numpy().transpose(0, 2, 3, 1) for o in net(torch.from_numpy(x))]
    graphdef, state = nnx.split(model)

    def forward(st, v):
        m = nnx.merge(graphdef, st, copy=True)
        return m.all_heads(v), m(v)

    got, main = jax.jit(forward, compiler_options=FAST_COMPILE)(state, x.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(np.asarray(main), np.asarray(got[0]), atol=1e-6)  # model(x)
    for name, g, w in zip(("out", "aux16", "aux32"), got, want, strict=True):
        assert g.shape == w.shape == (2, 96, 128, 19)
        err = float(np.max(np.abs(np.asarray(g) - w)))
        assert err < ATOL, f"{name}: max abs diff {err:.2e} (max |logit| {np.abs(w).max():.2f})"
        assert np.abs(w).max() > 0.1  # the comparison is not between near-zero maps


def test_resampling_matches_torch_interpolate():
    torch = pytest.importorskip("torch", reason="PyTorch is needed for the reference")
    from torch.nn import functional as F

    x = np.random.default_rng(1).standard_normal((1, 2, 5, 7)).astype(np.float32)
    tx, nhwc = torch.from_numpy(x), x.transpose(0, 2, 3, 1)
    for size in [(10, 14), (13, 3), (5, 7), (1, 1), (17, 9), (3, 6)]:
        # the numpy rules behind the resizes, on every size (cheap) ...
        want = F.interpolate(tx, size, mode="nearest").numpy().transpose(0, 2, 3, 1)
        rows, cols = (torch_nearest_indices(n, m) for n, m in zip(x.shape[2:], size, strict=True))
        np.testing.assert_array_equal(nhwc[:, rows][:, :, cols], want, err_msg=f"nearest {size}")
        want = F.interpolate(tx, size, mode="bilinear", align_corners=True).numpy()
        mh, mw = (align_corners_matrix(n, m) for n, m in zip(x.shape[2:], size, strict=True))
        np.testing.assert_allclose(np.einsum("hH,nHWc,wW->nhwc", mh, nhwc, mw),
                                   want.transpose(0, 2, 3, 1), atol=1e-6,
                                   err_msg=f"bilinear {size}")
    # ... and the jax functions on one non-trivial size
    got = nearest_resize(jnp.asarray(nhwc), (13, 3))
    want = F.interpolate(tx, (13, 3), mode="nearest").numpy().transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(np.asarray(got), want)
    got = bilinear_resize_align_corners(jnp.asarray(nhwc), (17, 9))
    want = F.interpolate(tx, (17, 9), mode="bilinear", align_corners=True).numpy()
    np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 3, 1), atol=1e-6)


def test_bilinear_resize_gradient_matches_torch():
    """The resize runs as gathers with a hand-written gradient (a gather from the outputs
    that read each input): values and input gradients against torch autograd, up and down."""
    torch = pytest.importorskip("torch", reason="PyTorch is needed for the reference")
    from torch.nn import functional as F

    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 8, 12)).astype(np.float32)
    for size in [(16, 24), (29, 7), (8, 12), (3, 5)]:
        g = rng.standard_normal((2, 3, *size)).astype(np.float32)
        tx = torch.from_numpy(x).requires_grad_(True)
        out = F.interpolate(tx, size, mode="bilinear", align_corners=True)
        (out * torch.from_numpy(g)).sum().backward()
        value, vjp = jax.vjp(functools.partial(bilinear_resize_align_corners, size=size),
                             jnp.asarray(x.transpose(0, 2, 3, 1)))
        (grad,) = vjp(jnp.asarray(g.transpose(0, 2, 3, 1)))
        np.testing.assert_allclose(np.asarray(value), out.detach().numpy().transpose(0, 2, 3, 1),
                                   atol=1e-5, err_msg=f"value {size}")
        np.testing.assert_allclose(np.asarray(grad), tx.grad.numpy().transpose(0, 2, 3, 1),
                                   atol=1e-5, err_msg=f"gradient {size}")


def test_conv_grid_upsampling_puts_each_feature_on_the_pixel_its_conv_centred_on():
    """A stride-s conv with symmetric padding centres output i on pixel s * i; "conv_grid"
    up-sampling maps it back there (a ramp survives exactly), align_corners drifts by up to
    s - 1 pixels across the map. Gradients of the gather form equal the dense matrix's."""
    from deepfake_jax.models.bisenet import bilinear_resize, conv_grid_matrix

    np.testing.assert_allclose(conv_grid_matrix(3, 6), [[1, 0, 0], [.5, .5, 0], [0, 1, 0],
                                                        [0, .5, .5], [0, 0, 1], [0, 0, 1]])
    ramp = jnp.tile(jnp.arange(64, dtype=jnp.float32)[None, :, None, None], (1, 1, 64, 1))
    for s, k in ((2, 7), (4, 3), (8, 3)):  # the stem's 7x7 / 2, 3x3 strided convs
        delta = jnp.zeros((k, k, 1, 1)).at[k // 2, k // 2, 0, 0].set(1.0)
        feat = jax.lax.conv_general_dilated(ramp, delta, (s, s), [(k // 2, k // 2)] * 2,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        grid = np.asarray(bilinear_resize(feat, (64, 64), "conv_grid"))[0, :, 0, 0]
        np.testing.assert_allclose(grid[:64 - s + 1], np.arange(64 - s + 1), atol=1e-5)
        aligned = np.asarray(bilinear_resize_align_corners(feat, (64, 64)))[0, :, 0, 0]
        drift = np.arange(64) - aligned
        assert abs(drift[-1] - (s - 1)) < 1e-4 and abs(drift[0]) < 1e-6, (s, drift)

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((2, 8, 12, 3)), jnp.float32)
    for size in [(16, 24), (64, 12), (4, 6)]:
        g = jnp.asarray(rng.standard_normal((2, *size, 3)), jnp.float32)
        mh, mw = (jnp.asarray(conv_grid_matrix(n, m), jnp.float32)
                  for n, m in zip(x.shape[1:3], size, strict=True))
        dense = lambda v, mh=mh, mw=mw: jnp.einsum("hH,nHWc,wW->nhwc", mh, v, mw)  # noqa: E731
        value, vjp = jax.vjp(functools.partial(bilinear_resize, size=size, mode="conv_grid"), x)
        np.testing.assert_allclose(value, dense(x), atol=1e-5, err_msg=f"value {size}")
        np.testing.assert_allclose(vjp(g)[0], jax.vjp(dense, x)[1](g)[0], atol=1e-5,
                                   err_msg=f"gradient {size}")
    with pytest.raises(ValueError, match="Unknown upsampling 'nearest'"):
        bilinear_resize(x, (16, 24), "nearest")
    with pytest.raises(ValueError, match="upsample must be one of align_corners, conv_grid"):
        BiSeNet("tiny", 19, rngs=nnx.Rngs(0), upsample="bicubic")


# ----------------------------------------------------------------------------- import
def test_safetensors_and_pth_load_the_same(tmp_path, tiny_checkpoint):
    pytest.importorskip("torch", reason="PyTorch is needed to write the checkpoint")
    from safetensors.torch import save_file

    net, pth = tiny_checkpoint
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(sd, str(tmp_path / "m.safetensors"))
    abstract = _abstract("tiny", 19)
    a = flatten(nnx.to_pure_dict(bw.load_face_parsing_bisenet(abstract, pth)))
    b = flatten(nnx.to_pure_dict(bw.load_face_parsing_bisenet(
        abstract, str(tmp_path / "m.safetensors"))))
    c = flatten(nnx.to_pure_dict(load_pretrained(abstract, str(tmp_path / "m.safetensors"),
                                                 "face_parsing_bisenet")))
    assert a.keys() == b.keys() == c.keys()
    for p in a:
        np.testing.assert_array_equal(np.asarray(a[p]), np.asarray(b[p]))
        np.testing.assert_array_equal(np.asarray(a[p]), np.asarray(c[p]))
    # every tensor but num_batches_tracked has a place: the mapping is one-to-one
    assert len(a) == len([k for k in sd if not k.endswith("num_batches_tracked")])
    key, kind = bw.face_parsing_key(("cp", "arm16", "bn_atten", "var"))
    assert (key, kind) == ("cp.arm16.bn_atten.running_var", "raw")
    np.testing.assert_array_equal(np.asarray(a[("cp", "resnet", "layer2", 0, "downsample_conv",
                                                "kernel")]),
                                  to_ours(sd["cp.resnet.layer2.0.downsample.0.weight"].numpy(),
                                          "conv"))


def test_import_errors_list_every_problem(tmp_path, tiny_checkpoint):
    torch = pytest.importorskip("torch", reason="PyTorch is needed to write the checkpoint")
    net, good = tiny_checkpoint
    abstract = _abstract("tiny", 19)
    bad = _save(net, tmp_path / "bad.pth", drop={"cp.arm16.bn_atten.running_var"},
                replace={"ffm.conv1.weight": torch.zeros(3, 32, 1, 1),
                         "sp.conv1.conv.weight": torch.zeros(64, 3, 7, 7)})
    with pytest.raises(ValueError) as e:
        bw.load_face_parsing_bisenet(abstract, bad)
    msg = str(e.value)
    assert "missing keys" in msg and "cp.arm16.bn_atten.running_var" in msg
    assert "shape mismatches" in msg and "ffm.conv1.weight" in msg
    assert "unexpected keys" in msg and "sp.conv1.conv.weight" in msg

    data = open(good, "rb").read()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated"):
        bw.load_face_parsing_bisenet(abstract, str(tmp_path / "cut.pth"))
    torch.save([1, 2, 3], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a PyTorch"):
        bw.load_face_parsing_bisenet(abstract, str(tmp_path / "list.pth"))
    with pytest.raises(FileNotFoundError):
        bw.load_face_parsing_bisenet(abstract, str(tmp_path / "absent.pth"))


def test_pth_without_torch_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "m.pth").write_bytes(b"PK")
    monkeypatch.setitem(sys.modules, "torch", None)  # "import torch" raises ImportError
    with pytest.raises(ImportError, match="needs PyTorch"):
        bw.load_face_parsing_bisenet(_abstract("tiny", 19), str(tmp_path / "m.pth"))


def test_other_class_count_replaces_the_head(tiny_checkpoint, tiny_state, caplog):
    pytest.importorskip("torch", reason="PyTorch is needed to write the checkpoint")
    net, path = tiny_checkpoint
    _, state = tiny_state
    with caplog.at_level(logging.WARNING):
        loaded = flatten(nnx.to_pure_dict(bw.load_face_parsing_bisenet(state, path)))
    assert "head replaced" in caplog.text and "19 classes" in caplog.text
    own = flatten(nnx.to_pure_dict(state))
    sd = net.state_dict()
    assert loaded.keys() == own.keys()
    for p, v in loaded.items():
        if p in bw.HEAD_CONVS:  # fresh init kept, 5 classes
            assert v.shape[-1] == 5
            np.testing.assert_array_equal(np.asarray(v), np.asarray(own[p]))
        else:
            key, kind = bw.face_parsing_key(p)
            np.testing.assert_array_equal(np.asarray(v), to_ours(sd[key].numpy(), kind))
    with pytest.raises(ValueError, match="shape mismatches: conv_out.conv_out.weight"):
        bw.load_face_parsing_bisenet(state, path, strict_head=True)
    with pytest.raises(AbstractHeadError, match="concrete model"):
        bw.load_face_parsing_bisenet(_abstract("tiny", 5), path)


# ----------------------------------------------------------------------------- model
def test_registry_variants_and_filters():
    assert "bisenet" in MODEL_REGISTRY
    abstract = nnx.eval_shape(lambda: create_model("bisenet", variant="tiny", num_classes=7,
                                                   rngs=nnx.Rngs(0)))
    assert isinstance(abstract, BiSeNet) and abstract.conv_out.conv_out.out_features == 7
    params = flatten(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))
    backbone = nnx.state(abstract, nnx.All(nnx.Param, BiSeNet.backbone_filter()))
    head = nnx.state(abstract, nnx.All(nnx.Param, BiSeNet.head_filter()))
    bb, hd = flatten(nnx.to_pure_dict(backbone)), flatten(nnx.to_pure_dict(head))
    assert bb and hd and not bb.keys() & hd.keys() and bb.keys() | hd.keys() == params.keys()
    assert all(p[:2] == ("cp", "resnet") for p in bb)
    with pytest.raises(ValueError, match="valid variants: resnet18, half, quarter, tiny"):
        BiSeNet("resnet50", rngs=nnx.Rngs(0))
    # The reduced-width variants: the reference's parameter names, narrower kernels.
    ref = flatten(nnx.to_pure_dict(nnx.state(_abstract("resnet18", 19), nnx.Param)))
    for variant, width, mid in (("half", 32, 64), ("quarter", 16, 32)):
        got = flatten(nnx.to_pure_dict(nnx.state(_abstract(variant, 19), nnx.Param)))
        assert got.keys() == ref.keys()
        assert got[("cp", "resnet", "conv1", "kernel")].shape == (7, 7, 3, width)
        assert got[("cp", "conv_avg", "conv", "kernel")].shape == (1, 1, 8 * width, mid)
    with pytest.raises(ValueError, match="divisible by 32"):
        jax.eval_shape(lambda x: abstract(x), jax.ShapeDtypeStruct((1, 48, 64, 3), jnp.float32))


@pytest.mark.parametrize("stride,width", [(4, 16), (2, 8)])
def test_detail_stride_decodes_at_a_finer_map(stride, width):
    """detail_stride < 8 (ours, not the reference): the fused 1/8 features are brought to the
    backbone's 1/4 (layer1) and 1/2 (stem) maps before the output head.
    Logits keep the input size; the reference's modules and names are all still there; the new
    ones are head."""
    model = BiSeNet("tiny", 5, rngs=nnx.Rngs(0), detail_stride=stride)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 64, 32, 3)), jnp.float32)
    assert [y.shape for y in model.all_heads(x, train=True)] == [(2, 64, 32, 5)] * 3
    assert model(x).shape == (2, 64, 32, 5)
    np.testing.assert_allclose(model(x), model.all_heads(x)[0], atol=1e-5)
    native = model.all_heads(x, aux_at_input_size=False)  # aux heads on their own grids
    assert [y.shape for y in native] == [(2, 64, 32, 5), (2, 8, 4, 5), (2, 4, 2, 5)]
    np.testing.assert_allclose(native[0], model(x), atol=1e-5)
    ref = flatten(nnx.to_pure_dict(nnx.state(_abstract("tiny", 5), nnx.Param)))
    got = flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
    new = got.keys() - ref.keys()
    assert {p[0] for p in new} == {4: {"detail4"}, 2: {"detail4", "detail2"}}[stride]
    assert ref.keys() - got.keys() == set()
    assert got[("conv_out", "conv_out", "kernel")].shape == (1, 1, width, 5)
    head = flatten(nnx.to_pure_dict(nnx.state(model, nnx.All(nnx.Param, BiSeNet.head_filter()))))
    assert new <= head.keys()
    with pytest.raises(ValueError, match=r"detail_stride must be one of \(8, 4, 2\)"):
        BiSeNet("tiny", 5, rngs=nnx.Rngs(0), detail_stride=16)


def test_tiny_trains_sharded_on_data_mesh(tiny_state):
    graphdef, state = tiny_state
    def apply(st, x, train):
        return nnx.merge(graphdef, st, copy=True)(x, train=train)

    shapes = jax.eval_shape(lambda st, x: apply(st, x, True), state, jnp.zeros((8, 64, 32, 3)))
    assert [s.shape for s in shapes] == [(8, 64, 32, 5)] * 3
    out = jax.eval_shape(lambda st, x: apply(st, x, False), state, jnp.zeros((2, 32, 64, 3)))
    assert out.shape == (2, 32, 64, 5)

    mesh = sharding.make_mesh(devices=jax.devices())
    assert mesh.shape[sharding.DATA_AXIS] == 8
    params, stats = nnx.split_state(state, nnx.Param, nnx.BatchStat)
    params, stats = jax.device_put((params, stats), sharding.replicated(mesh))
    rng = np.random.default_rng(0)
    # 128x160 rather than 64x64: maps of <= 16 positions take layers.cpu_friendly_conv's
    # im2col path, whose gradient compiles ~4 s slower on CPU; the tiny model runs fast anyway
    batch = sharding.host_to_global(mesh, {
        "image": rng.standard_normal((8, 128, 160, 3)).astype(np.float32),
        "mask": rng.integers(0, 5, (8, 128, 160)).astype(np.int32)})
    tx = optax.adam(1e-2)
    opt_state = jax.device_put(tx.init(params), sharding.replicated(mesh))

    def loss_fn(params, stats, image, mask):
        m = nnx.merge(graphdef, params, stats, copy=True)
        heads = m(image, train=True)
        loss = sum(optax.softmax_cross_entropy_with_integer_labels(h, mask).mean()
                   for h in heads)
        return loss, nnx.state(m, nnx.BatchStat)

    # XLA backend optimisation level 0: this test checks behaviour, not speed, and the step
    # compiles ~30% faster on CPU (8.4 -> 5.7 s measured)
    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def step(params, stats, opt_state, image, mask):
        (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, stats, image, mask)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), stats, opt_state, loss

    losses, stats0 = [], stats
    for _ in range(2):  # the second call reports the loss after one update
        params, stats, opt_state, loss = step(params, stats, opt_state, batch["image"],
                                              batch["mask"])
        losses.append(float(loss))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0], losses
    # BatchNorm running stats moved towards the batch statistics
    moved = jax.tree.map(lambda a, b: not np.allclose(a, b), jax.tree.leaves(stats0),
                         jax.tree.leaves(stats))
    assert all(moved)
    assert batch["image"].sharding == NamedSharding(mesh, P(sharding.DATA_AXIS))
