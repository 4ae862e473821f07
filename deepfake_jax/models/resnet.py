"""ResNet family (torchvision architecture) in ``flax.nnx``.

torchvision-compatible ResNet (``"18"``, ``"34"``, ``"50"``, ``"101"``, ``"152"``: v1.5, stride
on the 3x3 conv; ``"tiny"`` for tests); parameter names follow torchvision's state dict (``conv1``,
``bn1``, ``layerL.i.convK``, ``downsample_conv`` / ``downsample_bn``, ``fc``). All paddings are
explicit symmetric pairs identical to PyTorch's (never ``"SAME"``, which is asymmetric at stride
2). Input NHWC, normalised. Options: ``stem="small"`` (one 3x3/1 conv, no pooling),
``input_transform="npr"``. Freezing: ``HEAD_MODULES = ("fc",)`` is the head, every other
top-level submodule the backbone.

Details: docs/models.md#deepfake_jaxmodelsresnetpy
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from deepfake_jax.models import layers
from deepfake_jax.models.layers import Classifier

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu") for convs.
_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")

# variant -> (block kind, blocks per stage, base width)
_VARIANTS: dict[str, tuple[str, tuple[int, int, int, int], int | None]] = {
    "tiny": ("basic", (1, 1, 1, 1), 16),
    "18": ("basic", (2, 2, 2, 2), None),
    "34": ("basic", (3, 4, 6, 3), None),
    "50": ("bottleneck", (3, 4, 6, 3), None),
    "101": ("bottleneck", (3, 4, 23, 3), None),
    "152": ("bottleneck", (3, 8, 36, 3), None),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)

_BN_EPS = 1e-5


_conv = functools.partial(layers.conv2d, kernel_init=_conv_init)


def _bn(c, *, rngs, dtype, param_dtype, momentum, zero=False) -> nnx.BatchNorm:
    return nnx.BatchNorm(
        c,
        momentum=momentum,
        epsilon=_BN_EPS,
        scale_init=nnx.initializers.zeros_init() if zero else nnx.initializers.ones_init(),
        dtype=dtype,
        param_dtype=param_dtype,
        rngs=rngs,
    )


def stem_max_pool(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(3, stride=2, padding=1)``: the padding never wins (it is -inf)."""
    return nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))


class _Block(nnx.Module):
    """Shared residual logic; subclasses define ``_residual``."""

    expansion: ClassVar[int] = 1

    def _make_downsample(self, cin, cout, stride, **kw):
        if stride != 1 or cin != cout:
            conv_kw = {k: v for k, v in kw.items() if k != "momentum"}
            self.downsample_conv = _conv(cin, cout, 1, stride, 0, **conv_kw)
            self.downsample_bn = _bn(cout, **kw)
        else:
            self.downsample_conv = nnx.data(None)
            self.downsample_bn = nnx.data(None)

    def shortcut(self, x: jax.Array, *, train: bool) -> jax.Array:
        if self.downsample_conv is None:
            return x
        return self.downsample_bn(self.downsample_conv(x), use_running_average=not train)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        return jax.nn.relu(self._residual(x, train=train) + self.shortcut(x, train=train))


class BasicBlock(_Block):
    expansion: ClassVar[int] = 1

    def __init__(self, cin, planes, stride, *, rngs, dtype, param_dtype, momentum, zero_last):
        cout = planes * self.expansion
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        bkw = dict(ckw, momentum=momentum)
        self.conv1 = _conv(cin, planes, 3, stride, 1, **ckw)
        self.bn1 = _bn(planes, **bkw)
        self.conv2 = _conv(planes, cout, 3, 1, 1, **ckw)
        self.bn2 = _bn(cout, zero=zero_last, **bkw)
        self._make_downsample(cin, cout, stride, **bkw)

    def _residual(self, x, *, train):
        ura = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        return self.bn2(self.conv2(y), use_running_average=ura)


class Bottleneck(_Block):
    expansion: ClassVar[int] = 4

    def __init__(self, cin, planes, stride, *, rngs, dtype, param_dtype, momentum, zero_last):
        cout = planes * self.expansion
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        bkw = dict(ckw, momentum=momentum)
        self.conv1 = _conv(cin, planes, 1, 1, 0, **ckw)
        self.bn1 = _bn(planes, **bkw)
        self.conv2 = _conv(planes, planes, 3, stride, 1, **ckw)  # v1.5: stride on the 3x3
        self.bn2 = _bn(planes, **bkw)
        self.conv3 = _conv(planes, cout, 1, 1, 0, **ckw)
        self.bn3 = _bn(cout, zero=zero_last, **bkw)
        self._make_downsample(cin, cout, stride, **bkw)

    def _residual(self, x, *, train):
        ura = not train
        y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=ura))
        y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=ura))
        return self.bn3(self.conv3(y), use_running_average=ura)


class ResNet(Classifier, nnx.Module):
    """torchvision-compatible ResNet. See the module docstring for the parameter naming."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("fc",)

    def __init__(
        self,
        variant: str,
        num_classes: int = 1,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        zero_init_last_bn: bool = False,
        bn_momentum: float = 0.9,
        width: int = 64,
        stem: str = "imagenet",
        input_transform: str | None = None,
    ):
        variant = self.init_common("ResNet", variant, VARIANTS, num_classes, dtype,
                                   input_transform)
        kind, stages, fixed_width = _VARIANTS[variant]
        if fixed_width is not None:
            width = fixed_width
        block_cls = BasicBlock if kind == "basic" else Bottleneck

        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        if stem not in ("imagenet", "small"):
            raise ValueError(f"Unknown ResNet stem {stem!r}; valid stems: imagenet, small")
        self.stem = stem
        if stem == "imagenet":
            self.conv1 = _conv(3, width, 7, 2, 3, **ckw)
        else:
            self.conv1 = _conv(3, width, 3, 1, 1, **ckw)
        self.bn1 = _bn(width, momentum=bn_momentum, **ckw)

        cin = width
        for si, n_blocks in enumerate(stages):
            planes = width * 2**si
            blocks = []
            for bi in range(n_blocks):
                stride = 2 if (si > 0 and bi == 0) else 1
                blocks.append(
                    block_cls(
                        cin,
                        planes,
                        stride,
                        momentum=bn_momentum,
                        zero_last=zero_init_last_bn,
                        **ckw,
                    )
                )
                cin = planes * block_cls.expansion
            setattr(self, f"layer{si + 1}", nnx.List(blocks))
        self.num_features = cin
        self.fc = nnx.Linear(
            cin,
            num_classes,
            use_bias=True,
            # torch nn.Linear default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weight and bias.
            kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=_uniform_bias(cin),
            dtype=dtype,
            param_dtype=param_dtype,
            rngs=rngs,
        )

    # ----------------------------------------------------------------- forward
    def feature_map(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Last stage's feature map (B, H/32, W/32, C) -- e.g. for Grad-CAM."""
        x = layers.input_transform(self.input_transform)(jnp.asarray(x, self.dtype))
        x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=not train))
        if self.stem == "imagenet":
            x = stem_max_pool(x)
        for layer in (self.layer1, self.layer2, self.layer3, self.layer4):
            for block in layer:
                x = block(x, train=train)
        return x



def _uniform_bias(fan_in: int):
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init
