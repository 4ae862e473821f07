"""timm / big_vision ViT importers, the timm ResNet-50 path and the ``load_pretrained`` registry.

Parity tests use timm itself as the reference: its ``VisionTransformer`` for state dicts and
its ``_load_weights`` for the ``.npz`` layout. timm needs torchvision at import time only (for
a frozen-BN class and data transforms these tests never touch); where torchvision is absent
(no CPU wheel matches torch 2.13.0 here), a stub that satisfies those imports is used.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deepfake_jax.models.vit import ViT, resize_pos_embed
from deepfake_jax.weights import FORMATS, Format, load_pretrained, vit_timm
from deepfake_jax.weights import resnet as rw
from deepfake_jax.weights import vit_big_vision as bv
from deepfake_jax.weights.common import flatten, to_ours

TIMM_DIMS = dict(patch_size=8, hidden_size=48, num_layers=2, num_heads=3, mlp_dim=96)


# ----------------------------------------------------------------------------- helpers
def _vit(num_classes=3, image_size=32, seed=0, **kw):
    """A concrete ViT with random values everywhere (no zero biases / unit LayerNorms)."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: ViT(
        "tiny", num_classes, image_size=image_size, layer_norm_eps=1e-6, rngs=nnx.Rngs(0),
        **TIMM_DIMS, **kw)))
    rng = np.random.default_rng(seed)
    state = jax.tree.map(
        lambda s: jnp.asarray((0.2 * rng.standard_normal(s.shape)).astype(s.dtype)), state)
    return nnx.merge(graphdef, state)


def _abstract_vit(num_classes=3, image_size=32):
    return nnx.eval_shape(lambda: ViT("tiny", num_classes, image_size=image_size,
                                      layer_norm_eps=1e-6, rngs=nnx.Rngs(0), **TIMM_DIMS))


def _params(model_or_state):
    state = (nnx.state(model_or_state, nnx.Param)
             if isinstance(model_or_state, nnx.Module) else model_or_state)
    return {k: np.asarray(v) for k, v in flatten(nnx.to_pure_dict(state)).items()}


def _x(n=2, size=32, seed=0):
    return np.random.RandomState(seed).randn(n, size, size, 3).astype(np.float32)


def _big_vision_npz(model, path):
    """big_vision's own layout: params/ prefix, scanned blocks, LayerNorm_0/1, MHDPA_0,
    MlpBlock_0, position table without a class row (its row folded into the class token)."""
    flat = bv.to_vit_npz_dict(model)
    out, blocks = {}, {}
    rename = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0",
              "LayerNorm_2": "LayerNorm_1", "MlpBlock_3": "MlpBlock_0"}
    for key, v in flat.items():
        if key.startswith("Transformer/encoderblock_"):
            i, sub = key[len("Transformer/encoderblock_"):].split("/", 1)
            mod, rest = sub.split("/", 1)
            blocks.setdefault(f"{rename.get(mod, mod)}/{rest}", {})[int(i)] = v
        elif key == "Transformer/posembed_input/pos_embedding":
            out["params/pos_embedding"] = v[:, 1:]
            out["params/cls"] = flat["cls"] + v[:, :1]
        elif key != "cls":
            out[f"params/{key}"] = v
    for sub, per_layer in blocks.items():
        out[f"params/Transformer/encoderblock/{sub}"] = np.stack(
            [per_layer[i] for i in sorted(per_layer)])
    np.savez(path, **out)


