"""BiSeNet face parsing (zllrunning/face-parsing.PyTorch) in ``flax.nnx``.

Reference: face-parsing.PyTorch ``model.py`` + ``resnet.py``, the architecture of its
``79999_iter.pth`` (19 CelebAMask-HQ classes); no separate spatial path (the fusion reads the
ResNet-18's 1/8 map). The nnx tree mirrors the torch modules, so parameter names follow its state
dict (importer: ``deepfake_jax.weights.bisenet``). Resampling as torch: nearest by torch's index
rule, bilinear with ``align_corners=True``. Ours: ``upsample="conv_grid"``, ``detail_stride`` 4/2.
Input NHWC, normalised, H and W divisible by 32; ``model(x)`` -> logits (N, H, W, C),
``train=True`` -> ``(out, aux16, aux32)``. Freezing: backbone = ``cp.resnet``, the rest is head.

Details: docs/models.md#deepfake_jaxmodelsbisenetpy
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deepfake_jax.models import layers, resnet
from deepfake_jax.models.layers import ParamGroups

# face-parsing.PyTorch: nn.init.kaiming_normal_(w, a=1) on its own convs -> std 1/sqrt(fan_in).
_head_conv = functools.partial(
    layers.conv2d, kernel_init=nnx.initializers.variance_scaling(1.0, "fan_in", "normal"))

# variant -> (ResNet-18 base width, context-path channels)
_VARIANTS: dict[str, tuple[int, int]] = {
    "resnet18": (64, 128),
    "half": (32, 64),  # ~1/4 of the FLOPs: buys 2x the input side on a CPU budget
    "quarter": (16, 32),
    "tiny": (8, 16),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
DETAIL_STRIDES: tuple[int, ...] = (8, 4, 2)
BACKBONE_PATH: tuple[str, ...] = ("cp", "resnet")


# ----------------------------------------------------------------------------- resampling
def torch_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index per output index of torch ``F.interpolate(mode="nearest", size=...)``."""
    if out_size == in_size:
        return np.arange(out_size)
    if out_size == 2 * in_size:
        return np.arange(out_size) >> 1
    scale = np.float32(in_size) / np.float32(out_size)  # torch computes this in float32
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def nearest_resize(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """NHWC nearest resize with torch's index rule (``F.interpolate(x, size, "nearest")``)."""
    for axis, out_size in ((1, size[0]), (2, size[1])):
        in_size = x.shape[axis]
        if out_size == 2 * in_size:  # BiSeNet's case: a repeat (cheaper gradient than a gather)
            x = jnp.repeat(x, 2, axis=axis)
        elif out_size != in_size:
            x = jnp.take(x, torch_nearest_indices(in_size, out_size), axis=axis)
    return x


def _linear_weights(src: np.ndarray, in_size: int) -> np.ndarray:
    """(out, in) weights reading each output from source position ``src[out]`` linearly."""
    lo = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    hi = np.minimum(lo + 1, in_size - 1)
    frac = src - lo
    m = np.zeros((len(src), in_size))
    np.add.at(m, (np.arange(len(src)), lo), 1.0 - frac)
    np.add.at(m, (np.arange(len(src)), hi), frac)
    return m


def align_corners_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) linear-interpolation weights of torch's ``align_corners=True`` resize."""
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    return _linear_weights(np.arange(out_size) * scale, in_size)


