"""Residual co-occurrence features (SPAM) with a trained linear or MLP head, in ``flax.nnx``.

A detector for small datasets: the features are fixed, only the head trains. Residuals of
adjacent pixels of R, G, B, G-R and G-B, truncated to [-T, T]; second-order SPAM co-occurrence
histograms; sqrt, then ``RunningStandardize`` (cumulative training-set statistics, not a
BatchNorm's per-batch ones); then a Linear head, or an MLP with ``hidden > 0``. Inputs in grey
levels (``config.input.mean = (0, 0, 0)``, ``config.input.std = (1/255,) * 3``), uncropped.
Variants ``"spam3"`` (1,715 features), ``"spam2"`` (625), ``"tiny"`` (135). Freezing:
``head`` / ``dense1`` / ``dense2`` are the head; the standardisation is the backbone.

Details: docs/models.md#deepfake_jaxmodelscooccurrencepy
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from deepfake_jax.models.layers import ParamGroups

# variant -> truncation T
_VARIANTS: dict[str, int] = {"spam3": 3, "spam2": 2, "tiny": 1}
VARIANTS: tuple[str, ...] = tuple(_VARIANTS)
NUM_PLANES = 5  # R, G, B, G-R, G-B


def num_features(truncation: int) -> int:
    return NUM_PLANES * (2 * truncation + 1) ** 3


def residual_planes(images: jax.Array) -> jax.Array:
    """(B, H, W, 3) grey levels -> (B, 5, H, W): R, G, B, G-R, G-B."""
    r, g, b = images[..., 0], images[..., 1], images[..., 2]
    return jnp.stack([r, g, b, g - r, g - b], axis=1)


def cooccurrence_features(images: jax.Array, truncation: int) -> jax.Array:
    """(B, H, W, 3) in grey levels -> (B, 5 * (2T+1)^3) normalised SPAM histograms.

    For each plane: horizontal differences co-occurring horizontally plus vertical
    differences co-occurring vertically (counts summed, then divided by their total).
    """
    t = int(truncation)
    n = 2 * t + 1
    bins = n**3
    planes = residual_planes(images.astype(jnp.float32))
    batch, num_planes = planes.shape[:2]

    def codes(diff):
        return (jnp.clip(jnp.round(diff), -t, t) + t).astype(jnp.int32)

    dh = codes(planes[..., :, 1:] - planes[..., :, :-1])  # (B, P, H, W-1)
    dv = codes(planes[..., 1:, :] - planes[..., :-1, :])  # (B, P, H-1, W)
    triples_h = (dh[..., :-2] * n + dh[..., 1:-1]) * n + dh[..., 2:]
    triples_v = (dv[..., :-2, :] * n + dv[..., 1:-1, :]) * n + dv[..., 2:, :]
    # One bincount for the whole batch: offset every (example, plane) into its own bin range.
    offsets = (jnp.arange(batch * num_planes, dtype=jnp.int32) * bins).reshape(
        batch, num_planes, 1)
    idx = jnp.concatenate([triples_h.reshape(batch, num_planes, -1),
                           triples_v.reshape(batch, num_planes, -1)], axis=-1) + offsets
    counts = jnp.bincount(idx.ravel(), length=batch * num_planes * bins)
    counts = counts.reshape(batch, num_planes, bins).astype(jnp.float32)
    hist = counts / jnp.maximum(counts.sum(-1, keepdims=True), 1.0)
    return hist.reshape(batch, num_planes * bins)


class RunningStandardize(nnx.Module):
    """(x - mean) / std with the cumulative statistics of every batch seen in training.

    Training updates the statistics with the batch (weight 1/count: an exact running
    average, not an exponential one) and then standardises with them, so training and
    evaluation see the same transform. Statistics are `nnx.BatchStat`s: checkpointed and
    averaged by the EMA like BatchNorm's.
    """

    def __init__(self, num_features: int, epsilon: float = 1e-6):
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.mean_square = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.count = nnx.BatchStat(jnp.zeros((), jnp.float32))
        self.epsilon = epsilon

    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        x = x.astype(jnp.float32)
        if train:
            count = self.count.value + 1.0
            w = 1.0 / count
            self.mean.value = self.mean.value + w * (x.mean(0) - self.mean.value)
            self.mean_square.value = self.mean_square.value + w * (
                (x * x).mean(0) - self.mean_square.value)
            self.count.value = count
        var = jnp.maximum(self.mean_square.value - self.mean.value**2, 0.0)
        return (x - self.mean.value) * jax.lax.rsqrt(var + self.epsilon)


class ResidualCooccurrence(ParamGroups, nnx.Module):
    """Fixed SPAM features -> standardisation -> trained head. See the module docstring."""

    HEAD_MODULES: ClassVar[tuple[str, ...]] = ("head", "dense1", "dense2")

    def __init__(self, variant: str = "spam3", num_classes: int = 1, *, rngs: nnx.Rngs,
                 hidden: int = 0, dropout: float = 0.0, dtype: Any = jnp.float32,
                 param_dtype: Any = jnp.float32):
        variant = str(variant)
        if variant not in _VARIANTS:
            raise ValueError(f"Unknown ResidualCooccurrence variant {variant!r}; valid "
                             f"variants: {', '.join(VARIANTS)}")
        self.variant = variant
        self.truncation = _VARIANTS[variant]
        self.num_features = num_features(self.truncation)
        self.dtype = dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.standardize = RunningStandardize(self.num_features)
        self.hidden = int(hidden)
        if self.hidden > 0:
            self.dense1 = nnx.Linear(self.num_features, self.hidden, **kw)
            self.dropout = nnx.Dropout(dropout, rngs=None)
            self.dense2 = nnx.Linear(self.hidden, num_classes, **kw)
        else:
            self.head = nnx.Linear(self.num_features, num_classes,
                                   kernel_init=nnx.initializers.zeros_init(), **kw)

    def features(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        """Standardised sqrt-histograms (B, num_features); no gradient flows to the image."""
        hist = jax.lax.stop_gradient(cooccurrence_features(x, self.truncation))
        return self.standardize(jnp.sqrt(hist), train=train)

    def __call__(self, x: jax.Array, *, train: bool = False, rngs: nnx.Rngs | None = None
                 ) -> jax.Array:
        feats = self.features(x, train=train).astype(self.dtype)
        if self.hidden > 0:
            h = self.dropout(jax.nn.relu(self.dense1(feats)), deterministic=not train,
                             rngs=rngs)
            return self.dense2(h)
        return self.head(feats)
