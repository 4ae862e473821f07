"""ViT model and Hugging Face importer: shapes, parameter counts, dropout, parity with torch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from deepfake_jax.models import count_params
from deepfake_jax.models.vit import _VARIANTS, VARIANTS, SelfAttention, ViT, resize_pos_embed
from deepfake_jax.weights import vit_hf
from deepfake_jax.weights.common import flatten


def _formula(patch, d, depth, mlp, classes=1000, size=224):
    n = (size // patch) ** 2
    block = 4 * (d * d + d) + (d * mlp + mlp) + (mlp * d + d) + 4 * d
    embed = (3 * patch * patch * d + d) + d + (n + 1) * d
    return embed + depth * block + 2 * d + d * classes + classes


@pytest.mark.parametrize("variant,expected", [
    ("Ti/16", 5_717_416),      # timm vit_tiny_patch16_224
    ("S/16", 22_050_664),      # timm vit_small_patch16_224
    ("B/16", 86_567_656),      # timm vit_base_patch16_224 == HF ViTForImageClassification
    ("L/16", 304_326_632),     # timm vit_large_patch16_224
])
def test_param_counts(variant, expected):
    model = nnx.eval_shape(lambda: ViT(variant, 1000, rngs=nnx.Rngs(0)))
    assert count_params(model) == expected
    p, d, depth, _, mlp = _VARIANTS[variant]
    assert _formula(p, d, depth, mlp) == expected


def test_param_counts_formula_other_variants():
    assert set(VARIANTS) == {"tiny", "Ti/16", "S/16", "B/16", "L/16", "Ti/32", "S/32", "B/32",
                             "L/32"}
    for variant in ("tiny", "B/32"):  # eval_shape traces the init: keep this short
        p, d, depth, _, mlp = _VARIANTS[variant]
        size = 32 if variant == "tiny" else 224
        model = nnx.eval_shape(lambda v=variant, s=size: ViT(v, 1000, image_size=s,
                                                             rngs=nnx.Rngs(0)))
        assert count_params(model) == _formula(p, d, depth, mlp, size=size), variant


def test_unknown_variant_lists_valid():
    with pytest.raises(ValueError, match="B/16"):
        ViT("X/3", rngs=nnx.Rngs(0))


def test_tiny_forward_shapes():
    model = ViT("tiny", 2, image_size=32, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (3, 32, 32, 3))
    logits, attns = model(x, return_attention=True)
    assert logits.shape == (3, 2) and len(attns) == 2
    assert attns[0].shape == (3, 2, 17, 17)
    np.testing.assert_allclose(np.asarray(attns[0]).sum(-1), 1.0, atol=1e-5)
    assert len(model.attention_maps(x)) == 2
    assert model.features(x).shape == (3, 32)
    assert model.feature_map(x).shape == (3, 4, 4, 32)
    gap = ViT("tiny", 1, image_size=32, pool="gap", rngs=nnx.Rngs(0))
    assert gap(x).shape == (3, 1)
    # other image sizes need an explicit opt-in (as in HF)
    x48 = jnp.zeros((1, 48, 48, 3))
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        model(x48)
    assert model(x48, interpolate_pos_encoding=True).shape == (1, 2)
    # no Rngs inside the module: Param (+ BatchStat) cover the whole state
    *_, rest = nnx.split(model, nnx.Param, nnx.BatchStat, ...)
    assert not jax.tree.leaves(rest)


def test_dropout_only_in_train_and_deterministic_per_key():
    model = ViT("tiny", 2, image_size=32, dropout=0.2, attention_dropout=0.2, drop_path=0.2,
                rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    ev = model(x)
    np.testing.assert_array_equal(ev, model(x, train=False, rngs=nnx.Rngs(dropout=3)))
    a = model(x, train=True, rngs=nnx.Rngs(dropout=7))
    b = model(x, train=True, rngs=nnx.Rngs(dropout=7))
    c = model(x, train=True, rngs=nnx.Rngs(dropout=8))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, ev) and not np.allclose(a, c)


@pytest.mark.parametrize("train", [False, True])
def test_attend_equals_softmax_then_values_with_gradients(train):
    # The CPU form (division after the product with v) against the textbook one, dropout
    # included: the same dropout key masks the same (row-scaled) entries.
    attention = SelfAttention(32, 2, attention_dropout=0.3, hidden_dropout=0.0, qkv_bias=True,
                              rngs=nnx.Rngs(0), dtype=None, param_dtype=jnp.float32)
    keys = jax.random.split(jax.random.key(3), 2)
    logits = 4.0 * jax.random.normal(keys[0], (2, 2, 17, 17))
    v = jax.random.normal(keys[1], (2, 2, 17, 16))

    def textbook(logits, v):
        probs = attention.attention_dropout(jax.nn.softmax(logits, axis=-1),
                                            deterministic=not train, rngs=nnx.Rngs(dropout=5))
        return (probs @ v).transpose(0, 2, 1, 3).reshape(2, 17, -1)

    def cpu_form(logits, v):
        return attention.attend(logits, v, train=train, rngs=nnx.Rngs(dropout=5))

    np.testing.assert_allclose(cpu_form(logits, v), textbook(logits, v), rtol=1e-5, atol=1e-6)
    weights = jax.random.normal(jax.random.key(4), (2, 17, 32))
    grads = [jax.grad(lambda lg, v, f=f: jnp.sum(f(lg, v) * weights), argnums=(0, 1))(logits, v)
             for f in (cpu_form, textbook)]
    for ours, reference in zip(*grads, strict=True):
        np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)


def test_grad_through_split_merge():
    model = ViT("tiny", 1, image_size=32, dropout=0.1, drop_path=0.1, rngs=nnx.Rngs(0))
    graphdef, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    x = jnp.ones((2, 32, 32, 3))

    @jax.jit
    def loss(params, key):
        m = nnx.merge(graphdef, params, stats)
        return jnp.mean(m(x, train=True, rngs=nnx.Rngs(dropout=key)) ** 2)

    grads = jax.grad(loss)(params, jax.random.key(0))
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_resize_pos_embed_keeps_class_token_and_shapes():
    pos = jax.random.normal(jax.random.key(0), (1, 1 + 16, 8))
    out = resize_pos_embed(pos, 6)
    assert out.shape == (1, 1 + 36, 8)
    np.testing.assert_array_equal(out[:, 0], pos[:, 0])
    np.testing.assert_allclose(resize_pos_embed(pos, (4, 4)), pos, atol=1e-6)  # identity
    assert resize_pos_embed(pos, (2, 8)).shape == (1, 17, 8)
    assert resize_pos_embed(pos[0], 2).shape == (5, 8)  # without the batch axis
    const = jnp.concatenate([pos[:, :1], jnp.ones((1, 16, 8))], axis=1)
    np.testing.assert_allclose(resize_pos_embed(const, 7)[:, 1:], 1.0, atol=1e-5)
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(jnp.zeros((1, 1 + 12, 8)), 4)


# ----------------------------------------------------------------------- importer, no torch
def _tiny(num_classes=3, seed=0, **kw):
    return ViT("tiny", num_classes, image_size=32, rngs=nnx.Rngs(seed), **kw)


def _params(model):
    return flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def test_export_import_roundtrip_and_head_kept(tmp_path):
    pytest.importorskip("safetensors")
    src = _tiny(seed=1)
    vit_hf.save_hf_vit(src, str(tmp_path))
    dst = _tiny(seed=2)
    before = {k: np.asarray(v) for k, v in _params(dst).items()}
    params = vit_hf.load_hf_vit(dst, str(tmp_path))
    for k, v in _params(dst).items():  # the model itself is untouched
        np.testing.assert_array_equal(v, before[k])
    nnx.update(dst, params)
    for k, v in _params(src).items():
        np.testing.assert_array_equal(_params(dst)[k], v)

    other = _tiny(num_classes=5, seed=3)  # other class count: head kept, rest loaded
    head = np.asarray(other.classifier.kernel[...])
    nnx.update(other, vit_hf.load_hf_vit(other, str(tmp_path)))
    np.testing.assert_array_equal(other.classifier.kernel[...], head)
    np.testing.assert_array_equal(other.layernorm.scale[...], src.layernorm.scale[...])

    abstract = nnx.eval_shape(lambda: _tiny(seed=4))  # abstract target, same head: fine
    loaded = vit_hf.load_hf_vit(abstract, str(tmp_path))
    np.testing.assert_array_equal(loaded["cls_token"][...], src.cls_token[...])

    model = vit_hf.create_vit_from_hf(str(tmp_path), rngs=nnx.Rngs(9))
    x = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
    np.testing.assert_allclose(model(x), src(x), atol=1e-6)


def test_missing_unexpected_and_shape_errors(tmp_path):
    save_file = pytest.importorskip("safetensors.numpy").save_file

    sd = vit_hf.to_hf_state_dict(_tiny())
    del sd["vit.encoder.layer.1.layernorm_after.bias"]
    sd["vit.encoder.layer.7.foo.weight"] = np.zeros(3, np.float32)
    sd["vit.encoder.layer.0.intermediate.dense.weight"] = np.zeros((65, 32), np.float32)
    save_file(sd, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as err:
        vit_hf.load_hf_vit(_tiny(), str(tmp_path / "model.safetensors"))
    msg = str(err.value)
    assert "missing keys" in msg and "encoder.1.layernorm_after.bias" in msg
    assert "unexpected keys" in msg and "vit.encoder.layer.7.foo.weight" in msg
    assert "shape mismatches" in msg and "intermediate.dense.weight" in msg


def test_config_mismatch_error(tmp_path):
    pytest.importorskip("safetensors")
    vit_hf.save_hf_vit(_tiny(layer_norm_eps=1e-6), str(tmp_path))
    with pytest.raises(ValueError, match="layer_norm_eps"):
        vit_hf.load_hf_vit(_tiny(), str(tmp_path))


# ----------------------------------------------------------------------- parity with torch
@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=3, intermediate_size=96,
        image_size=32, patch_size=8, num_labels=3, attn_implementation="eager")
    model = transformers.ViTForImageClassification(config).eval()
    with torch.no_grad():  # HF init leaves biases 0 and LayerNorms 1/0: perturb everything
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    folder = tmp_path_factory.mktemp("hf_vit")
    model.save_pretrained(str(folder))
    return torch, model, str(folder)


def _torch_run(torch, model, x_nhwc, **kw):
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2))),
                     **kw)


def test_hf_parity_logits_and_attention(hf_vit):
    torch, hf, folder = hf_vit
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype(np.float32)
    ref = _torch_run(torch, hf, x, output_attentions=True)
    ours = vit_hf.create_vit_from_hf(folder, rngs=nnx.Rngs(0))
    logits, attns = ours(jnp.asarray(x), return_attention=True)
    assert np.abs(np.asarray(logits) - ref.logits.numpy()).max() <= 1e-4
    for a, r in zip(attns, ref.attentions, strict=True):
        assert np.abs(np.asarray(a) - r.numpy()).max() <= 1e-5


def test_hf_parity_interpolated_position_embeddings(hf_vit):
    torch, hf, folder = hf_vit
    x = np.random.RandomState(1).randn(2, 48, 48, 3).astype(np.float32)
    ref = _torch_run(torch, hf, x, interpolate_pos_encoding=True).logits.numpy()
    # resized once at import ...
    big = vit_hf.create_vit_from_hf(folder, rngs=nnx.Rngs(0), image_size=48)
    assert np.abs(np.asarray(big(jnp.asarray(x))) - ref).max() <= 1e-4
    # ... or on the fly, like HF
    small = vit_hf.create_vit_from_hf(folder, rngs=nnx.Rngs(0))
    out = small(jnp.asarray(x), interpolate_pos_encoding=True)
    assert np.abs(np.asarray(out) - ref).max() <= 1e-4


def test_resize_pos_embed_matches_torch_bicubic():
    torch = pytest.importorskip("torch")
    pos = np.random.RandomState(0).randn(1, 1 + 5 * 5, 6).astype(np.float32)
    for new in [(7, 7), (3, 3), (4, 9)]:
        grid = torch.from_numpy(pos[:, 1:]).reshape(1, 5, 5, 6).permute(0, 3, 1, 2)
        ref = torch.nn.functional.interpolate(grid, size=new, mode="bicubic",
                                              align_corners=False)
        ref = ref.permute(0, 2, 3, 1).reshape(1, -1, 6).numpy()
        np.testing.assert_allclose(np.asarray(resize_pos_embed(pos, new))[:, 1:], ref,
                                   atol=1e-5)


def test_hf_v5_names_and_export_to_hf(hf_vit, tmp_path):
    torch, hf, folder = hf_vit
    from safetensors.numpy import save_file
    transformers = pytest.importorskip("transformers")

    # transformers>=5 in-memory names (vit.layers.i.attention.q_proj ...) load too
    sd = {k: v.numpy() for k, v in hf.state_dict().items()}
    save_file(sd, str(tmp_path / "v5.safetensors"))
    ours = vit_hf.create_vit_from_hf(folder, rngs=nnx.Rngs(0))
    fresh = vit_hf.create_vit_from_hf(folder, rngs=nnx.Rngs(1))
    nnx.update(fresh, vit_hf.load_hf_vit(fresh, str(tmp_path / "v5.safetensors")))
    for k, v in _params(ours).items():
        np.testing.assert_array_equal(_params(fresh)[k], v)

    # export: HF loads what save_hf_vit writes and computes the same logits
    vit_hf.save_hf_vit(ours, str(tmp_path / "export"))
    back = transformers.ViTForImageClassification.from_pretrained(
        str(tmp_path / "export"), attn_implementation="eager").eval()
    x = np.random.RandomState(2).randn(2, 32, 32, 3).astype(np.float32)
    ref = _torch_run(torch, back, x).logits.numpy()
    assert np.abs(np.asarray(ours(jnp.asarray(x))) - ref).max() <= 1e-4