def conv_grid_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) linear-interpolation weights on the convolutions' own grid.

    A conv with torch's symmetric padding (``k // 2``) and stride s centres its output i on
    input pixel ``s * i``, so a map of stride s samples the image at 0, s, 2s, ... Output j of
    an upsampling by ``r = out / in`` therefore reads source position ``j / r`` (the last
    ``r - 1`` outputs, past the last sample, repeat it). ``align_corners=True`` instead
    stretches the first-to-last span and drifts from this grid by up to ``1 - 1/r`` source
    pixels across the map: at stride 2 a position-dependent shift of 0 to 1 output pixel,
    which no translation-invariant network can learn away (README "Face parsing": perfect
    stride-2 features upsampled that way score mIoU 0.84 on generated faces, 0.97 this way;
    bench/parsing_upsampling_bound.py).
    """
    return _linear_weights(np.arange(out_size) * (in_size / out_size), in_size)


UPSAMPLING: dict[str, Callable[[int, int], np.ndarray]] = {
    "align_corners": align_corners_matrix,  # the reference (torch align_corners=True)
    "conv_grid": conv_grid_matrix,
}


def _taps(m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A sparse (out, in) matrix as per-row (indices, weights), padded with zero weights."""
    width = max(1, int((m != 0).sum(axis=1).max()))
    idx = np.zeros((m.shape[0], width), np.int32)
    w = np.zeros((m.shape[0], width), np.float32)
    for row in range(m.shape[0]):
        cols = np.nonzero(m[row])[0]
        idx[row, :len(cols)] = cols
        w[row, :len(cols)] = m[row, cols]
    return idx, w


def _apply_taps(x: jax.Array, axis: int, idx: np.ndarray, w: np.ndarray) -> jax.Array:
    shape = [1] * x.ndim
    shape[axis] = idx.shape[0]
    out = None
    for k in range(idx.shape[1]):
        term = jnp.take(x, idx[:, k], axis=axis) * jnp.asarray(w[:, k].reshape(shape), x.dtype)
        out = term if out is None else out + term
    return out


# Gathers per input in the gradient above which the dense matrix is faster (measured on CPU:
# 2x up-sampling needs 3-4 and gains ~3x; 8x needs ~17 and is slower than a matmul).
_MAX_GRADIENT_TAPS = 4


@functools.cache
def _linear_resampler(in_size: int, out_size: int, axis: int, mode: str) -> Callable:
    """Linear resampling along one axis (1 or 2 of NHWC) with `UPSAMPLING[mode]`'s weights.

    Each output is a weighted sum of at most 2 inputs, so a dense interpolation matrix (a
    matmul with in_size terms per output) wastes most of its work, and a plain gather's
    gradient is a scatter-add, slow on XLA CPU. For small factors both directions are gathers:
    the gradient applies the transposed matrix the same way (each input gathers the few outputs
    that read it). Large up-sampling factors (many outputs per input) keep the matmul.
    """
    m = UPSAMPLING[mode](in_size, out_size)
    forward, backward = _taps(m), _taps(m.T)
    if backward[0].shape[1] > _MAX_GRADIENT_TAPS:
        spec = "oi,nihc->nohc" if axis == 1 else "oi,nhic->nhoc"
        return lambda x: jnp.einsum(spec, jnp.asarray(m, x.dtype), x)

    @jax.custom_vjp
    def resample(x):
        return _apply_taps(x, axis, *forward)

    resample.defvjp(lambda x: (resample(x), None),
                    lambda _, g: (_apply_taps(g, axis, *backward),))
    return resample


def bilinear_resize(x: jax.Array, size: tuple[int, int], mode: str = "align_corners"
                    ) -> jax.Array:
    """NHWC bilinear resize; "align_corners" = ``F.interpolate(x, size, mode="bilinear",
    align_corners=True)``, "conv_grid" = `conv_grid_matrix`'s."""
    if mode not in UPSAMPLING:
        raise ValueError(f"Unknown upsampling {mode!r}; valid: {', '.join(UPSAMPLING)}")
    for axis, out_size in ((1, size[0]), (2, size[1])):
        if x.shape[axis] != out_size:
            x = _linear_resampler(x.shape[axis], out_size, axis, mode)(x)
    return x


def bilinear_resize_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """NHWC ``F.interpolate(x, size, mode="bilinear", align_corners=True)``."""
    return bilinear_resize(x, size, "align_corners")


