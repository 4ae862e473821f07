"""Image normalisation: ImageNet mean/std, the config's values, uint8 -> normalised float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def mean_std(input_config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per channel of `config.input`, ImageNet's where it sets none."""
    return (tuple(float(v) for v in input_config.get("mean", IMAGENET_MEAN)),
            tuple(float(v) for v in input_config.get("std", IMAGENET_STD)))


def normalize(images: jax.Array, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> jax.Array:
    """uint8 images -> (images / 255 - mean) / std in float32."""
    images = images.astype(jnp.float32) / 255.0
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)
