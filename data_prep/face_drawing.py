"""Drawing primitives of the synthetic face renderer: sub-pixel cv2 shapes, layers pasted
with their label maps, smooth textures, colour blends and picks."""

from __future__ import annotations

import functools

import cv2
import numpy as np

_SHIFT = 4  # sub-pixel bits for cv2 drawing


_MUL = 1 << _SHIFT


# --------------------------------------------------------------------------------------------
# drawing helpers (coordinates in float canvas pixels, drawn with sub-pixel precision)
# --------------------------------------------------------------------------------------------
def _fx(v: float) -> int:
    return int(round(v * _MUL))


def draw_ellipse(img, c, axes, angle, color, thickness=-1, start=0.0, end=360.0):
    cv2.ellipse(
        img,
        (_fx(c[0]), _fx(c[1])),
        (_fx(max(axes[0], 0.3)), _fx(max(axes[1], 0.3))),
        float(angle),
        float(start),
        float(end),
        color,
        int(thickness),
        cv2.LINE_8,
        _SHIFT,
    )


def draw_polygon(img, pts, color):
    p = np.round(np.asarray(pts, np.float64) * _MUL).astype(np.int32).reshape(1, -1, 2)
    cv2.fillPoly(img, p, color, cv2.LINE_8, _SHIFT)


def draw_polyline(img, pts, color, thickness):
    p = np.round(np.asarray(pts, np.float64) * _MUL).astype(np.int32).reshape(1, -1, 2)
    cv2.polylines(img, p, False, color, max(1, int(round(thickness))), cv2.LINE_8, _SHIFT)


def as_color(c) -> tuple[float, float, float]:
    return (float(c[0]), float(c[1]), float(c[2]))


def paste_layer(canvas: np.ndarray, mask: np.ndarray, layer, lab=None, cls: int = 0) -> None:
    """Copy ``layer`` into ``canvas`` where ``mask`` (uint8 0/1) is set, only inside the mask's
    bounding box. ``layer`` is an array (canvas-sized, or a colour) or ``f(rows, cols)`` that
    returns the layer for that box. Optionally also writes ``cls`` into ``lab``."""
    x, y, w, h = cv2.boundingRect(mask)
    if w == 0 or h == 0:
        return
    rs, cs = slice(y, y + h), slice(x, x + w)
    m = mask[rs, cs]
    if callable(layer):
        layer = layer(rs, cs)
    elif layer.ndim == 3:
        layer = layer[rs, cs]
    else:
        layer = np.broadcast_to(layer.astype(np.float32), (h, w, 3))
    cv2.copyTo(np.ascontiguousarray(layer, np.float32), m, canvas[rs, cs])
    if lab is not None:
        lab[rs, cs][m.view(bool)] = cls


@functools.lru_cache(maxsize=8)
def pixel_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def smooth_textures(rng, n: int, cells: int, amps) -> np.ndarray:
    """Smooth random fields, channel k in about [-amps[k], amps[k]] ((n, n, len(amps)) float32)."""
    amps = np.asarray(amps, np.float32)
    small = rng.uniform(-1.0, 1.0, (cells, cells, len(amps))).astype(np.float32) * amps
    return cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)


def lerp(a, b, t):
    return np.asarray(a, np.float32) * (1.0 - t) + np.asarray(b, np.float32) * t


def pick_color(rng, table: np.ndarray, p=None, jitter: float = 0.0) -> np.ndarray:
    c = table[rng.choice(len(table), p=p)].copy()
    if jitter:
        c += rng.normal(0.0, jitter, 3).astype(np.float32)
    return np.clip(c, 0, 255)
