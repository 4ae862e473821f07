"""Face detection and cropping on uint8 RGB arrays (OpenCV's Haar cascade; no extra weights).

    box = detect_largest_face(rgb)          # (x, y, w, h) in pixels, or None
    face = crop_face(rgb, box, margin=0.3)  # square crop around the face, clipped to the image

Used by `deepfake_jax.predict --face_crop`; kept separate so other tools (segmentation) can reuse
it. The frontal-face cascade ships with opencv-python (`cv2.data.haarcascades`); it finds upright,
roughly frontal faces of at least `min_size` pixels and is deterministic.
"""

from __future__ import annotations

import functools
import os

import cv2
import numpy as np

__all__ = ["CASCADE_FILE", "crop_face", "detect_largest_face", "square_box"]

CASCADE_FILE = "haarcascade_frontalface_default.xml"

Box = tuple[int, int, int, int]


@functools.lru_cache(maxsize=1)
def _cascade() -> cv2.CascadeClassifier:
    path = os.path.join(cv2.data.haarcascades, CASCADE_FILE)
    cascade = cv2.CascadeClassifier(path)
    if cascade.empty():
        raise RuntimeError(f"cannot load OpenCV's Haar cascade {path}")
    return cascade


def detect_largest_face(rgb: np.ndarray, *, scale_factor: float = 1.1, min_neighbors: int = 5,
                        min_size: int = 24) -> Box | None:
    """(x, y, w, h) of the largest detected face in a uint8 (H, W, 3) RGB image, or None.

    The image is converted to grayscale and histogram-equalised, as the cascade expects.
    Images smaller than `min_size` on either side have no face.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB image, got shape {rgb.shape}")
    if min(rgb.shape[:2]) < min_size:
        return None
    gray = cv2.equalizeHist(cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2GRAY))
    faces = _cascade().detectMultiScale(gray, scaleFactor=scale_factor,
                                        minNeighbors=min_neighbors,
                                        minSize=(min_size, min_size))
    if len(faces) == 0:
        return None
    # Largest area; ties broken by position so the choice is deterministic.
    x, y, w, h = max((tuple(int(v) for v in f) for f in faces),
                     key=lambda b: (b[2] * b[3], -b[1], -b[0]))
    return x, y, w, h


def square_box(box: Box, image_shape: tuple[int, ...], margin: float = 0.3) -> Box:
    """The square crop around `box`: side max(w, h) * (1 + 2 * margin), same centre, moved
    inside the image where it fits and clipped to it where it does not."""
    x, y, w, h = box
    height, width = image_shape[:2]
    side = max(1, round(max(w, h) * (1 + 2 * margin)))
    cx, cy = x + w / 2, y + h / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    # Shift inside the image first (keeps the crop square), then clip what still sticks out.
    left = min(max(left, 0), max(width - side, 0))
    top = min(max(top, 0), max(height - side, 0))
    right, bottom = min(left + side, width), min(top + side, height)
    return left, top, right - left, bottom - top


def crop_face(rgb: np.ndarray, box: Box, margin: float = 0.3) -> np.ndarray:
    """The face of `box` with `margin` (a fraction of the face size) on every side, square
    where the image allows it; a C-contiguous copy of the pixels (no resampling)."""
    left, top, w, h = square_box(box, rgb.shape, margin)
    if w <= 0 or h <= 0:
        raise ValueError(f"face box {box} lies outside the {rgb.shape[1]}x{rgb.shape[0]} image")
    return np.ascontiguousarray(rgb[top : top + h, left : left + w])
