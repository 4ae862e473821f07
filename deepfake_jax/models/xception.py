"""Xception (Chollet 2017) as in Keras ``keras.applications.Xception``, in ``flax.nnx``.

Keras-compatible: architecture, init and BatchNorm (epsilon 1e-3, momentum 0.99) as Keras;
parameter names follow Keras' layer names (``block1.conv1``, ``blockB.sepconvK``, ``middle.i``,
``predictions``). Variants ``"standard"`` and ``"tiny"`` (tests only). A separable conv is a 3x3
depthwise conv (padding 1) then a 1x1 pointwise conv; all convs are bias-free; max-pools use
``padding="SAME"`` (TensorFlow's 'same'). Freezing: ``HEAD_MODULES = ("predictions",)`` is the
head, everything else the backbone.

Details: docs/models.md#deepfake_jaxmodelsxceptionpy
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from deepfake_jax.models import layers
from deepfake_jax.models.layers import Classifier

_glorot = nnx.initializers.glorot_uniform()

# variant -> (stem widths, entry widths (block2..4), middle width/blocks, exit widths)
# exit widths: (block13 sepconv1, block13 sepconv2, block14 sepconv1, block14 sepconv2)
_VARIANTS: dict[str, dict[str, Any]] = {
    "tiny": dict(stem=(8, 16), entry=(16, 16, 32), middle=1, exit=(32, 32, 32, 32)),
    "standard": dict(stem=(32, 64), entry=(128, 256, 728), middle=8,
                     exit=(728, 1024, 1536, 2048)),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)

_BN_EPS = 1e-3


_conv = functools.partial(layers.conv2d, kernel_init=_glorot)


def _bn(c, *, rngs, dtype, param_dtype, momentum) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=momentum, epsilon=_BN_EPS, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)


class SeparableConv(nnx.Module):
    """Keras ``SeparableConv2D(cout, 3, padding='same', use_bias=False)``."""

    def __init__(self, cin, cout, *, rngs, dtype, param_dtype):
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.depthwise = _conv(cin, cin, 3, 1, 1, groups=cin, **ckw)
        self.pointwise = _conv(cin, cout, 1, 1, 0, **ckw)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.pointwise(self.depthwise(x))


def _sep_bn(mod: nnx.Module, k: int, x: jax.Array, train: bool) -> jax.Array:
    return getattr(mod, f"sepconv{k}_bn")(getattr(mod, f"sepconv{k}")(x),
                                          use_running_average=not train)


class StemBlock(nnx.Module):
    """block1: 3x3/2 conv + BN + ReLU, 3x3 conv + BN + ReLU (both 'valid')."""

    def __init__(self, c1, c2, *, rngs, dtype, param_dtype, momentum):
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.conv1 = _conv(3, c1, 3, 2, 0, **ckw)
        self.conv1_bn = _bn(c1, momentum=momentum, **ckw)
        self.conv2 = _conv(c1, c2, 3, 1, 0, **ckw)
        self.conv2_bn = _bn(c2, momentum=momentum, **ckw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        ura = not train
        x = jax.nn.relu(self.conv1_bn(self.conv1(x), use_running_average=ura))
        return jax.nn.relu(self.conv2_bn(self.conv2(x), use_running_average=ura))


class DownBlock(nnx.Module):
    """Entry-flow block (and block13): two SepConv+BN, 3x3/2 max-pool, 1x1/2 conv residual."""

    def __init__(self, cin, c1, c2, *, pre_relu, rngs, dtype, param_dtype, momentum):
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.pre_relu = pre_relu
        self.residual = _conv(cin, c2, 1, 2, 0, **ckw)
        self.residual_bn = _bn(c2, momentum=momentum, **ckw)
        self.sepconv1 = SeparableConv(cin, c1, **ckw)
        self.sepconv1_bn = _bn(c1, momentum=momentum, **ckw)
        self.sepconv2 = SeparableConv(c1, c2, **ckw)
        self.sepconv2_bn = _bn(c2, momentum=momentum, **ckw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        res = self.residual_bn(self.residual(x), use_running_average=not train)
        if self.pre_relu:
            x = jax.nn.relu(x)
        x = jax.nn.relu(_sep_bn(self, 1, x, train))
        x = _sep_bn(self, 2, x, train)
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
        return x + res


class MiddleBlock(nnx.Module):
    """Middle flow: (ReLU + SepConv + BN) x 3 plus the identity."""

    def __init__(self, c, *, rngs, dtype, param_dtype, momentum):
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        for k in (1, 2, 3):
            setattr(self, f"sepconv{k}", SeparableConv(c, c, **ckw))
            setattr(self, f"sepconv{k}_bn", _bn(c, momentum=momentum, **ckw))

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        y = x
        for k in (1, 2, 3):
            y = _sep_bn(self, k, jax.nn.relu(y), train)
        return x + y


class ExitBlock(nnx.Module):
    """block14: SepConv + BN + ReLU, SepConv + BN + ReLU."""

    def __init__(self, cin, c1, c2, *, rngs, dtype, param_dtype, momentum):
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.sepconv1 = SeparableConv(cin, c1, **ckw)
        self.sepconv1_bn = _bn(c1, momentum=momentum, **ckw)
        self.sepconv2 = SeparableConv(c1, c2, **ckw)
        self.sepconv2_bn = _bn(c2, momentum=momentum, **ckw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = jax.nn.relu(_sep_bn(self, 1, x, train))
        return jax.nn.relu(_sep_bn(self, 2, x, train))


class Xception(Classifier, nnx.Module):
    """Keras-compatible Xception. See the module docstring for the parameter naming."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("predictions",)

    def __init__(
        self,
        variant: str = "standard",
        num_classes: int = 1,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        bn_momentum: float = 0.99,
        input_transform: str | None = None,
    ):
        variant = self.init_common("Xception", variant, VARIANTS, num_classes, dtype,
                                   input_transform)
        cfg = _VARIANTS[variant]

        bkw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype, momentum=bn_momentum)
        s1, s2 = cfg["stem"]
        e2, e3, e4 = cfg["entry"]
        x13a, x13b, x14a, x14b = cfg["exit"]
        self.block1 = StemBlock(s1, s2, **bkw)
        self.block2 = DownBlock(s2, e2, e2, pre_relu=False, **bkw)
        self.block3 = DownBlock(e2, e3, e3, pre_relu=True, **bkw)
        self.block4 = DownBlock(e3, e4, e4, pre_relu=True, **bkw)
        self.middle = nnx.List([MiddleBlock(e4, **bkw) for _ in range(cfg["middle"])])
        self.block13 = DownBlock(e4, x13a, x13b, pre_relu=True, **bkw)
        self.block14 = ExitBlock(x13b, x14a, x14b, **bkw)
        self.num_features = x14b
        self.predictions = nnx.Linear(
            x14b, num_classes, use_bias=True, kernel_init=_glorot,
            bias_init=nnx.initializers.zeros_init(), rngs=rngs, dtype=dtype,
            param_dtype=param_dtype,
        )

    # ----------------------------------------------------------------- forward
    def feature_map(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """block14's output (B, ~H/32, ~W/32, C) -- e.g. for Grad-CAM."""
        x = layers.input_transform(self.input_transform)(jnp.asarray(x, self.dtype))
        for block in (self.block1, self.block2, self.block3, self.block4, *self.middle,
                      self.block13, self.block14):
            x = block(x, train=train)
        return x

