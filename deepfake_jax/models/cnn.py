"""The seed projects' small Keras CNN in ``flax.nnx``.

Reference: the baseline ``keras.Sequential`` of the seed notebooks::

    Conv2D(32, 3, activation="relu")  + MaxPooling2D(2)
    Conv2D(64, 3, activation="relu")  + MaxPooling2D(2)
    Conv2D(128, 3, activation="relu") + MaxPooling2D(2)
    Flatten() + Dense(128, activation="relu") + Dropout(0.5) + Dense(1, activation="sigmoid")

Keras defaults throughout: ``'valid'`` padding, convs and dense layers *with* bias
(no BatchNorm anywhere), ``glorot_uniform`` kernels and zero biases, floor-mode 2x2/2 max
pooling. The last Dense returns logits here (the sigmoid lives in the loss).

Variants: ``"seed"`` (filters 32/64/128, Dense 128) and ``"tiny"`` (filters 4/8/16, Dense 16;
for tests only).

Because of the Flatten, the parameter count depends on the input size, which is therefore a
constructor argument (``image_size``, default 128 -- the seed's exact size is not recorded
here; 128 is an assumption). Inputs of any other size are rejected. With filters
``f1, f2, f3``, dense width ``d``, ``num_classes`` ``k`` and an ``H x W`` input::

    s(n) = (n - 2) // 2                   # valid 3x3 conv, then floor 2x2/2 max-pool
    h3, w3 = s(s(s(H))), s(s(s(W)))
    params = (27 f1 + f1) + (9 f1 f2 + f2) + (9 f2 f3 + f3)
             + (h3 w3 f3 d + d) + (d k + k)

"seed" at 128 px: 14 x 14 x 128 = 25,088 flat features; 896 + 18,496 + 73,856 + 3,211,392
+ 129 = 3,304,769 parameters (num_classes=1; equal to Keras' ``model.summary()``).

Parameter names (Keras auto-names in brackets): ``conv1`` (``conv2d``), ``conv2``
(``conv2d_1``), ``conv3`` (``conv2d_2``), ``dense1`` (``dense``), ``dense2`` (``dense_1``);
each with ``kernel`` (Keras layout: HWIO / (in, out), identical) and ``bias``. The flatten
order is NHWC, i.e. Keras' channels-last order, so Keras kernels load without permutation.

Freezing groups: ``SmallCNN.HEAD_MODULES`` (``("dense1", "dense2")``: the fully connected
classifier) are the head, the convs the backbone; see ``head_filter`` / ``backbone_filter``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from deepfake_jax.models import layers
from deepfake_jax.models.layers import ParamGroups, cpu_friendly_conv

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


class SmallCNN(ParamGroups, nnx.Module):
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

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Flattened conv features (B, h3 * w3 * f3), channels-last order like Keras."""
        return self.pool_feature_map(self.feature_map(x, train=train))

    def head(self, feats: jax.Array, *, train: bool = False,
             rngs: nnx.Rngs | None = None) -> jax.Array:
        """Dense(d, ReLU) -> Dropout -> Dense(num_classes) on flat features."""
        x = jax.nn.relu(self.dense1(feats))
        x = self.dropout(x, deterministic=not train, rngs=rngs)
        return self.dense2(x)

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
                 ) -> jax.Array:
        return self.head(self.features(x, train=train), train=train, rngs=rngs)

