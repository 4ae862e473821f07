"""The seed projects' small Keras CNN in ``flax.nnx``.

Reference: the seed notebooks' baseline ``keras.Sequential``: 3 x (Conv2D 3x3 + ReLU +
MaxPooling2D(2)), Flatten, Dense + ReLU, Dropout(0.5), Dense; Keras defaults ('valid' padding,
biases, glorot-uniform). The last Dense returns logits. Parameter names ``conv1``..``conv3``,
``dense1``, ``dense2`` (Keras layouts, NHWC flatten order: Keras kernels load as is). The
parameter count depends on ``image_size`` (a constructor argument; other sizes are rejected).
Variants ``"seed"`` (32/64/128, Dense 128) and ``"tiny"`` (tests only). Freezing:
``HEAD_MODULES = ("dense1", "dense2")`` is the head, the convs the backbone.

Details: docs/models.md#deepfake_jaxmodelscnnpy
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from deepfake_jax.models import layers
from deepfake_jax.models.layers import Classifier, cpu_friendly_conv

# variant -> (conv filters, dense width)
_VARIANTS: dict[str, tuple[tuple[int, int, int], int]] = {
    "seed": ((32, 64, 128), 128),
    "tiny": ((4, 8, 16), 16),
}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)

_glorot = nnx.initializers.glorot_uniform()
_zeros = nnx.initializers.zeros_init()


def flat_size(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """Spatial size (h, w) after the three valid-conv + max-pool stages."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)

    def s(n: int) -> int:
        return (n - 2) // 2

    h3, w3 = s(s(s(h))), s(s(s(w)))
    if h3 < 1 or w3 < 1:
        raise ValueError(f"image_size {image_size} is too small for SmallCNN (minimum 22)")
    return h3, w3


class SmallCNN(Classifier, nnx.Module):
    """The seeds' Keras baseline CNN. See the module docstring for names and counts."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("dense1", "dense2")

    def __init__(
        self,
        variant: str = "seed",
        num_classes: int = 1,
        *,
        rngs: nnx.Rngs,
        image_size: int | tuple[int, int] = 128,
        dropout: float = 0.5,
        dtype: Any = jnp.float32,
        param_dtype: Any = jnp.float32,
        input_transform: str | None = None,
    ):
        variant = str(variant)
        if variant not in _VARIANTS:
            raise ValueError(
                f"Unknown SmallCNN variant {variant!r}; valid variants: {', '.join(VARIANTS)}"
            )
        filters, dense = _VARIANTS[variant]
        self.variant = variant
        self.num_classes = num_classes
        self.dtype = dtype
        self.image_size = (
            (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        )
        h3, w3 = flat_size(self.image_size)
        self.input_transform = input_transform
        layers.input_transform(input_transform)  # fails early on an unknown name

        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        cin = 3
        for i, f in enumerate(filters):
            conv = nnx.Conv(
                cin, f, kernel_size=(3, 3), strides=(1, 1), padding=((0, 0), (0, 0)),
                use_bias=True, kernel_init=_glorot, bias_init=_zeros,
                conv_general_dilated=cpu_friendly_conv, **kw,
            )
            setattr(self, f"conv{i + 1}", conv)
            cin = f
        self.num_features = h3 * w3 * cin
        self.dense1 = nnx.Linear(self.num_features, dense, kernel_init=_glorot,
                                 bias_init=_zeros, **kw)
        self.dropout = nnx.Dropout(dropout, rngs=None)
        self.dense2 = nnx.Linear(dense, num_classes, kernel_init=_glorot, bias_init=_zeros,
                                 **kw)

    # ----------------------------------------------------------------- forward
    def feature_map(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Last conv stage after pooling (B, h3, w3, f3) -- e.g. for Grad-CAM."""
        del train
        if tuple(x.shape[1:3]) != self.image_size:
            raise ValueError(
                f"SmallCNN was built for {self.image_size} inputs (it flattens), got "
                f"{tuple(x.shape[1:3])}; pass image_size= to the constructor"
            )
        x = layers.input_transform(self.input_transform)(jnp.asarray(x, self.dtype))
        for conv in (self.conv1, self.conv2, self.conv3):
            x = layers.max_pool_2x2(jax.nn.relu(conv(x)))
        return x

    def pool_feature_map(self, fmap: jax.Array) -> jax.Array:
        """``feature_map`` output -> the head's input: Keras' channels-last Flatten. Grad-CAM
        differentiates ``head(pool_feature_map(.))``."""
        return fmap.reshape(fmap.shape[0], -1)

    def head(self, feats: jax.Array, *, train: bool = False,
             rngs: nnx.Rngs | None = None) -> jax.Array:
        """Dense(d, ReLU) -> Dropout -> Dense(num_classes) on flat features."""
        x = jax.nn.relu(self.dense1(feats))
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        return self.dense2(x)

