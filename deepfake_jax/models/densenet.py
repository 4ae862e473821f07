"""DenseNet family (torchvision architecture) in ``flax.nnx``.

torchvision-compatible DenseNet ``"121"``, ``"169"``, ``"201"``, ``"161"`` and ``"tiny"`` (tests
only); parameter names follow torchvision's state dict without the ``features.`` prefix
(``conv0``, ``denseblockB.{L-1}``, ``transitionT``, ``norm5``, ``classifier``). Every conv is
bias-free; no dropout; BatchNorm epsilon 1e-5 (torchvision's; Keras uses 1.001e-5). Freezing:
``HEAD_MODULES = ("classifier",)`` is the head, everything else the backbone.

Details: docs/models.md#deepfake_jaxmodelsdensenetpy
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from deepfake_jax.models import layers
from deepfake_jax.models.layers import Classifier

_conv_init = nnx.initializers.variance_scaling(2.0, "fan_in", "normal")

# variant -> (growth rate, layers per block, initial features)
_VARIANTS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "tiny": (8, (2, 2, 2, 2), 16),
    "121": (32, (6, 12, 24, 16), 64),
    "169": (32, (6, 12, 32, 32), 64),
    "201": (32, (6, 12, 48, 32), 64),
    "161": (48, (6, 12, 36, 24), 96),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)

_BN_EPS = 1e-5
_BN_SIZE = 4


_conv = functools.partial(layers.conv2d, kernel_init=_conv_init)


def _bn(c, *, rngs, dtype, param_dtype, momentum) -> nnx.BatchNorm:
    return nnx.BatchNorm(c, momentum=momentum, epsilon=_BN_EPS, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)


class DenseLayer(nnx.Module):
    """BN-ReLU-Conv1x1-BN-ReLU-Conv3x3; returns only the ``growth`` new channels."""

    def __init__(self, cin, growth, *, rngs, dtype, param_dtype, momentum):
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        mid = _BN_SIZE * growth
        self.norm1 = _bn(cin, momentum=momentum, **ckw)
        self.conv1 = _conv(cin, mid, 1, 1, 0, **ckw)
        self.norm2 = _bn(mid, momentum=momentum, **ckw)
        self.conv2 = _conv(mid, growth, 3, 1, 1, **ckw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        ura = not train
        y = self.conv1(jax.nn.relu(self.norm1(x, use_running_average=ura)))
        return self.conv2(jax.nn.relu(self.norm2(y, use_running_average=ura)))


class Transition(nnx.Module):
    """BN-ReLU-Conv1x1 (halving the channels) then 2x2/2 average pool."""

    def __init__(self, cin, cout, *, rngs, dtype, param_dtype, momentum):
        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        self.norm = _bn(cin, momentum=momentum, **ckw)
        self.conv = _conv(cin, cout, 1, 1, 0, **ckw)

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = self.conv(jax.nn.relu(self.norm(x, use_running_average=not train)))
        return nnx.avg_pool(x, (2, 2), strides=(2, 2), padding="VALID")


class DenseNet(Classifier, nnx.Module):
    """torchvision-compatible DenseNet. See the module docstring for the parameter naming."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("classifier",)

    def __init__(
        self,
        variant: str = "121",
        num_classes: int = 1,
        *,
        rngs: nnx.Rngs,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        bn_momentum: float = 0.9,
        input_transform: str | None = None,
    ):
        variant = self.init_common("DenseNet", variant, VARIANTS, num_classes, dtype,
                                   input_transform)
        growth, block_layers, init_features = _VARIANTS[variant]

        ckw = dict(rngs=rngs, dtype=dtype, param_dtype=param_dtype)
        bkw = dict(ckw, momentum=bn_momentum)
        self.conv0 = _conv(3, init_features, 7, 2, 3, **ckw)
        self.norm0 = _bn(init_features, **bkw)
        c = init_features
        self.num_blocks = len(block_layers)
        for b, n in enumerate(block_layers, start=1):
            block = []
            for i in range(n):
                block.append(DenseLayer(c + i * growth, growth, **bkw))
            setattr(self, f"denseblock{b}", nnx.List(block))
            c += n * growth
            if b != len(block_layers):
                setattr(self, f"transition{b}", Transition(c, c // 2, **bkw))
                c //= 2
        self.norm5 = _bn(c, **bkw)
        self.num_features = c
        self.classifier = nnx.Linear(
            c, num_classes, use_bias=True,
            # torch nn.Linear default weight U(+-1/sqrt(fan_in)); torchvision zeroes the bias.
            kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
            bias_init=nnx.initializers.zeros_init(), **ckw,
        )

    # ----------------------------------------------------------------- forward
    def feature_map(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """After ``norm5`` and ReLU (B, H/32, W/32, C) -- e.g. for Grad-CAM."""
        ura = not train
        x = layers.input_transform(self.input_transform)(jnp.asarray(x, self.dtype))
        x = jax.nn.relu(self.norm0(self.conv0(x), use_running_average=ura))
        # torch MaxPool2d(3, 2, padding=1): the padding never wins (it is -inf).
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for b in range(1, self.num_blocks + 1):
            feats = [x]
            for layer in getattr(self, f"denseblock{b}"):
                feats.append(layer(jnp.concatenate(feats, axis=-1), train=train))
            x = jnp.concatenate(feats, axis=-1)
            if b != self.num_blocks:
                x = getattr(self, f"transition{b}")(x, train=train)
        return jax.nn.relu(self.norm5(x, use_running_average=ura))