def _global_mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x, axis=(1, 2), keepdims=True)


# ----------------------------------------------------------------------------- modules
class ConvBNReLU(nnx.Module):
    """Conv (no bias) + BatchNorm + ReLU; ``conv`` / ``bn`` as in the reference."""

    def __init__(self, cin, cout, k, *, pad, rngs, dtype, param_dtype, momentum):
        self.conv = _head_conv(cin, cout, k, 1, pad, rngs=rngs, dtype=dtype,
                               param_dtype=param_dtype)
        self.bn = resnet._bn(cout, rngs=rngs, dtype=dtype, param_dtype=param_dtype,
                             momentum=momentum)

    def __call__(self, x, *, train: bool):
        return jax.nn.relu(self.bn(self.conv(x), use_running_average=not train))


class AttentionRefinementModule(nnx.Module):
    def __init__(self, cin, cout, *, rngs, dtype, param_dtype, momentum):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv = ConvBNReLU(cin, cout, 3, pad=1, momentum=momentum, **kw)
        self.conv_atten = _head_conv(cout, cout, 1, 1, 0, **kw)
        self.bn_atten = resnet._bn(cout, momentum=momentum, **kw)

    def __call__(self, x, *, train: bool):
        feat = self.conv(x, train=train)
        atten = self.bn_atten(self.conv_atten(_global_mean(feat)), use_running_average=not train)
        return feat * jax.nn.sigmoid(atten)


