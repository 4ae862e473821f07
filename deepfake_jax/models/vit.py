"""Vision Transformer (Dosovitskiy et al., ICLR 2021) in ``flax.nnx``.

Architecture exactly Hugging Face ``ViTModel`` + ``ViTForImageClassification``: PxP patch conv,
class token, learned position embeddings, pre-LN blocks, final LayerNorm, Linear head on the
class token (``pool="cls"``) or on the mean patch token (``pool="gap"``). Parameter names follow
HF's checkpoint keys (``weights.vit_hf``). ``layer_norm_eps`` defaults to HF's 1e-12 (timm and
big_vision: 1e-6); GELU is the exact erf one. Dropout / stochastic depth draw from the
``dropout`` stream of the ``rngs`` given at call time; no ``Rngs`` are stored in the module.
Input NHWC, normalised; output logits ``(B, num_classes)``. Freezing head: ``classifier``.

Details: docs/models.md#deepfake_jaxmodelsvitpy
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deepfake_jax.models.layers import ParamGroups

# variant -> (patch, hidden size, depth, heads, mlp dim)
_VARIANTS: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (8, 32, 2, 2, 64),
    "Ti/16": (16, 192, 12, 3, 768),
    "S/16": (16, 384, 12, 6, 1536),
    "B/16": (16, 768, 12, 12, 3072),
    "L/16": (16, 1024, 24, 16, 4096),
    "Ti/32": (32, 192, 12, 3, 768),
    "S/32": (32, 384, 12, 6, 1536),
    "B/32": (32, 768, 12, 12, 3072),
    "L/32": (32, 1024, 24, 16, 4096),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)

HF_LAYER_NORM_EPS = 1e-12
# HF ``_init_weights``: trunc-normal(std=initializer_range=0.02) for Linear/Conv weights and the
# class/position embeddings, zero biases, LayerNorm ones/zeros.
_init = nnx.initializers.truncated_normal(stddev=0.02)


def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        return int(v[0]), int(v[1])
    return int(v), int(v)


# ----------------------------------------------------------------------------- pos-embed resize
def _cubic_weight_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) matrix of torch ``F.interpolate(mode="bicubic", align_corners=False)``.

    Same kernel (Keys, A=-0.75), source index ``(dst + 0.5) * n_in / n_out - 0.5`` and border
    clamping as ATen's ``upsample_bicubic2d`` (no antialias), so results match HF's
    ``interpolate_pos_encoding`` to float rounding.
    """
    def cc1(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def cc2(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    w = np.zeros((n_out, n_in), np.float64)
    scale = n_in / n_out
    for o in range(n_out):
        real = (o + 0.5) * scale - 0.5
        i0 = math.floor(real)
        t = real - i0
        coeffs = (cc2(t + 1), cc1(t), cc1(1 - t), cc2(2 - t))
        for k, c in enumerate(coeffs):
            w[o, min(max(i0 - 1 + k, 0), n_in - 1)] += c
    return w


def resize_pos_embed(posemb: jax.Array, new_grid: int | Sequence[int], *,
                     old_grid: int | Sequence[int] | None = None,
                     num_prefix_tokens: int = 1) -> jax.Array:
    """Bicubic resize of ViT position embeddings ``(1, prefix + gh*gw, D)`` to ``new_grid``.

    The first ``num_prefix_tokens`` (the class token) are kept as they are; the patch grid is
    resized like HF's ``ViTEmbeddings.interpolate_pos_encoding`` (torch bicubic, A=-0.75,
    ``align_corners=False``, no antialias; timm's ``resample_abs_pos_embed`` adds antialias,
    which only differs when shrinking). ``old_grid`` defaults to a square grid. Works on
    numpy or jax arrays, inside ``jit`` too (shapes are static). Returns the input's dtype.
    """
    posemb = jnp.asarray(posemb)
    squeeze = posemb.ndim == 2
    if squeeze:
        posemb = posemb[None]
    prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
    n, d = grid.shape[1], grid.shape[2]
    if old_grid is None:
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"{n} patch positions are not a square grid; pass old_grid")
        old_grid = (side, side)
    gh, gw = _pair(old_grid)
    nh, nw = _pair(new_grid)
    if gh * gw != n:
        raise ValueError(f"old_grid {(gh, gw)} does not hold the {n} patch positions")
    if (gh, gw) != (nh, nw):
        wh = jnp.asarray(_cubic_weight_matrix(gh, nh), jnp.float32)
        ww = jnp.asarray(_cubic_weight_matrix(gw, nw), jnp.float32)
        g = grid.reshape(grid.shape[0], gh, gw, d).astype(jnp.float32)
        g = jnp.einsum("ah,bhwd,cw->bacd", wh, g, ww, precision=jax.lax.Precision.HIGHEST)
        grid = g.reshape(grid.shape[0], nh * nw, d).astype(posemb.dtype)
    out = jnp.concatenate([prefix, grid], axis=1)
    return out[0] if squeeze else out


# ----------------------------------------------------------------------------------- modules
def _linear(cin, cout, *, rngs, dtype, param_dtype, use_bias=True) -> nnx.Linear:
    return nnx.Linear(cin, cout, use_bias=use_bias, kernel_init=_init,
                      bias_init=nnx.initializers.zeros_init(), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)


def _layer_norm(d, *, eps, rngs, dtype, param_dtype) -> nnx.LayerNorm:
    return nnx.LayerNorm(d, epsilon=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class SelfAttention(nnx.Module):
    """HF ``ViTAttention``: separate query/key/value projections and an output projection."""

    def __init__(self, d, num_heads, *, attention_dropout, hidden_dropout, qkv_bias, rngs,
                 dtype, param_dtype):
        if d % num_heads:
            raise ValueError(f"hidden size {d} is not divisible by {num_heads} heads")
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.num_heads = num_heads
        self.head_dim = d // num_heads
        self.query = _linear(d, d, use_bias=qkv_bias, **kw)
        self.key = _linear(d, d, use_bias=qkv_bias, **kw)
        self.value = _linear(d, d, use_bias=qkv_bias, **kw)
        self.output = _linear(d, d, **kw)
        self.attention_dropout = nnx.Dropout(attention_dropout)
        self.dropout = nnx.Dropout(hidden_dropout)

    def __call__(self, x, *, train: bool, rngs) -> tuple[jax.Array, jax.Array]:
        b, t, _ = x.shape
        split = (b, t, self.num_heads, self.head_dim)
        # Heads first, as batched matmuls, with the scale on q: XLA:CPU fuses the einsum form
        # (scale, softmax and both products) into one slow YNNPACK kernel; this form runs the
        # B/16 forward 1.35x faster (bench/model_variants.py). head_dim ** -0.5 is a power of two
        # for the ViT variants, so scaling q first changes no bit of the logits.
        q, k, v = (proj(x).reshape(split).transpose(0, 2, 1, 3)
                   for proj in (self.query, self.key, self.value))
        logits = ((q * (self.head_dim ** -0.5)) @ k.transpose(0, 1, 3, 2)).astype(jnp.float32)
        out = self.dropout(self.output(self.attend(logits, v, train=train, rngs=rngs)),
                           deterministic=not train, rngs=rngs)
        # The maps for attention rollout; XLA drops them where nothing reads them.
        return out, jax.nn.softmax(logits, axis=-1).astype(x.dtype)

    def attend(self, logits: jax.Array, v: jax.Array, *, train: bool, rngs) -> jax.Array:
        """softmax(logits) @ v, heads merged: (B, T, D). The softmax's division comes after the
        product with v (one multiply per output, not per logit): XLA:CPU runs the ViT-B/16
        train step 1.12x faster than with `softmax @ v` (docs/cpu_benchmarks.md). Dropout on
        the unnormalised weights equals dropout on the probabilities: a row's scale commutes
        with the mask."""
        weights = jnp.exp(logits - jax.lax.stop_gradient(logits.max(-1, keepdims=True)))
        inverse_sum = (1.0 / weights.sum(-1, keepdims=True)).astype(v.dtype)
        dropped = self.attention_dropout(weights.astype(v.dtype), deterministic=not train,
                                         rngs=rngs)
        out = (dropped @ v) * inverse_sum
        b, _, t, _ = out.shape
        return out.transpose(0, 2, 1, 3).reshape(b, t, -1)


class EncoderBlock(nnx.Module):
    """HF ``ViTLayer`` (pre-LN) plus optional stochastic depth."""

    def __init__(self, d, num_heads, mlp_dim, *, eps, dropout, attention_dropout, drop_path,
                 qkv_bias, rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.layernorm_before = _layer_norm(d, eps=eps, **kw)
        self.attention = SelfAttention(d, num_heads, attention_dropout=attention_dropout,
                                       hidden_dropout=dropout, qkv_bias=qkv_bias, **kw)
        self.layernorm_after = _layer_norm(d, eps=eps, **kw)
        self.intermediate = _linear(d, mlp_dim, **kw)
        self.output = _linear(mlp_dim, d, **kw)
        self.dropout = nnx.Dropout(dropout)
        # one keep/drop decision per sample: mask broadcast over tokens and channels
        self.drop_path = nnx.Dropout(drop_path, broadcast_dims=(1, 2))

    def __call__(self, x, *, train: bool, rngs) -> tuple[jax.Array, jax.Array]:
        det = not train
        y, probs = self.attention(self.layernorm_before(x), train=train, rngs=rngs)
        x = x + self.drop_path(y, deterministic=det, rngs=rngs)
        y = jax.nn.gelu(self.intermediate(self.layernorm_after(x)), approximate=False)
        y = self.dropout(self.output(y), deterministic=det, rngs=rngs)
        x = x + self.drop_path(y, deterministic=det, rngs=rngs)
        return x, probs


class ViT(ParamGroups, nnx.Module):
    """HF-compatible Vision Transformer. See the module docstring for naming and options."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("classifier",)

    def __init__(
        self,
        variant: str,
        num_classes: int = 1,
        *,
        rngs: nnx.Rngs,
        image_size: int | Sequence[int] = 224,
        pool: str = "cls",
        dropout: float = 0.0,
        attention_dropout: float = 0.0,
        drop_path: float = 0.0,
        layer_norm_eps: float = HF_LAYER_NORM_EPS,
        qkv_bias: bool = True,
        patch_size: int | None = None,
        hidden_size: int | None = None,
        num_layers: int | None = None,
        num_heads: int | None = None,
        mlp_dim: int | None = None,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
    ):
        variant = str(variant)
        if variant not in _VARIANTS:
            raise ValueError(f"Unknown ViT variant {variant!r}; valid variants: "
                             f"{', '.join(VARIANTS)}")
        if pool not in ("cls", "gap"):
            raise ValueError(f"Unknown ViT pool {pool!r}; valid: cls, gap")
        p, d, depth, heads, mlp = _VARIANTS[variant]
        p = patch_size or p
        d = hidden_size or d
        depth = num_layers or depth
        heads = num_heads or heads
        mlp = mlp_dim or mlp
        self.variant = variant
        self.num_classes = num_classes
        self.image_size = _pair(image_size)
        self.patch_size = p
        self.grid = (self.image_size[0] // p, self.image_size[1] // p)
        self.pool = pool
        self.num_features = d
        self.layer_norm_eps = layer_norm_eps
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        self.patch_embeddings = nnx.Conv(3, d, kernel_size=(p, p), strides=(p, p),
                                         padding="VALID", kernel_init=_init,
                                         bias_init=nnx.initializers.zeros_init(), **kw)
        self.cls_token = nnx.Param(_init(rngs.params(), (1, 1, d), param_dtype))
        n_pos = 1 + self.grid[0] * self.grid[1]
        self.position_embeddings = nnx.Param(_init(rngs.params(), (1, n_pos, d), param_dtype))
        self.dropout = nnx.Dropout(dropout)
        rates = np.linspace(0.0, drop_path, depth) if depth > 1 else [drop_path]
        self.encoder = nnx.List([
            EncoderBlock(d, heads, mlp, eps=layer_norm_eps, dropout=dropout,
                         attention_dropout=attention_dropout, drop_path=float(r),
                         qkv_bias=qkv_bias, **kw)
            for r in rates
        ])
        self.layernorm = _layer_norm(d, eps=layer_norm_eps, **kw)
        self.classifier = _linear(d, num_classes, **kw)

    # ----------------------------------------------------------------- forward
    def _pos_embed(self, grid: tuple[int, int], interpolate: bool) -> jax.Array:
        pos = self.position_embeddings[...]
        if grid == self.grid:
            return pos
        if not interpolate:
            raise ValueError(
                f"input gives a {grid} patch grid but the model was built for {self.image_size} "
                f"px ({self.grid} patches); pass interpolate_pos_encoding=True or rebuild with "
                f"image_size=...")
        return resize_pos_embed(pos, grid, old_grid=self.grid)

    def encode(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
               interpolate_pos_encoding: bool = False
               ) -> tuple[jax.Array, list[jax.Array]]:
        """Final-LayerNorm'd tokens (B, 1+N, D) and per-block attention probs (B, H, T, T)."""
        x = self.patch_embeddings(jnp.asarray(x, self.dtype))
        b, gh, gw, d = x.shape
        x = x.reshape(b, gh * gw, d)
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))
        x = jnp.concatenate([cls, x], axis=1)
        x = x + self._pos_embed((gh, gw), interpolate_pos_encoding).astype(x.dtype)
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        attns = []
        for block in self.encoder:
            x, probs = block(x, train=train, rngs=rngs)
            attns.append(probs)
        return self.layernorm(x), attns

    def pool_tokens(self, tokens: jax.Array) -> jax.Array:
        return tokens[:, 0] if self.pool == "cls" else jnp.mean(tokens[:, 1:], axis=1)

    def features(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 interpolate_pos_encoding: bool = False) -> jax.Array:
        """Pooled features (B, D) (class token, or mean of patch tokens for ``pool="gap"``)."""
        tokens, _ = self.encode(x, train=train, rngs=rngs,
                                interpolate_pos_encoding=interpolate_pos_encoding)
        return self.pool_tokens(tokens)

    def feature_map(self, x: jax.Array, *, train: bool = False,
                    rngs: nnx.Rngs | None = None) -> jax.Array:
        """Final patch tokens as a map (B, H/P, W/P, D) -- e.g. for Grad-CAM."""
        x = jnp.asarray(x)
        gh, gw = x.shape[1] // self.patch_size, x.shape[2] // self.patch_size
        tokens, _ = self.encode(x, train=train, rngs=rngs, interpolate_pos_encoding=True)
        return tokens[:, 1:].reshape(x.shape[0], gh, gw, -1)

    def head(self, feats: jax.Array) -> jax.Array:
        """Classifier head on pooled features (B, D) -> logits (B, num_classes)."""
        return self.classifier(feats)

    def attention_maps(self, x: jax.Array) -> list[jax.Array]:
        """Eval-mode attention probabilities, one (B, heads, 1+N, 1+N) array per block
        (token 0 is the class token), e.g. for attention rollout."""
        return self.encode(x, train=False, interpolate_pos_encoding=True)[1]

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None,
                 return_attention: bool = False, interpolate_pos_encoding: bool = False):
        """Logits (B, num_classes); with ``return_attention`` also the per-block attention
        probabilities (list of (B, heads, T, T))."""
        tokens, attns = self.encode(x, train=train, rngs=rngs,
                                    interpolate_pos_encoding=interpolate_pos_encoding)
        logits = self.head(self.pool_tokens(tokens))
        return (logits, attns) if return_attention else logits