# ----------------------------------------------------------------------------- without torch
def test_timm_and_npz_roundtrips_abstract_target(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    src = _vit(seed=1)
    save_file(vit_timm.to_timm_state_dict(src), str(tmp_path / "timm.safetensors"))
    bv.save_vit_npz(src, str(tmp_path / "vit.npz"))
    want = _params(src)
    for fmt, path in [("timm_vit", tmp_path / "timm.safetensors"),
                      ("big_vision_vit", tmp_path / "vit.npz")]:
        got = _params(load_pretrained(_abstract_vit(), str(path), fmt))
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{fmt} {k}")


def test_big_vision_scanned_layout_same_function(tmp_path):
    src = _vit(seed=2)
    _big_vision_npz(src, tmp_path / "bv.npz")
    loaded = _params(bv.load_big_vision_vit(_abstract_vit(), str(tmp_path / "bv.npz")))
    assert np.all(loaded[("position_embeddings",)][:, 0] == 0)  # class row: zero ...
    model = nnx.merge(nnx.graphdef(_abstract_vit()), load_pretrained(
        _abstract_vit(), str(tmp_path / "bv.npz"), "big_vision_vit"))
    # ... and the class token absorbed it: same logits
    np.testing.assert_allclose(model(_x()), src(_x()), atol=1e-5)


def test_head_replaced_and_pos_embed_interpolated(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file
    src = _vit(num_classes=1000, seed=3)
    save_file(vit_timm.to_timm_state_dict(src), str(tmp_path / "timm.safetensors"))
    dst = _vit(num_classes=1, image_size=48, seed=4)  # other class count and image size
    own = _params(dst)
    got = _params(load_pretrained(dst, str(tmp_path / "timm.safetensors"), "timm_vit"))
    for k in (("classifier", "kernel"), ("classifier", "bias")):
        np.testing.assert_array_equal(got[k], own[k])  # head: the model's own
    pos = np.asarray(resize_pos_embed(src.position_embeddings[...], (6, 6)))
    np.testing.assert_allclose(got[("position_embeddings",)], pos, atol=1e-6)
    assert got[("position_embeddings",)].shape == (1, 37, 48)
    np.testing.assert_array_equal(got[("encoder", 1, "attention", "value", "kernel")],
                                  _params(src)[("encoder", 1, "attention", "value", "kernel")])
    with pytest.raises(ValueError, match="abstract"):  # no random head to keep
        vit_timm.load_timm_vit(_abstract_vit(num_classes=1), str(tmp_path / "timm.safetensors"))


def test_timm_errors_list_every_problem():
    sd = vit_timm.to_timm_state_dict(_vit())
    del sd["blocks.1.norm2.bias"]
    sd["blocks.0.ls1.gamma"] = np.ones(48, np.float32)
    sd["blocks.0.mlp.fc1.weight"] = np.zeros((97, 48), np.float32)
    sd["fc_norm.weight"] = sd.pop("norm.weight")
    with pytest.raises(ValueError) as err:
        vit_timm.load_timm_vit(_vit(), sd)
    msg = str(err.value)
    assert "missing keys" in msg and "encoder.1.layernorm_after.bias (blocks.1.norm2.bias)" in msg
    assert "layernorm.scale (norm.weight)" in msg
    assert "unexpected keys" in msg and "blocks.0.ls1.gamma" in msg
    assert "shape mismatches" in msg and "blocks.0.mlp.fc1.weight" in msg
    assert "fc_norm" in msg and "after* global average" in msg and "LayerScale" in msg


def test_npz_pre_logits_and_gap_errors(tmp_path):
    src = _vit()
    flat = bv.to_vit_npz_dict(src)
    np.savez(tmp_path / "pre.npz", **flat, **{"pre_logits/kernel": np.eye(48, dtype=np.float32),
                                             "pre_logits/bias": np.zeros(48, np.float32)})
    with pytest.raises(ValueError, match="(?s)pre_logits: the checkpoint has a representation"):
        bv.load_big_vision_vit(src, str(tmp_path / "pre.npz"))
    relaxed = _params(bv.load_big_vision_vit(src, str(tmp_path / "pre.npz"), strict=False))
    np.testing.assert_array_equal(relaxed[("cls_token",)], flat["cls"])
    del flat["cls"]
    np.savez(tmp_path / "gap.npz", **flat)
    with pytest.raises(ValueError, match="no class token"):
        bv.load_big_vision_vit(src, str(tmp_path / "gap.npz"))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a ViT .npz checkpoint"):
        bv.load_big_vision_vit(src, str(tmp_path / "other.npz"))


def test_registry_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown weight format 'keras'.*timm_vit.*big_vision_vit"):
        load_pretrained(_abstract_vit(), "x", "keras")
    assert {"hf_vit", "hf_resnet", "torchvision_resnet", "timm_resnet", "timm_vit",
            "big_vision_vit", "face_parsing_bisenet"} <= set(FORMATS)
    # an importer without a strict option (every registered one has it)
    monkeypatch.setitem(FORMATS, "plain", Format("common", "read_state_dict", "no strict"))
    with pytest.raises(ValueError, match="'plain' does not support strict=False"):
        load_pretrained(_abstract_vit(), "x.pth", "plain", strict=False)


# ----------------------------------------------------------------------------- timm parity
def _perturbed(torch, model):
    with torch.no_grad():  # default inits leave biases 0 and norms 1/0: perturb everything
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn_like(b))
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model.eval()


def _torch_logits(torch, model, x):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def test_timm_vit_parity_and_npz_via_timm_loader(timm, tmp_path):
    timm, torch = timm
    from safetensors.torch import save_file
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    kw = dict(img_size=32, patch_size=8, embed_dim=48, depth=2, num_heads=3, mlp_ratio=2.0,
              num_classes=3)
    ref = _perturbed(torch, VisionTransformer(**kw))
    save_file(ref.state_dict(), str(tmp_path / "model.safetensors"))
    x = _x(4)
    want = _torch_logits(torch, ref, x)

    ours = nnx.merge(nnx.graphdef(_abstract_vit()), load_pretrained(
        _abstract_vit(), str(tmp_path / "model.safetensors"), "timm_vit"))
    assert np.abs(np.asarray(ours(jnp.asarray(x))) - want).max() <= 1e-4

    # .npz: written by our exporter, read by timm's own loader and by ours
    bv.save_vit_npz(ours, str(tmp_path / "vit.npz"))
    fresh = VisionTransformer(**kw).eval()
    _load_weights(fresh, str(tmp_path / "vit.npz"))
    assert np.abs(_torch_logits(torch, fresh, x) - want).max() <= 1e-5
    from_npz = nnx.merge(nnx.graphdef(_abstract_vit()), load_pretrained(
        _abstract_vit(), str(tmp_path / "vit.npz"), "big_vision_vit"))
    assert np.abs(np.asarray(from_npz(jnp.asarray(x))) - want).max() <= 1e-4

    # timm no_embed_class (position table without a class row): same function
    ref2 = _perturbed(torch, VisionTransformer(**kw, no_embed_class=True))
    save_file(ref2.state_dict(), str(tmp_path / "noembed.safetensors"))
    ours2 = nnx.merge(nnx.graphdef(_abstract_vit()), load_pretrained(
        _abstract_vit(), str(tmp_path / "noembed.safetensors"), "timm_vit"))
    assert np.abs(np.asarray(ours2(jnp.asarray(x))) - _torch_logits(torch, ref2, x)).max() <= 1e-4


def test_timm_resnet50_state_dict_loads(timm, tmp_path):
    timm, torch = timm
    from safetensors.torch import save_file
    from timm.models.resnet import Bottleneck
    from timm.models.resnet import ResNet as TimmResNet

    from deepfake_jax.models.resnet import ResNet

    # timm's plain stem is 64 wide whatever the stages: a real ResNet-50. Forward parity of
    # this mapping is tested against transformers in test_resnet_weights; here: timm's file
    # maps completely, every tensor lands where torchvision's name says.
    ref = _perturbed(torch, TimmResNet(Bottleneck, [3, 4, 6, 3], num_classes=3))
    sd = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(sd, str(tmp_path / "resnet50.safetensors"))
    abstract = nnx.eval_shape(lambda: ResNet("50", 3, rngs=nnx.Rngs(0)))
    loaded = flatten(nnx.to_pure_dict(load_pretrained(
        abstract, str(tmp_path / "resnet50.safetensors"), "timm_resnet")))
    assert len(loaded) == len([k for k in sd if not k.endswith("num_batches_tracked")])
    for p, v in loaded.items():
        key, kind = rw.torchvision_key(p)
        np.testing.assert_array_equal(v, to_ours(sd[key].numpy(), kind), err_msg=key)