class FeatureFusionModule(nnx.Module):
    def __init__(self, cin, cout, *, rngs, dtype, param_dtype, momentum):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.convblk = ConvBNReLU(cin, cout, 1, pad=0, momentum=momentum, **kw)
        self.conv1 = _head_conv(cout, cout // 4, 1, 1, 0, **kw)
        self.conv2 = _head_conv(cout // 4, cout, 1, 1, 0, **kw)

    def __call__(self, fsp, fcp, *, train: bool):
        feat = self.convblk(jnp.concatenate([fsp, fcp], axis=-1), train=train)
        atten = jax.nn.sigmoid(self.conv2(jax.nn.relu(self.conv1(_global_mean(feat)))))
        return feat * atten + feat


class BiSeNetOutput(nnx.Module):
    def __init__(self, cin, mid, num_classes, *, rngs, dtype, param_dtype, momentum):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv = ConvBNReLU(cin, mid, 3, pad=1, momentum=momentum, **kw)
        self.conv_out = _head_conv(mid, num_classes, 1, 1, 0, **kw)

    def __call__(self, x, *, train: bool):
        return self.conv_out(self.conv(x, train=train))


class DetailFusion(nnx.Module):
    """Not in the reference: one step of a decoder (as DeepLabv3+'s) that brings the fused
    features to a finer backbone map: bilinear x2, concat the backbone map, ConvBNReLU 3x3."""

    def __init__(self, cin_coarse, cin_fine, cout, *, rngs, dtype, param_dtype, momentum,
                 upsample: str):
        self.conv = ConvBNReLU(cin_coarse + cin_fine, cout, 3, pad=1, rngs=rngs, dtype=dtype,
                               param_dtype=param_dtype, momentum=momentum)
        self.upsample = upsample

    def __call__(self, coarse, fine, *, train: bool):
        up = bilinear_resize(coarse, fine.shape[1:3], self.upsample)
        return self.conv(jnp.concatenate([up, fine], axis=-1), train=train)


class ResNet18Features(nnx.Module):
    """torchvision ResNet-18 without ``fc``, returning the 1/8, 1/16 and 1/32 feature maps.

    Built from ``models.resnet``'s blocks, so names (``layerL.i.downsample_conv`` ...) and the
    torchvision key mapping are the ResNet's.
    """

    def __init__(self, width, *, rngs, dtype, param_dtype, momentum):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv1 = resnet._conv(3, width, 7, 2, 3, **kw)
        self.bn1 = resnet._bn(width, momentum=momentum, **kw)
        cin = width
        for si in range(4):
            planes = width * 2**si
            blocks = []
            for bi in range(2):
                stride = 2 if (si > 0 and bi == 0) else 1
                blocks.append(resnet.BasicBlock(cin, planes, stride, momentum=momentum,
                                                zero_last=False, **kw))
                cin = planes
            setattr(self, f"layer{si + 1}", nnx.List(blocks))

    def __call__(self, x, *, train: bool):
        """``(feat2, feat4, feat8, feat16, feat32)``: the stem (before the max pool) and the
        four stages; unused maps cost nothing under ``jit``."""
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        feats = [x]
        x = resnet.stem_max_pool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x, train=train)
            feats.append(x)
        return tuple(feats)


class ContextPath(nnx.Module):
    def __init__(self, width, mid, *, rngs, dtype, param_dtype, momentum,
                 upsample: str = "align_corners"):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, momentum=momentum)
        self.upsample = upsample
        self.resnet = ResNet18Features(width, **kw)
        self.arm16 = AttentionRefinementModule(4 * width, mid, **kw)
        self.arm32 = AttentionRefinementModule(8 * width, mid, **kw)
        self.conv_head32 = ConvBNReLU(mid, mid, 3, pad=1, **kw)
        self.conv_head16 = ConvBNReLU(mid, mid, 3, pad=1, **kw)
        self.conv_avg = ConvBNReLU(8 * width, mid, 1, pad=0, **kw)

    def __call__(self, x, *, train: bool):
        feat2, feat4, feat8, feat16, feat32 = self.resnet(x, train=train)
        avg = self.conv_avg(_global_mean(feat32), train=train)  # (N, 1, 1, mid)
        feat32_sum = self.arm32(feat32, train=train) + avg  # nearest 1x1 -> HxW == broadcast
        feat32_up = self.conv_head32(self._up(feat32_sum, feat16.shape[1:3]), train=train)
        feat16_sum = self.arm16(feat16, train=train) + feat32_up
        feat16_up = self.conv_head16(self._up(feat16_sum, feat8.shape[1:3]), train=train)
        return (feat2, feat4, feat8), feat16_up, feat32_up  # backbone 1/2-1/8, 1/8, 1/16

    def _up(self, x, size):
        """x2 up-sampling of the context maps: the reference's nearest (odd positions read the
        left neighbour, half a cell off the conv grid), or linear on the grid."""
        if self.upsample == "align_corners":
            return nearest_resize(x, size)
        return bilinear_resize(x, size, self.upsample)


