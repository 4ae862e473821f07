"""VGG family (torchvision / Keras architecture) in ``flax.nnx``.

torchvision-compatible VGG ``"11"``, ``"13"``, ``"16"``, ``"19"`` (``batch_norm=True``:
``vgg*_bn``) and ``"tiny"`` (tests only); at 224 px also equal to Keras
``VGG16(include_top=True)``. Parameter names follow Keras (``block{b}_conv{i}``, ``fc1``,
``fc2``, ``predictions``). The adaptive pool uses torch's bins, so any input >= 32 px works.
Freezing: ``HEAD_MODULES = ("fc1", "fc2", "predictions")`` (the whole classifier) is the head,
the conv blocks the backbone.

Details: docs/models.md#deepfake_jaxmodelsvggpy
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from deepfake_jax.models import layers
from deepfake_jax.models.layers import Classifier, cpu_friendly_conv

_conv_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")
_linear_init = nnx.initializers.normal(0.01)
_zeros = nnx.initializers.zeros_init()

# variant -> (conv widths per block, classifier hidden width, adaptive pool size)
_VARIANTS: dict[str, tuple[tuple[tuple[int, ...], ...], int, int]] = {
    "tiny": (((8,), (16,), (32,), (32,), (32,)), 64, 2),
    "11": (((64,), (128,), (256, 256), (512, 512), (512, 512)), 4096, 7),
    "13": (((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)), 4096, 7),
    "16": (((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3), 4096, 7),
    "19": (((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4), 4096, 7),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)

_BN_EPS = 1e-5


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) averaging matrix with torch ``AdaptiveAvgPool`` bins."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        start = (i * n_in) // n_out
        end = -((-(i + 1) * n_in) // n_out)  # ceil
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """torch ``AdaptiveAvgPool2d((size, size))`` on NHWC (identity if already that size)."""
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (size, size):
        return x
    ph = jnp.asarray(adaptive_pool_matrix(h, size), x.dtype)
    pw = jnp.asarray(adaptive_pool_matrix(w, size), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", ph, pw, x)


class VGG(Classifier, nnx.Module):
    """torchvision/Keras-compatible VGG. See the module docstring for the parameter naming."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("fc1", "fc2", "predictions")

    def __init__(
        self,
        variant: str = "16",
        num_classes: int = 1,
        *,
        rngs: nnx.Rngs,
        batch_norm: bool = False,
        dropout: float = 0.5,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        bn_momentum: float = 0.9,
        input_transform: str | None = None,
    ):
        variant = self.init_common("VGG", variant, VARIANTS, num_classes, dtype,
                                   input_transform)
        blocks, hidden, pool = _VARIANTS[variant]
        self.batch_norm = batch_norm
        self.pool_size = pool

        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        cin = 3
        names = []
        for b, widths in enumerate(blocks, start=1):
            block = []
            for i, cout in enumerate(widths, start=1):
                setattr(self, f"block{b}_conv{i}", nnx.Conv(
                    cin, cout, kernel_size=(3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                    use_bias=True, kernel_init=_conv_init, bias_init=_zeros,
                    conv_general_dilated=cpu_friendly_conv, **kw,
                ))
                if batch_norm:
                    setattr(self, f"block{b}_bn{i}", nnx.BatchNorm(
                        cout, momentum=bn_momentum, epsilon=_BN_EPS, **kw))
                block.append(i)
                cin = cout
            names.append(tuple(block))
        self._blocks = tuple(names)  # static: conv indices per block
        self.num_features = cin * pool * pool
        lkw = dict(kernel_init=_linear_init, bias_init=_zeros, **kw)
        self.fc1 = nnx.Linear(self.num_features, hidden, **lkw)
        self.fc2 = nnx.Linear(hidden, hidden, **lkw)
        self.predictions = nnx.Linear(hidden, num_classes, **lkw)
        self.dropout = nnx.Dropout(dropout, rngs=None)

    # ----------------------------------------------------------------- forward
    def feature_map(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Last conv block's output after its max-pool (B, H/32, W/32, C)."""
        x = layers.input_transform(self.input_transform)(jnp.asarray(x, self.dtype))
        for b, convs in enumerate(self._blocks, start=1):
            for i in convs:
                x = getattr(self, f"block{b}_conv{i}")(x)
                if self.batch_norm:
                    x = getattr(self, f"block{b}_bn{i}")(x, use_running_average=not train)
                x = jax.nn.relu(x)
            x = layers.max_pool_2x2(x)
        return x

    def pool_feature_map(self, fmap: jax.Array) -> jax.Array:
        """``feature_map`` output -> the head's input: adaptive average pool, then flatten
        (B, C * pool * pool), NHWC order. Grad-CAM differentiates ``head(pool_feature_map(.))``."""
        x = adaptive_avg_pool(fmap, self.pool_size)
        return x.reshape(x.shape[0], -1)

    def head(self, feats: jax.Array, *, train: bool = False,
             rngs: nnx.Rngs | None = None) -> jax.Array:
        """fc1 -> ReLU -> Dropout -> fc2 -> ReLU -> Dropout -> predictions."""
        x = self.dropout(jax.nn.relu(self.fc1(feats)), deterministic=not train, rngs=rngs)
        x = self.dropout(jax.nn.relu(self.fc2(x)), deterministic=not train, rngs=rngs)
        return self.predictions(x)

