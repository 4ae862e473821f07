"""Layers shared by the model families."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

# XLA:CPU picks a pathologically slow algorithm for convolutions whose output has only a few
# spatial positions (ResNet's last stage on small images). Measured on a 2-core CPU, batch 64,
# 3x3 conv 512->512 on a 2x2 map: 855 ms forward and 1731 ms for the gradients, vs 7 ms and
# 23 ms as an explicit im2col + matmul. Above ~16 output positions lax's conv is as fast or
# faster, so the matmul form is used only below that, and only on CPU.
_MAX_POSITIONS_FOR_MATMUL = 16
# Convolutions with at most this many kernel taps x input channels (a 3x3 conv of an RGB
# image: 27) run as a sum of shifted slices (`_few_channel_conv`).
_MAX_TERMS_FOR_SHIFTED_SUM = 27
_NHWC = ("NHWC", "HWIO", "NHWC")
# 1x1 convolutions get their gradients as matmuls (`_pointwise_conv`).
POINTWISE_GRADIENTS_AS_MATMULS = True


def cpu_friendly_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                      dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
    """Drop-in for `lax.conv_general_dilated` (as `nnx.Conv(conv_general_dilated=...)`).

    Same result (up to float rounding). On CPU, for NHWC: im2col + matmul for small outputs,
    where XLA's own convolution is ~100x slower; depthwise convolutions as shifted
    multiply-adds (`depthwise_conv_shifted`); 1x1 convolutions with lax's forward and matmul
    gradients (`_pointwise_conv`); convolutions of few input channels as a shifted sum in the
    forward (`_few_channel_conv`). Everything else goes to lax unchanged. Each form is measured
    against lax's in bench/model_variants.py (docs/cpu_benchmarks.md).
    """
    def fallback():
        return lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count, precision=precision, **kwargs)

    dilated = any(d != 1 for d in (*(lhs_dilation or ()), *(rhs_dilation or ())))
    if (jax.default_backend() != "cpu" or lhs.ndim != 4 or isinstance(padding, str) or dilated
            or kwargs.get("batch_group_count", 1) != 1
            or lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
            != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)):
        return fallback()
    if feature_group_count != 1:
        if feature_group_count == lhs.shape[-1] == rhs.shape[-1] and rhs.shape[2] == 1:
            return depthwise_conv_shifted(lhs, rhs, window_strides, padding, precision=precision)
        return fallback()
    kh, kw, cin, cout = rhs.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = window_strides
    h, w = lhs.shape[1] + pt + pb, lhs.shape[2] + pl + pr
    oh, ow = (h - kh) // sh + 1, (w - kw) // sw + 1
    if oh * ow > _MAX_POSITIONS_FOR_MATMUL:
        if (kh, kw) == (1, 1) and not any((pt, pb, pl, pr)) and POINTWISE_GRADIENTS_AS_MATMULS:
            out = _pointwise_conv(lhs, rhs, (int(sh), int(sw)))
            return out.astype(kwargs.get("preferred_element_type") or out.dtype)
        if kh * kw * cin <= _MAX_TERMS_FOR_SHIFTED_SUM:
            out = _few_channel_conv(lhs, rhs, (int(sh), int(sw)),
                                    ((int(pt), int(pb)), (int(pl), int(pr))))
            return out.astype(kwargs.get("preferred_element_type") or out.dtype)
        return fallback()
    x = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    patches = jnp.concatenate(
        [x[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
         for i in range(kh) for j in range(kw)],
        axis=-1,
    )  # (B, oh, ow, kh*kw*cin), ordered like rhs.reshape(kh*kw*cin, cout)
    out = jnp.matmul(patches, rhs.reshape(kh * kw * cin, cout), precision=precision)
    return out.astype(kwargs.get("preferred_element_type") or out.dtype)


def depthwise_conv_shifted(x: jax.Array, w: jax.Array, strides, padding, *, precision=None
                           ) -> jax.Array:
    """Depthwise NHWC conv (kernel (kh, kw, 1, C)) as a sum of kh*kw shifted, strided slices
    times one kernel tap each, which XLA fuses into one loop; XLA:CPU's grouped convolution is
    far slower (bench/cpu_convs.py). The gradient is written out (`_depthwise_bwd`)."""
    del precision  # elementwise float32 products: nothing to choose
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    return _depthwise(x, w, strides, padding)


def _tap_windows(xp, kh, kw, strides, out_hw):
    """(i, j, the slice of the padded input that kernel tap (i, j) multiplies)."""
    (sh, sw), (oh, ow) = strides, out_hw
    for i in range(kh):
        for j in range(kw):
            yield i, j, xp[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]


def _depthwise_forward(x, w, strides, padding):
    kh, kw = w.shape[0], w.shape[1]
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out_hw = ((xp.shape[1] - kh) // strides[0] + 1, (xp.shape[2] - kw) // strides[1] + 1)
    out = None
    for i, j, window in _tap_windows(xp, kh, kw, strides, out_hw):
        out = window * w[i, j, 0] if out is None else out + window * w[i, j, 0]
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x, w, strides, padding):
    return _depthwise_forward(x, w, strides, padding)


def _depthwise_fwd(x, w, strides, padding):
    return _depthwise_forward(x, w, strides, padding), (x, w)


def _depthwise_bwd(strides, padding, residuals, g):
    """dx as one more shifted pass (the stride-dilated g correlated with the flipped kernel),
    dw as one reduction per tap. Autodiff of the forward gives a padded copy of g per tap
    instead: 1.9x slower over EfficientNet-Lite0's layers (bench/cpu_convs.py)."""
    x, w = residuals
    kh, kw = w.shape[0], w.shape[1]
    (sh, sw), ((pt, pb), (pl, pr)) = strides, padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    oh, ow = g.shape[1], g.shape[2]
    dw = jnp.stack([jnp.sum(g * window, axis=(0, 1, 2))
                    for _, _, window in _tap_windows(xp, kh, kw, strides, (oh, ow))])
    dw = dw.reshape(kh, kw, 1, -1).astype(w.dtype)
    # dxp[q] = sum_i gd[q + i] * w[kh - 1 - i], gd = g spread out by the stride, padded by k-1.
    gd = lax.pad(g, jnp.zeros((), g.dtype), (
        (0, 0, 0), (kh - 1, xp.shape[1] - sh * (oh - 1) - 1, sh - 1),
        (kw - 1, xp.shape[2] - sw * (ow - 1) - 1, sw - 1), (0, 0, 0)))
    dxp = _depthwise_forward(gd, w[::-1, ::-1], (1, 1), ((0, 0), (0, 0)))
    dx = dxp[:, pt : pt + x.shape[1], pl : pl + x.shape[2], :]
    return dx.astype(x.dtype), dw


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _few_channel_conv(x, w, strides, padding):
    """A conv with few input channels (an RGB stem) as the sum over kernel taps and input
    channels of a shifted slice times that tap's row of output weights. XLA fuses the sum, and
    the ReLU and pooling after it, into one loop; XLA:CPU's convolution runs a 3-channel input
    at ~25 GFLOP/s and writes its full-size output first. Under differentiation, forward and
    gradients are lax's: there XLA would recompute the sum in every fusion that reads the
    output, and the seed CNN's train step ran far slower."""
    kh, kw, cin, _ = w.shape
    (pt, pb), (pl, pr) = padding
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    out_hw = ((xp.shape[1] - kh) // strides[0] + 1, (xp.shape[2] - kw) // strides[1] + 1)
    out = None
    for i, j, window in _tap_windows(xp, kh, kw, strides, out_hw):
        for c in range(cin):
            term = window[..., c : c + 1] * w[i, j, c]
            out = term if out is None else out + term
    return out


def _lax_conv(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)


def _few_channel_conv_fwd(x, w, strides, padding):
    return _lax_conv(x, w, strides, padding), (x, w)


def _few_channel_conv_bwd(strides, padding, residuals, g):
    x, w = residuals
    return jax.vjp(lambda x, w: _lax_conv(x, w, strides, padding), x, w)[1](g)


_few_channel_conv.defvjp(_few_channel_conv_fwd, _few_channel_conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _pointwise_conv(x, w, strides):
    """A 1x1 convolution (no padding): lax's forward; both gradients as matmuls over the
    (strided) pixels, which XLA:CPU runs faster than its gradient convolutions and the
    channels-first copies it makes for the kernel gradient (bench/model_variants.py)."""
    return _lax_conv(x, w, strides, ((0, 0), (0, 0)))


def _pointwise_conv_fwd(x, w, strides):
    return _pointwise_conv(x, w, strides), (x, w)


def _pointwise_conv_bwd(strides, residuals, g):
    x, w = residuals
    (sh, sw), (b, oh, ow, cout) = strides, g.shape
    g_pixels = g.reshape(-1, cout)
    kernel = w.reshape(w.shape[2], cout)
    dx = (g_pixels @ kernel.T).reshape(b, oh, ow, -1).astype(x.dtype)
    if (sh, sw) != (1, 1):  # back onto the pixels the strided conv read, zeros between
        dx = lax.pad(dx, jnp.zeros((), dx.dtype), (
            (0, 0, 0), (0, x.shape[1] - 1 - (oh - 1) * sh, sh - 1),
            (0, x.shape[2] - 1 - (ow - 1) * sw, sw - 1), (0, 0, 0)))
    pixels = x[:, ::sh, ::sw, :].reshape(-1, x.shape[-1])
    dw = pixels.T @ g_pixels
    return dx, dw.reshape(w.shape).astype(w.dtype)


_pointwise_conv.defvjp(_pointwise_conv_fwd, _pointwise_conv_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max-pool, stride 2, VALID (odd edges dropped), NHWC: `nnx.max_pool(x, (2, 2),
    strides=(2, 2), padding="VALID")`, on CPU as the elementwise max of the four strided
    slices with a custom gradient. XLA:CPU's gradient of the windowed max (select-and-scatter)
    is slow, and a reduction (reshape + max) lets its YNNPACK fusion pull the convolutions
    before it in (bench/cpu_convs.py, bench/model_variants.py). Values and gradients are
    equal to the windowed max's: the gradient goes to the first maximum of each window."""
    if jax.default_backend() != "cpu":
        return nnx.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    return _max_pool_2x2(x)


def _window_taps(x: jax.Array) -> tuple[jax.Array, ...]:
    """The four strided slices of the 2x2 windows, in window order (row-major)."""
    h, w = x.shape[1] // 2 * 2, x.shape[2] // 2 * 2
    return tuple(x[:, i:h:2, j:w:2] for i in (0, 1) for j in (0, 1))


@jax.custom_vjp
def _max_pool_2x2(x: jax.Array) -> jax.Array:
    top_left, top_right, bottom_left, bottom_right = _window_taps(x)
    return jnp.maximum(jnp.maximum(top_left, top_right), jnp.maximum(bottom_left, bottom_right))


def _max_pool_2x2_fwd(x):
    out = _max_pool_2x2(x)
    return out, (x, out)


def _max_pool_2x2_bwd(residuals, g):
    # The gradient of each window goes to its first maximum (as select-and-scatter does), built
    # by interleaving the four taps' shares: one elementwise pass, no scatter and no pad per tap
    # (with jnp.maximum's own gradient, which splits ties, the seed CNN's train step is 1.15x
    # slower: bench/model_variants.py slices_max_pool).
    x, out = residuals
    taken = jnp.zeros(out.shape, bool)
    shares = []
    for tap in _window_taps(x):
        first = (tap == out) & ~taken
        taken = taken | first
        shares.append(jnp.where(first, g, jnp.zeros_like(g)))
    b, h2, w2, c = out.shape
    rows = [jnp.stack(shares[i:i + 2], axis=3).reshape(b, h2, 2 * w2, c) for i in (0, 2)]
    dx = jnp.stack(rows, axis=2).reshape(b, 2 * h2, 2 * w2, c)
    pad = ((0, 0), (0, x.shape[1] - 2 * h2), (0, x.shape[2] - 2 * w2), (0, 0))
    return (jnp.pad(dx, pad) if any(p[1] for p in pad) else dx,)


_max_pool_2x2.defvjp(_max_pool_2x2_fwd, _max_pool_2x2_bwd)


def fusion_boundary(x: jax.Array) -> jax.Array:
    """Identity that XLA:CPU's YNNPACK fusion does not cross (a reduce_precision to x's own
    precision, which changes no bit). Put between a network's logits and the reductions after
    them (softmax, loss): otherwise one fusion holds the reduction and the network's last
    layers and runs them far slower (VGG-16's three dense layers + softmax at batch 8: 1.24 s
    instead of 57 ms)."""
    if jax.default_backend() != "cpu" or not jnp.issubdtype(x.dtype, jnp.floating):
        return x
    info = jnp.finfo(x.dtype)
    return lax.reduce_precision(x, exponent_bits=info.nexp, mantissa_bits=info.nmant)


def neighbouring_pixel_residual(x: jax.Array) -> jax.Array:
    """x minus its 2x nearest down-then-up-sampled copy ("NPR", Tan et al., CVPR 2024).

    Generators upsample (transposed convs, nearest/bilinear + conv), which ties each pixel to
    its neighbours in 2x2 cells. This residual removes the image content shared within a cell
    and keeps exactly those local relations, so a detector need not learn to find them. Works
    on NHWC batches of any size (odd sizes: the last row/column compares to itself).
    """
    h, w = x.shape[1], x.shape[2]
    anchors = x[:, ::2, ::2, :]
    up = jnp.repeat(jnp.repeat(anchors, 2, axis=1), 2, axis=2)[:, :h, :w, :]
    return x - up


INPUT_TRANSFORMS = {"npr": neighbouring_pixel_residual}


def input_transform(name: str | None):
    """The named input transform (None -> identity); errors list the valid names."""
    if name in (None, "", "none"):
        return lambda x: x
    if name not in INPUT_TRANSFORMS:
        raise ValueError(f"unknown input_transform {name!r}; valid: none, "
                         f"{', '.join(INPUT_TRANSFORMS)}")
    return INPUT_TRANSFORMS[name]


class ParamGroups:
    """Mixin for classifiers: `HEAD_MODULES` names the head's top-level submodules.

    `head_filter()` / `backbone_filter()` are nnx filters for freezing or for per-group
    optimisers, e.g. `nnx.state(model, nnx.All(nnx.Param, model.backbone_filter()))`.
    """

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def head_filter(cls) -> Callable[[tuple, Any], bool]:
        return lambda path, _x: len(path) > 0 and path[0] in cls.HEAD_MODULES

    @classmethod
    def backbone_filter(cls) -> Callable[[tuple, Any], bool]:
        return lambda path, _x: len(path) > 0 and path[0] not in cls.HEAD_MODULES



class Classifier(ParamGroups):
    """Mixin for the CNN classifiers: the family's `feature_map` (B, h, w, C) ->
    `pool_feature_map` (global average pool) -> `head` (the `HEAD_MODULES[0]` layer) -> logits.

    Grad-CAM (`inference.explain`) differentiates `head(pool_feature_map(feature_map))`.
    Families with another pooling or a head with dropout override those methods.
    """

    def init_common(self, family: str, variant: Any, variants: Sequence[str], num_classes: int,
                    dtype: Any, transform: str | None) -> str:
        """Checks the variant and the input transform; sets the fields every family has.
        Returns the variant's name."""
        variant = str(variant)
        if variant not in variants:
            raise ValueError(f"Unknown {family} variant {variant!r}; valid variants: "
                             f"{', '.join(variants)}")
        self.variant, self.num_classes, self.dtype = variant, num_classes, dtype
        self.input_transform = transform
        input_transform(transform)  # fails early on an unknown name
        return variant

    def pool_feature_map(self, fmap: jax.Array) -> jax.Array:
        return jnp.mean(fmap, axis=(1, 2))

    def features(self, x: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        """Pooled features (B, F); `rngs` is for families with stochastic layers."""
        del rngs
        return self.pool_feature_map(self.feature_map(x, train=train))

    def head(self, feats: jax.Array, *, train: bool = False,
             rngs: nnx.Rngs | None = None) -> jax.Array:
        del train, rngs
        return getattr(self, self.HEAD_MODULES[0])(feats)

    def __call__(self, x: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.head(self.features(x, train=train, rngs=rngs), train=train, rngs=rngs)


def conv2d(cin: int, cout: int, k: int, stride: int, pad: int, *, kernel_init, rngs,
           dtype, param_dtype, groups: int = 1, use_bias: bool = False) -> nnx.Conv:
    """A square conv with PyTorch's symmetric padding on the CPU-friendly path.

    Explicit (pad, pad) pairs, never "SAME" (asymmetric at stride 2), so imported torch/Keras
    weights see the same pixels. Bias-free by default: these convs feed a BatchNorm.
    """
    return nnx.Conv(
        cin, cout, kernel_size=(k, k), strides=(stride, stride),
        padding=((pad, pad), (pad, pad)), feature_group_count=groups, use_bias=use_bias,
        kernel_init=kernel_init, conv_general_dilated=cpu_friendly_conv, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs,
    )
