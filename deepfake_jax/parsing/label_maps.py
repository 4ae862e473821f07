"""Label maps as pictures and boxes: colours, overlays, resizing, region boxes and crops."""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np

from deepfake_jax.parsing.classes import CLASS_INDEX, PALETTE, REGIONS


def colorize(label_map: np.ndarray) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 RGB in PALETTE colours (unknown labels black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[:len(PALETTE)] = PALETTE
    return lut[np.asarray(label_map).astype(np.uint8)]


def resize_labels(label_map: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (H, W) label map resized to `size` = (width, height) as uint8: each output pixel takes
    the class under its *centre*, the geometry of the image's linear and area filters.
    cv2.INTER_NEAREST uses the output pixel's top-left corner instead, which moves label
    boundaries up to one source pixel up and left of the image's (a third of a glasses frame's
    width at 256 px)."""
    return cv2.resize(np.asarray(label_map, np.uint8), tuple(size),
                      interpolation=cv2.INTER_NEAREST_EXACT)


def overlay_labels(image: np.ndarray, label_map: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The image with the coloured labels blended in (background pixels unchanged)."""
    image = np.asarray(image, np.uint8)
    label_map = np.asarray(label_map)
    if label_map.shape != image.shape[:2]:
        label_map = resize_labels(label_map, image.shape[1::-1])
    blended = image.astype(np.float32) * (1 - alpha) + colorize(label_map) * alpha
    fg = (label_map > 0)[..., None]
    return np.where(fg, np.clip(blended + 0.5, 0, 255).astype(np.uint8), image)


def save_overlay_grid(images: list[np.ndarray], truths: list[np.ndarray],
                      predictions: list[np.ndarray], path: str) -> str:
    """Rows of [image | true-label overlay | predicted overlay] as one PNG, under a header
    naming the columns; images narrower than 128 px are enlarged (pixel for pixel) to be seen."""
    rows = [np.concatenate([im, overlay_labels(im, t), overlay_labels(im, p)], axis=1)
            for im, t, p in zip(images, truths, predictions, strict=True)]
    grid = np.concatenate(rows, axis=0)
    width = grid.shape[1] // 3
    scale = max(1, -(-128 // width))
    if scale > 1:
        grid = cv2.resize(grid, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        width *= scale
    header = np.full((24, grid.shape[1], 3), 255, np.uint8)
    for i, name in enumerate(("image", "truth", "prediction")):
        (w, _), _ = cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        cv2.putText(header, name, (i * width + max((width - w) // 2, 0), 17),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    grid = np.concatenate([header, grid], axis=0)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if not cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")
    return path


def region_boxes(label_map: np.ndarray, regions: dict[str, tuple[str, ...]] = REGIONS
                 ) -> dict[str, dict[str, Any]]:
    """{region: {"box": [x0, y0, x1, y1] (exclusive end) or None, "area": pixels}}.

    The box is that of the region's largest connected part (stray pixels elsewhere do not
    stretch it); the area counts all of the region's pixels.
    """
    label_map = np.asarray(label_map)
    out = {}
    for name, parts in regions.items():
        mask = np.isin(label_map, [CLASS_INDEX[p] for p in parts]).astype(np.uint8)
        area = int(mask.sum())
        box = None
        if area:
            _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            x, y, w, h, _ = stats[1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))]
            box = [int(x), int(y), int(x + w), int(y + h)]
        out[name] = {"box": box, "area": area}
    return out


def crop_box(image: np.ndarray, box: list[int], margin: float = 0.25) -> np.ndarray:
    """The pixels of `box` grown by `margin` of its size on every side, clipped to the image."""
    x0, y0, x1, y1 = box
    mx, my = round((x1 - x0) * margin), round((y1 - y0) * margin)
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[max(0, y0 - my):min(h, y1 + my),
                                      max(0, x0 - mx):min(w, x1 + mx)])
