"""Image augmentations on uint8 HxWx3 RGB numpy arrays, driven by a numpy Generator.

Every op takes the image and an `np.random.Generator` and returns a new uint8 image, so that
grain's `random_map` (one generator per example, derived from the seed and the example's
index) makes the whole pipeline deterministic and resumable.

Crops keep a generator's pixel-level traces; resizing resamples the pixels and blurs them,
so the default pipeline crops and only resizes images whose size is not the crop size.
"""

from __future__ import annotations

import cv2
import numpy as np


def resize_short_side(image: np.ndarray, size: int) -> np.ndarray:
    """Resizes so that the shorter side equals `size` (area filter down, cubic up)."""
    h, w = image.shape[:2]
    if min(h, w) == size:
        return image
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC
    return cv2.resize(image, (new_w, new_h), interpolation=interp)


def ensure_min_size(image: np.ndarray, size: int) -> np.ndarray:
    """Upscales images smaller than `size` so a `size` crop exists; larger ones are untouched."""
    if min(image.shape[:2]) >= size:
        return image
    return resize_short_side(image, size)


def center_crop(image: np.ndarray, size: int) -> np.ndarray:
    image = ensure_min_size(image, size)
    h, w = image.shape[:2]
    top, left = (h - size) // 2, (w - size) // 2
    return image[top : top + size, left : left + size]


def random_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    image = ensure_min_size(image, size)
    h, w = image.shape[:2]
    top = int(rng.integers(0, h - size + 1))
    left = int(rng.integers(0, w - size + 1))
    return image[top : top + size, left : left + size]


def random_flip(image: np.ndarray, rng: np.random.Generator, prob: float = 0.5) -> np.ndarray:
    if rng.random() < prob:
        return image[:, ::-1]
    return image


def eval_view(image: np.ndarray, crop_size: int, resize_to: int | None = None) -> np.ndarray:
    """The deterministic eval view: optional short-side resize, then a center crop."""
    if resize_to:
        image = resize_short_side(image, resize_to)
    return np.ascontiguousarray(center_crop(image, crop_size))


def train_view(
    image: np.ndarray,
    rng: np.random.Generator,
    crop_size: int,
    flip_prob: float = 0.5,
    resize_to: int | None = None,
) -> np.ndarray:
    """Light train augmentation: optional short-side resize, random crop, horizontal flip."""
    if resize_to:
        image = resize_short_side(image, resize_to)
    image = random_crop(image, crop_size, rng)
    image = random_flip(image, rng, flip_prob)
    return np.ascontiguousarray(image)


# ----------------------------------------------------------------------------- corruptions
# Real-world degradations for robustness evaluation (and later for training augmentation).
# Levels: jpeg = quality (1-100), blur = Gaussian sigma in px, resize = scale factor (down,
# then back up to the original size), noise = Gaussian sigma as a fraction of 255.

CORRUPTIONS = ("jpeg", "blur", "resize", "noise")


def jpeg_recompress(image: np.ndarray, quality: float) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode an image")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(image, (0, 0), sigmaX=float(sigma), sigmaY=float(sigma))


def resize_round_trip(image: np.ndarray, scale: float) -> np.ndarray:
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, round(w * scale)), max(1, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma * 255.0, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def corrupt(image: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """Applies one named corruption; uint8 RGB in, uint8 RGB of the same shape out."""
    if kind == "jpeg":
        out = jpeg_recompress(image, level)
    elif kind == "blur":
        out = gaussian_blur(image, level)
    elif kind == "resize":
        out = resize_round_trip(image, level)
    elif kind == "noise":
        out = gaussian_noise(image, level, rng)
    else:
        raise ValueError(f"unknown corruption {kind!r}; choose from {', '.join(CORRUPTIONS)}")
    return np.ascontiguousarray(out)