class BiSeNet(nnx.Module, ParamGroups):
    """face-parsing.PyTorch BiSeNet. See the module docstring for architecture and naming."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("ffm", "detail4", "detail2", "conv_out",
                                               "conv_out16", "conv_out32")

    def __init__(
        self,
        variant: str = "resnet18",
        num_classes: int = 19,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        bn_momentum: float = 0.9,
        detail_stride: int = 8,
        upsample: str = "align_corners",
    ):
        variant = str(variant)
        if variant not in _VARIANTS:
            raise ValueError(
                f"Unknown BiSeNet variant {variant!r}; valid variants: {', '.join(VARIANTS)}")
        if detail_stride not in DETAIL_STRIDES:
            raise ValueError(f"BiSeNet detail_stride must be one of {DETAIL_STRIDES} (8 = the "
                             f"reference), got {detail_stride!r}")
        if upsample not in UPSAMPLING:
            raise ValueError(f"BiSeNet upsample must be one of {', '.join(UPSAMPLING)} "
                             f"(align_corners = the reference), got {upsample!r}")
        width, mid = _VARIANTS[variant]
        self.variant = variant
        self.upsample = upsample
        self.detail_stride = int(detail_stride)
        self.num_classes = num_classes
        self.dtype = dtype
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, momentum=bn_momentum)
        self.cp = ContextPath(width, mid, upsample=upsample, **kw)
        self.ffm = FeatureFusionModule(2 * width + mid, 2 * mid, **kw)
        out_channels = 2 * mid
        if detail_stride <= 4:  # the 1/4 map is layer1's (width channels)
            self.detail4 = DetailFusion(out_channels, width, mid, upsample=upsample, **kw)
            out_channels = mid
        if detail_stride <= 2:  # the 1/2 map is the stem's (width channels)
            self.detail2 = DetailFusion(out_channels, width, mid // 2, upsample=upsample, **kw)
            out_channels = mid // 2
        self.conv_out = BiSeNetOutput(out_channels, out_channels, num_classes, **kw)
        self.conv_out16 = BiSeNetOutput(mid, mid // 2, num_classes, **kw)
        self.conv_out32 = BiSeNetOutput(mid, mid // 2, num_classes, **kw)

    @staticmethod
    def _is_backbone(path: tuple) -> bool:
        return tuple(str(k) for k in path[:len(BACKBONE_PATH)]) == BACKBONE_PATH

    @classmethod
    def backbone_filter(cls) -> Callable[[tuple, Any], bool]:
        """Variables of the ResNet-18 inside the context path (``cp.resnet``)."""
        return lambda path, _x: cls._is_backbone(path)

    @classmethod
    def head_filter(cls) -> Callable[[tuple, Any], bool]:
        """Everything but the backbone (context refinement, fusion, output heads)."""
        return lambda path, _x: len(path) > 0 and not cls._is_backbone(path)

    def _check_input(self, x) -> jax.Array:
        x = jnp.asarray(x, self.dtype)
        if x.ndim != 4 or x.shape[1] % 32 or x.shape[2] % 32:
            raise ValueError(f"BiSeNet expects NHWC input with height and width divisible by "
                             f"32, got shape {tuple(x.shape)}")
        return x

    def all_heads(self, x: jax.Array, *, train: bool = False, aux_at_input_size: bool = True
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
        """``(out, aux16, aux32)`` logits, each (N, H, W, num_classes), in either mode.

        ``aux_at_input_size=False`` leaves the auxiliary logits on their own 1/8 and 1/16 grids
        (a loss against subsampled labels there skips two full-size upsamplings and softmaxes:
        302 -> 267 ms a training step for ``quarter`` at 128 px, bench/bisenet_train_step.py).
        """
        x = self._check_input(x)
        h, w = x.shape[1:3]
        backbone, cp8, cp16 = self.cp(x, train=train)
        fused = self._decode(backbone, cp8, train=train)
        out = bilinear_resize(self.conv_out(fused, train=train), (h, w), self.upsample)
        aux = (self.conv_out16(cp8, train=train), self.conv_out32(cp16, train=train))
        if aux_at_input_size:
            aux = tuple(bilinear_resize(y, (h, w), self.upsample) for y in aux)
        return (out, *aux)

    def _decode(self, backbone, cp8, *, train: bool) -> jax.Array:
        """The fused features at ``detail_stride``: FFM at 1/8, then the detail steps."""
        feat2, feat4, feat8 = backbone
        fused = self.ffm(feat8, cp8, train=train)
        if self.detail_stride <= 4:
            fused = self.detail4(fused, feat4, train=train)
        if self.detail_stride <= 2:
            fused = self.detail2(fused, feat2, train=train)
        return fused

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None):
        """Eval: main logits (N, H, W, C). Train: ``(out, aux16, aux32)`` (for the losses)."""
        del rngs  # no stochastic layers; accepted so every family has the same call signature
        if train:
            return self.all_heads(x, train=True)
        x = self._check_input(x)
        h, w = x.shape[1:3]
        backbone, cp8, _ = self.cp(x, train=False)
        fused = self._decode(backbone, cp8, train=False)
        return bilinear_resize(self.conv_out(fused, train=False), (h, w), self.upsample)
