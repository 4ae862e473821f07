"""Deterministic synthetic face images in the folder layouts of real deepfake datasets.

Faces are drawn with numpy + OpenCV (supersampled 2x, then reduced with ``INTER_AREA``):
background, clothes, neck, hair (behind the head and a cap / fringe on top), ears, a shaded face,
eyebrows, eyes (white, iris, pupil, lid line), a shaded nose, lips and optional eyeglasses, with a
random pose (position, scale, in-plane rotation, slight yaw) and random sizes / colours of every
part. Every face also has a face-parsing label map in the 19-class order of ``PARSING_CLASSES``
(CelebAMask-HQ order), reduced like the image (each pixel: its supersamples' majority class).
Side convention: ``l_`` is the *subject's* left, i.e. the right half of the image (larger x);
``r_`` is the subject's right (left half of the image).

Classes
-------
* **real**: ``render_face`` + "camera": random defocus blur, white-balance jitter, sensor noise
  (Gaussian read noise + Poisson-like shot noise) and JPEG with a random quality in [80, 97].
* **fake (140k style)**: the same face passes through a simulated generator decoder: it is reduced
  by 2 or 4 and upsampled again with random *transposed convolutions* (a bilinear kernel with a
  random perturbation per image; or nearest upsampling + a random 3x3 conv). Unequal polyphase
  gains leave periodic structure (spectral peaks at multiples of N/2, N/4). ``difficulty`` in
  [0, 1] scales the amplitude of that trace (0: strong, 1: faint). The camera noise and the JPEG
  quality distribution are the same as for reals and the smoothness of the generator overlaps the
  reals' random defocus, so global statistics (mean colour, contrast, Laplacian variance) do not
  separate the classes, but local periodic structure does.
* **fake (CIPLab style)**: a real face where the left eye / right eye / nose / mouth regions are
  replaced by the region of another face, with a visible (easy) to feathered and colour-matched
  (hard) seam.

Determinism: the RNG of every image is ``np.random.default_rng([seed, layout, split, class, i])``,
so equal arguments give byte-identical files and changing one count leaves the other images alone.

CLI::

    python -m data_prep.synthetic --output DIR [--layout 140k|ciplab] [--train N --valid N
        --test N] [--num-real N --num-fake N] [--image-size 64] [--difficulty 0.5] [--seed 0]
        [--masks] [--workers N] [--overwrite]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import shutil
import sys
import time
import zlib
from collections.abc import Callable, Iterable

import cv2
import numpy as np

PARSING_CLASSES: tuple[str, ...] = (
    "background",
    "skin",
    "l_brow",
    "r_brow",
    "l_eye",
    "r_eye",
    "eye_g",
    "l_ear",
    "r_ear",
    "ear_r",
    "nose",
    "mouth",
    "u_lip",
    "l_lip",
    "neck",
    "neck_l",
    "cloth",
    "hair",
    "hat",
)
_C = {name: i for i, name in enumerate(PARSING_CLASSES)}

SPLIT_IDS = {"train": 0, "valid": 1, "test": 2}
CLASS_IDS = {"real": 0, "fake": 1}
LAYOUT_IDS = {"140k": 0, "ciplab": 1}
CIPLAB_LEVELS = ("easy", "mid", "hard")
CIPLAB_PARTS = ("l_eye", "r_eye", "nose", "mouth")  # order of the 4 bits in CIPLab names
JPEG_QUALITY_RANGE = (80, 97)  # inclusive; identical for every class
TRACE_AMP_EASY = 0.6  # generator-trace amplitude at difficulty 0 ...
TRACE_AMP_HARD = 0.05  # ... and at difficulty 1 (geometric interpolation between)

_SS = 2  # supersampling factor of the renderer
_SHIFT = 4  # sub-pixel bits for cv2 drawing
_MUL = 1 << _SHIFT

_SKIN = np.array(
    [
        [250, 220, 196],
        [238, 196, 166],
        [222, 172, 134],
        [196, 140, 100],
        [160, 108, 74],
        [122, 80, 54],
        [86, 57, 40],
    ],
    np.float32,
)
_HAIR = np.array(
    [
        [22, 18, 16],
        [48, 33, 24],
        [88, 58, 38],
        [132, 96, 62],
        [206, 170, 112],
        [146, 66, 36],
        [150, 148, 146],
        [206, 202, 196],
    ],
    np.float32,
)
_HAIR_P = np.array([0.26, 0.22, 0.17, 0.1, 0.1, 0.05, 0.06, 0.04])
_IRIS = np.array(
    [[84, 52, 30], [46, 30, 20], [118, 92, 50], [78, 108, 70], [76, 116, 166], [108, 118, 128]],
    np.float32,
)
_IRIS_P = np.array([0.3, 0.25, 0.12, 0.1, 0.15, 0.08])


# --------------------------------------------------------------------------------------------
# drawing helpers (coordinates in float canvas pixels, drawn with sub-pixel precision)
# --------------------------------------------------------------------------------------------
def _fx(v: float) -> int:
    return int(round(v * _MUL))


def _ell(img, c, axes, angle, color, thickness=-1, start=0.0, end=360.0):
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


def _poly(img, pts, color):
    p = np.round(np.asarray(pts, np.float64) * _MUL).astype(np.int32).reshape(1, -1, 2)
    cv2.fillPoly(img, p, color, cv2.LINE_8, _SHIFT)


def _polyline(img, pts, color, thickness):
    p = np.round(np.asarray(pts, np.float64) * _MUL).astype(np.int32).reshape(1, -1, 2)
    cv2.polylines(img, p, False, color, max(1, int(round(thickness))), cv2.LINE_8, _SHIFT)


def _col(c) -> tuple[float, float, float]:
    return (float(c[0]), float(c[1]), float(c[2]))


def _paste(canvas: np.ndarray, mask: np.ndarray, layer, lab=None, cls: int = 0) -> None:
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
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _textures(rng, n: int, cells: int, amps) -> np.ndarray:
    """Smooth random fields, channel k in about [-amps[k], amps[k]] ((n, n, len(amps)) float32)."""
    amps = np.asarray(amps, np.float32)
    small = rng.uniform(-1.0, 1.0, (cells, cells, len(amps))).astype(np.float32) * amps
    return cv2.resize(small, (n, n), interpolation=cv2.INTER_CUBIC)


def _mix(a, b, t):
    return np.asarray(a, np.float32) * (1.0 - t) + np.asarray(b, np.float32) * t


def _pick(rng, table: np.ndarray, p=None, jitter: float = 0.0) -> np.ndarray:
    c = table[rng.choice(len(table), p=p)].copy()
    if jitter:
        c += rng.normal(0.0, jitter, 3).astype(np.float32)
    return np.clip(c, 0, 255)


# --------------------------------------------------------------------------------------------
# face renderer
# --------------------------------------------------------------------------------------------
def render_face(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Render one clean synthetic face (no camera noise, no JPEG).

    Returns ``(rgb, label_map, info)``: ``rgb`` uint8 (S, S, 3) in RGB order, ``label_map``
    uint8 (S, S) with indices into ``PARSING_CLASSES`` (``l_`` = subject's left = image right),
    and ``info`` with integer boxes ``(x0, y0, x1, y1)`` (exclusive end, image pixels) for
    ``face, l_eye, r_eye, l_brow, r_brow, nose, mouth, l_ear, r_ear`` plus ``landmarks``
    (5 x 2 float: l_eye, r_eye, nose tip, mouth left (image), mouth right (image)), ``angle``
    (in-plane rotation, degrees) and ``glasses`` (bool).
    """
    img, lab, info = _render(rng, int(image_size))
    return img, lab, info


def block_majority(labels: np.ndarray, k: int) -> np.ndarray:
    """(H/k, W/k) label map: the most common label of each k x k block (ties: the lower id).

    The image is the blocks' mean (``INTER_AREA``), centred on the block; the top-left sample
    (``cv2.INTER_NEAREST``) would shift every label boundary (k - 1) / (2k) pixels up and left
    of the image's: a quarter pixel at k = 2, a tenth of a glasses frame's width.
    """
    h, w = labels.shape[0] // k, labels.shape[1] // k
    samples = labels[:h * k, :w * k].reshape(h, k, w, k).transpose(1, 3, 0, 2).reshape(k * k, h, w)
    votes = (samples[:, None] == samples[None]).sum(axis=1)  # (k*k, h, w): copies of each sample
    best = np.argmax(votes.astype(np.int32) * 256 - samples, axis=0)  # most votes, then lowest id
    return np.take_along_axis(samples, best[None], axis=0)[0]


def _render(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray, dict]:
    W = size * _SS
    f32 = np.float32
    yy, xx = _grid(W)

    # ---------------- pose / geometry ----------------
    fw = W * rng.uniform(0.19, 0.25)  # half face width
    fh = fw * rng.uniform(1.22, 1.42)  # half face height
    cx = W * (0.5 + rng.normal(0.0, 0.025))
    cy = W * (0.47 + rng.normal(0.0, 0.02))
    angle = float(np.clip(rng.normal(0.0, 5.0), -12.0, 12.0))
    yaw = float(np.clip(rng.normal(0.0, 0.06), -0.14, 0.14))  # shift of inner features (x fw)
    jaw = rng.uniform(0.08, 0.3)
    fx = cx + yaw * fw  # x of the feature axis

    # ---------------- colours ----------------
    t = rng.uniform(0, len(_SKIN) - 1)
    i0 = int(t)
    skin = _mix(_SKIN[i0], _SKIN[min(i0 + 1, len(_SKIN) - 1)], t - i0)
    skin = np.clip(skin + rng.normal(0, 6, 3), 0, 255).astype(f32)
    hair_c = _pick(rng, _HAIR, _HAIR_P, 8.0)
    brow_c = _mix(hair_c, skin * 0.35, rng.uniform(0.0, 0.4))
    lip_c = np.clip(
        _mix(skin, [178, 74, 84], rng.uniform(0.3, 0.6)) * rng.uniform(0.8, 1.0), 0, 255
    )
    iris_c = _pick(rng, _IRIS, _IRIS_P, 10.0)
    white_c = np.clip(np.array([236, 232, 226], f32) * rng.uniform(0.85, 1.0), 0, 255)
    cloth_c = rng.uniform(15, 235, 3).astype(f32)

    # ---------------- background ----------------
    c1 = rng.uniform(20, 235, 3).astype(f32)
    c2 = np.clip(c1 + rng.normal(0, 45, 3), 0, 255).astype(f32)
    th = rng.uniform(0, 2 * np.pi)
    g = ((xx - W / 2) * math.cos(th) + (yy - W / 2) * math.sin(th)) / W + 0.5
    canvas = c1 + (c2 - c1) * np.clip(g, 0, 1)[..., None]
    tex = _textures(rng, W, 5, (rng.uniform(5, 25), 0.15, 0.12, 0.04))  # bg, hair, cloth, face
    canvas += tex[..., :1]
    if rng.random() < 0.5:  # out-of-focus blobs
        blobs = np.zeros((W, W, 3), f32)
        for _ in range(rng.integers(2, 6)):
            _ell(
                blobs,
                rng.uniform(0, W, 2),
                (W * rng.uniform(0.05, 0.15),) * 2,
                0,
                _col(rng.normal(0, 40, 3)),
            )
        canvas += cv2.GaussianBlur(blobs, (0, 0), W * 0.03)
    lab = np.zeros((W, W), np.uint8)

    # hair texture (vertical strands + low frequency variation)
    hnoise = rng.standard_normal((max(4, W // 12), W), dtype=f32) * 0.35
    strands = cv2.resize(hnoise, (W, W), interpolation=cv2.INTER_LINEAR)
    htex = 1.0 + 0.22 * strands + tex[..., 1]
    hair_base = np.clip(hair_c + 12.0, 0, 255)

    def hair_layer(r, c, k=1.0):
        return (hair_base * k) * htex[r, c, None]

    # ---------------- hair behind head ----------------
    hair_style = rng.choice(4, p=[0.08, 0.37, 0.3, 0.25])  # 0 bald/shaved, 1 short, 2 med, 3 long
    hcy = cy - fh * rng.uniform(0.08, 0.2)
    haxes = (fw * rng.uniform(1.08, 1.3), fh * rng.uniform(1.02, 1.12))
    back = np.zeros((W, W), np.uint8)
    if hair_style >= 2:
        _ell(back, (cx, hcy), haxes, 0, 1)
        if hair_style == 3:
            bottom = cy + fh * rng.uniform(1.0, 1.8)
            hw = haxes[0] * rng.uniform(0.92, 1.05)
            _poly(
                back,
                [
                    (cx - hw, hcy),
                    (cx + hw, hcy),
                    (cx + hw * 1.05, bottom),
                    (cx - hw * 1.05, bottom),
                ],
                1,
            )
        else:
            _poly(
                back,
                [
                    (cx - haxes[0], hcy),
                    (cx + haxes[0], hcy),
                    (cx + haxes[0] * 0.9, cy + fh * 0.45),
                    (cx - haxes[0] * 0.9, cy + fh * 0.45),
                ],
                1,
            )
        _paste(canvas, back, lambda r, c: hair_layer(r, c, 0.8), lab, _C["hair"])

    # ---------------- skin layer with lighting ----------------
    la = rng.uniform(0, 2 * np.pi)
    ls = rng.uniform(0.08, 0.3)
    light = 1.0 + ls * np.clip(
        ((xx - cx) * math.cos(la) + (yy - cy) * math.sin(la)) / (1.3 * fw), -1.5, 1.5
    )

    def skin_layer(r, c):
        return skin * light[r, c, None]

    # ---------------- neck + clothes ----------------
    nw = fw * rng.uniform(0.45, 0.6)
    ntop = cy + fh * 0.35
    neck = np.zeros((W, W), np.uint8)
    _poly(
        neck,
        [(cx - nw, ntop), (cx + nw, ntop), (cx + nw * 1.15, W + 2), (cx - nw * 1.15, W + 2)],
        1,
    )

    def neck_layer(r, c):
        chin_shadow = np.clip((yy[r, c] - (cy + fh * 0.85)) / (0.35 * fh), 0, 1)
        return skin_layer(r, c) * (0.62 + 0.22 * chin_shadow)[..., None]

    _paste(canvas, neck, neck_layer, lab, _C["neck"])

    cloth = np.zeros((W, W), np.uint8)
    sh_y = cy + fh * rng.uniform(1.15, 1.45)
    _ell(
        cloth,
        (cx + rng.normal(0, 0.02 * W), sh_y + W * 0.5),
        (W * rng.uniform(0.42, 0.62), W * 0.5),
        0,
        1,
    )
    if rng.random() < 0.6:  # neckline
        nl = np.zeros((W, W), np.uint8)
        if rng.random() < 0.5:
            _poly(
                nl,
                [
                    (cx - nw * 1.3, sh_y - 1),
                    (cx + nw * 1.3, sh_y - 1),
                    (cx, sh_y + fh * rng.uniform(0.2, 0.6)),
                ],
                1,
            )
        else:
            _ell(nl, (cx, sh_y), (nw * 1.25, fh * rng.uniform(0.1, 0.3)), 0, 1)
        cloth[nl > 0] = 0
    ctex = 1.0 + tex[..., 2]
    _paste(
        canvas,
        cloth,
        lambda r, c: cloth_c * (ctex[r, c] * (0.75 + 0.25 * light[r, c]))[..., None],
        lab,
        _C["cloth"],
    )
    if hair_style == 3:  # long hair falls over the shoulders, beside the neck
        front = back.copy()
        front[:, int(cx - nw * 1.2) : int(cx + nw * 1.2) + 1] = 0
        front[: int(cy + fh * 0.3)] = 0
        _paste(canvas, front, lambda r, c: hair_layer(r, c, 0.9), lab, _C["hair"])

    # ---------------- ears ----------------
    ear_y = cy - fh * rng.uniform(0.0, 0.12)
    ear_a = (fw * rng.uniform(0.14, 0.2), fh * rng.uniform(0.2, 0.27))
    ears = np.zeros((W, W), np.uint8)
    for side, cls in ((1, "l_ear"), (-1, "r_ear")):
        sc = 1.0 - side * yaw * 2.0  # far ear smaller
        ex = cx + side * fw * (0.96 - 0.05 * side * yaw)
        e = np.zeros((W, W), np.uint8)
        _ell(e, (ex, ear_y), (ear_a[0] * sc, ear_a[1]), side * 12, 1)
        ears |= e
        lab[e.view(bool)] = _C[cls]
    _paste(canvas, ears, lambda r, c: skin_layer(r, c) * 0.88)
    for side in (1, -1):
        sc = 1.0 - side * yaw * 2.0
        ex = cx + side * fw * (1.0 - 0.05 * side * yaw)
        _ell(
            canvas,
            (ex, ear_y),
            (ear_a[0] * sc * 0.45, ear_a[1] * 0.6),
            side * 12,
            _col(skin * 0.62 * light[int(np.clip(ear_y, 0, W - 1)), int(np.clip(ex, 0, W - 1))]),
        )

    # ---------------- face ----------------
    n_pts = 72
    a = np.linspace(0, 2 * np.pi, n_pts, endpoint=False)
    s = np.sin(a)
    px = cx + fw * np.cos(a) * (1.0 - jaw * np.clip(s, 0, 1) ** 2)
    py = cy + fh * np.where(s > 0, s, s * rng.uniform(0.92, 1.02))
    face = np.zeros((W, W), np.uint8)
    _poly(face, np.stack([px, py], 1), 1)

    # shading map: rim darkening + eye sockets + nose sides + under-nose / under-lip shadows
    shade = np.full((W, W), 1.0, f32)
    ey = cy - fh * rng.uniform(0.08, 0.2)  # eye line
    eo = fw * rng.uniform(0.36, 0.44)  # eye offset from axis
    ew = fw * rng.uniform(0.15, 0.21)  # eye half width
    eh = ew * rng.uniform(0.38, 0.58)
    ny = cy + fh * rng.uniform(0.14, 0.26)  # nose tip / nostril line
    nws = fw * rng.uniform(0.13, 0.2)  # nose half width
    my = ny + fh * rng.uniform(0.2, 0.3)  # mouth line
    mw = fw * rng.uniform(0.26, 0.4)
    uh = fh * rng.uniform(0.035, 0.06)
    lh = fh * rng.uniform(0.05, 0.09)
    sd = rng.uniform(0.75, 0.9)
    for side in (1, -1):
        _ell(shade, (fx + side * eo, ey - eh * 0.5), (ew * 1.35, eh * 2.2), 0, float(sd))
    lside = 1 if math.cos(la) < 0 else -1  # nose side facing away from the light is darker
    _ell(
        shade,
        (fx + lside * nws * 0.7, (ey + ny) / 2),
        (nws * 0.45, (ny - ey) * 0.55),
        0,
        float(sd - 0.05),
    )
    _ell(shade, (fx, ny + fh * 0.05), (nws * 1.2, fh * 0.035), 0, float(sd))
    _ell(shade, (fx, my + lh + fh * 0.04), (mw * 0.6, fh * 0.03), 0, float(0.5 + sd / 2))
    _ell(shade, (fx, ny - fh * 0.03), (nws * 0.4, fh * 0.05), 0, 1.1)  # nose tip highlight
    _ell(shade, (fx, (ey + ny) / 2), (nws * 0.18, (ny - ey) * 0.4), 0, 1.06)  # bridge
    for side in (1, -1):  # cheeks
        _ell(
            shade,
            (fx + side * fw * 0.5, ny + fh * 0.05),
            (fw * 0.22, fh * 0.16),
            0,
            float(rng.uniform(0.98, 1.06)),
        )
    shade = cv2.GaussianBlur(shade, (0, 0), fw * 0.07)

    def face_layer(r, c):  # rim darkening towards the face outline
        rad = np.sqrt(((xx[r, c] - cx) / fw) ** 2 + ((yy[r, c] - cy) / fh) ** 2)
        rim = np.clip(0.5 + 1.2 * (1.0 - rad), 0.0, 1.0)
        fmul = shade[r, c] * (0.72 + 0.28 * rim) * (1.0 + tex[r, c, 3])
        return skin_layer(r, c) * fmul[..., None]

    _paste(canvas, face, face_layer, lab, _C["skin"])

    # ---------------- hair on top ----------------
    if hair_style >= 1:
        cap = np.zeros((W, W), np.uint8)
        _ell(
            cap,
            (cx, hcy if hair_style >= 2 else cy - fh * 0.05),
            (fw * rng.uniform(1.04, 1.12), fh * rng.uniform(1.02, 1.1)),
            0,
            1,
        )
        hairline = rng.uniform(0.38, 0.68) if rng.random() < 0.8 else rng.uniform(0.25, 0.4)
        cut = np.zeros((W, W), np.uint8)
        tilt = rng.normal(0, 8)
        _ell(
            cut,
            (cx + rng.normal(0, 0.08) * fw, cy + fh * (1.0 - hairline)),
            (fw * rng.uniform(0.86, 0.96), fh),
            tilt,
            1,
        )
        cap[cut > 0] = 0
        cap[int(cy + fh * rng.uniform(-0.05, 0.2)) :] = 0
        _paste(canvas, cap, hair_layer, lab, _C["hair"])

    # ---------------- eyebrows ----------------
    by = ey - eh - fh * rng.uniform(0.08, 0.15)
    bw = ew * rng.uniform(1.1, 1.45)
    bth = max(1.0, fh * rng.uniform(0.025, 0.045))
    arch = rng.uniform(0.15, 0.4)
    for side, cls in ((1, "l_brow"), (-1, "r_brow")):
        bx = fx + side * eo * rng.uniform(1.0, 1.1)
        u = np.linspace(-1, 1, 9)
        pts_top = np.stack(
            [bx + side * u * bw, by - bw * arch * (1 - u**2) - bth * 0.5 + side * u * bw * 0.08], 1
        )
        thick = bth * (1.0 - 0.45 * (side * u + 1) / 2)  # thinner towards the outside
        pts_bot = pts_top + np.stack([np.zeros_like(u), thick * 2], 1)
        poly = np.concatenate([pts_top, pts_bot[::-1]], 0)
        m = np.zeros((W, W), np.uint8)
        _poly(m, poly, 1)
        _paste(canvas, m, lambda r, c: brow_c * (1.0 + 0.2 * strands[r, c, None]), lab, _C[cls])

    # ---------------- eyes ----------------
    ir = eh * rng.uniform(0.85, 1.1)
    gaze = rng.normal(0, 0.12, 2)
    lid = (brow_c * 0.5 + 10).astype(f32)
    for side, cls in ((1, "l_eye"), (-1, "r_eye")):
        ex = fx + side * eo
        x0, x1 = int(ex - ew * 1.6), int(ex + ew * 1.6) + 2
        y0, y1 = int(ey - eh * 2.5), int(ey + eh * 2.0) + 2
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, W), min(y1, W)
        if x1 <= x0 or y1 <= y0:
            continue
        roi = canvas[y0:y1, x0:x1]
        c = (ex - x0, ey - y0)
        # almond shape: upper and lower arcs
        u = np.linspace(-1, 1, 15)
        upper = np.stack([c[0] + u * ew, c[1] - eh * (1 - u**2) ** 0.8 * (1 + 0.15 * side * u)], 1)
        lower = np.stack([c[0] + u * ew, c[1] + eh * 0.75 * (1 - u**2) ** 0.9], 1)
        m = np.zeros(roi.shape[:2], np.uint8)
        _poly(m, np.concatenate([upper, lower[::-1]], 0), 1)
        eye = roi.copy()
        eye[:] = white_c
        ic = (c[0] + gaze[0] * ew, c[1] + gaze[1] * eh)
        _ell(eye, ic, (ir, ir), 0, _col(iris_c))
        _ell(eye, ic, (ir, ir), 0, _col(iris_c * 0.6), max(1, int(ir * 0.15)))
        _ell(eye, ic, (ir * 0.42, ir * 0.42), 0, (12.0, 10.0, 10.0))
        _ell(
            eye,
            (ic[0] + ir * 0.3, ic[1] - ir * 0.3),
            (ir * 0.16, ir * 0.16),
            0,
            (245.0, 245.0, 245.0),
        )
        _paste(roi, m, eye, lab[y0:y1, x0:x1], _C[cls])
        _polyline(roi, upper, _col(lid), max(1.0, eh * 0.28))
        crease = upper + np.array([0.0, -eh * 0.55])
        _polyline(roi, crease[2:-2], _col(skin * 0.7 * sd), max(1.0, eh * 0.12))

    # ---------------- nose ----------------
    nose = np.zeros((W, W), np.uint8)
    _poly(
        nose,
        [
            (fx - nws * 0.35, ey + eh * 0.3),
            (fx + nws * 0.35, ey + eh * 0.3),
            (fx + nws * 1.05, ny + fh * 0.02),
            (fx, ny + fh * 0.05),
            (fx - nws * 1.05, ny + fh * 0.02),
        ],
        1,
    )
    lab[nose.view(bool)] = _C["nose"]
    nost = skin * 0.45 * sd
    for side in (1, -1):
        _ell(
            canvas,
            (fx + side * nws * 0.45, ny + fh * 0.005),
            (nws * 0.28, nws * 0.13),
            side * 20,
            _col(nost),
        )
        _ell(
            canvas,
            (fx + side * nws * 0.75, ny - fh * 0.02),
            (nws * 0.3, fh * 0.05),
            0,
            _col(skin * 0.75 * sd),
            max(1, int(fw * 0.02)),
            200 if side < 0 else -20,
            340 if side < 0 else 120,
        )

    # ---------------- mouth / lips ----------------
    smile = rng.normal(0.0, 0.25) * uh
    open_mouth = rng.random() < 0.2
    gap = lh * rng.uniform(0.3, 0.9) if open_mouth else 0.0
    u = np.linspace(-1, 1, 17)
    mid_line = np.stack([fx + u * mw, my - smile * u**2], 1)
    bow = uh * (1 - u**2) ** 0.6 * (1.0 - 0.35 * np.exp(-((u / 0.15) ** 2)))
    upper = np.stack([fx + u * mw, my - smile * u**2 - bow - 0.5], 1)
    lower_top = mid_line + np.array([0.0, gap])
    lower = np.stack([fx + u * mw * 0.97, lower_top[:, 1] + lh * (1 - u**2) ** 0.7 + 0.5], 1)
    m_up = np.zeros((W, W), np.uint8)
    _poly(m_up, np.concatenate([upper, mid_line[::-1]], 0), 1)
    m_lo = np.zeros((W, W), np.uint8)
    _poly(m_lo, np.concatenate([lower_top, lower[::-1]], 0), 1)

    def lip_layer(r, c, k=1.0):
        return (lip_c * k) * (light[r, c] * (1.0 + 0.05 * strands[r, c]))[..., None]

    _paste(canvas, m_up, lambda r, c: lip_layer(r, c, 0.82), lab, _C["u_lip"])
    _paste(canvas, m_lo, lip_layer, lab, _C["l_lip"])
    _ell(canvas, (fx, my + lh * 0.45 + gap), (mw * 0.35, lh * 0.18), 0, _col(lip_c * 1.12))
    if open_mouth:
        mo = np.zeros((W, W), np.uint8)
        _poly(mo, np.concatenate([mid_line, lower_top[::-1]], 0), 1)
        inner = canvas.copy()
        inner[:] = (40.0, 14.0, 18.0)
        _ell(inner, (fx, my + gap * 0.05), (mw * 0.55, gap * 0.5), 0, (225.0, 220.0, 205.0))
        _paste(canvas, mo, inner, lab, _C["mouth"])
    else:
        _polyline(canvas, mid_line, _col(lip_c * 0.45), max(1.0, fh * 0.012))

    # ---------------- eyeglasses ----------------
    glasses = rng.random() < 0.15
    if glasses:
        gm = np.zeros((W, W), np.uint8)
        gw, gh = ew * rng.uniform(1.45, 1.7), eh * rng.uniform(2.0, 2.6)
        gth = max(1, int(round(fw * rng.uniform(0.025, 0.05))))
        gcol = rng.uniform(0, 1) ** 2 * 200
        gc = _col(np.full(3, gcol, f32) + rng.normal(0, 10, 3))
        tint = rng.random() < 0.3
        for side in (1, -1):
            gx = fx + side * eo
            if tint:
                lens = np.zeros((W, W), np.uint8)
                _ell(lens, (gx, ey), (gw, gh), 0, 1)
                lm = lens.astype(bool)
                canvas[lm] = canvas[lm] * 0.55 + np.float32(15)
            _ell(gm, (gx, ey), (gw, gh), 0, 1, gth)
            _polyline(gm, [(gx + side * gw, ey - gh * 0.3), (cx + side * fw * 1.0, ear_y)], 1, gth)
        _polyline(
            gm,
            [(fx - eo + gw, ey - gh * 0.2), (fx, ey - gh * 0.45), (fx + eo - gw, ey - gh * 0.2)],
            1,
            gth,
        )
        _paste(canvas, gm, np.array(gc, f32), lab, _C["eye_g"])

    # ---------------- pose warp + downsample ----------------
    M = cv2.getRotationMatrix2D((cx, cy), angle, 1.0)
    canvas = cv2.warpAffine(
        canvas, M, (W, W), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )
    lab = cv2.warpAffine(lab, M, (W, W), flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_REFLECT_101)
    img = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    lab = block_majority(lab, _SS)

    def box(x0, y0, x1, y1):
        pts = np.array([[x0, y0, 1], [x1, y0, 1], [x0, y1, 1], [x1, y1, 1]], np.float64) @ M.T
        b = [
            pts[:, 0].min() / _SS,
            pts[:, 1].min() / _SS,
            pts[:, 0].max() / _SS,
            pts[:, 1].max() / _SS,
        ]
        return (
            min(max(math.floor(b[0]), 0), size),
            min(max(math.floor(b[1]), 0), size),
            min(max(math.ceil(b[2]), 0), size),
            min(max(math.ceil(b[3]), 0), size),
        )

    def pt(x, y):
        p = M @ np.array([x, y, 1.0])
        return [p[0] / _SS, p[1] / _SS]

    info = {
        "face": box(cx - fw, cy - fh, cx + fw, cy + fh),
        "l_eye": box(fx + eo - ew, ey - eh, fx + eo + ew, ey + eh * 0.8),
        "r_eye": box(fx - eo - ew, ey - eh, fx - eo + ew, ey + eh * 0.8),
        "l_brow": box(fx + eo - bw, by - bw * arch - bth, fx + eo * 1.1 + bw, by + bth * 1.5),
        "r_brow": box(fx - eo * 1.1 - bw, by - bw * arch - bth, fx - eo + bw, by + bth * 1.5),
        "nose": box(fx - nws * 1.05, ey + eh * 0.3, fx + nws * 1.05, ny + fh * 0.05),
        "mouth": box(fx - mw, my - abs(smile) - uh, fx + mw, my + abs(smile) + gap + lh),
        "l_ear": box(
            cx + fw * 0.96 - ear_a[0], ear_y - ear_a[1], cx + fw * 0.96 + ear_a[0], ear_y + ear_a[1]
        ),
        "r_ear": box(
            cx - fw * 0.96 - ear_a[0], ear_y - ear_a[1], cx - fw * 0.96 + ear_a[0], ear_y + ear_a[1]
        ),
        "landmarks": np.array(
            [
                pt(fx + eo, ey),
                pt(fx - eo, ey),
                pt(fx, ny - fh * 0.02),
                pt(fx - mw, my - smile),
                pt(fx + mw, my - smile),
            ],
            np.float32,
        ),
        "angle": angle,
        "glasses": bool(glasses),
    }
    return img, lab, info


# --------------------------------------------------------------------------------------------
# camera and generator simulation
# --------------------------------------------------------------------------------------------
def _camera(rng: np.random.Generator, img: np.ndarray, blur_sigma: float) -> np.ndarray:
    """Defocus blur (sigma in px), white balance jitter, read + shot noise -> uint8."""
    x = img.astype(np.float32)
    if blur_sigma > 0.05:
        x = cv2.GaussianBlur(x, (0, 0), blur_sigma)
    x *= rng.normal(1.0, 0.02, 3).astype(np.float32)
    read = rng.uniform(0.8, 3.0)
    shot = rng.uniform(0.0, 0.05)
    sd = np.sqrt(read * read + shot * np.clip(x, 0, 255))
    x += rng.standard_normal(x.shape, dtype=np.float32) * sd
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def _real_blur(rng: np.random.Generator) -> float:
    return float(rng.uniform(0.0, 1.0) if rng.random() < 0.85 else 0.0)


_BIL4 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 16.0 * 4.0  # sum 4
_SMOOTH3 = np.outer([1, 2, 1], [1, 2, 1]).astype(np.float32) / 16.0


def _tconv2(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution of (h, w, 3) with a 4x4 kernel (zero insertion + conv)."""
    h, w = x.shape[:2]
    z = np.zeros((2 * h, 2 * w, 3), np.float32)
    z[::2, ::2] = x
    return cv2.filter2D(z, -1, k, borderType=cv2.BORDER_REFLECT_101)


def _random_kernel(rng: np.random.Generator, base: np.ndarray, amp: float) -> np.ndarray:
    """``base`` + zero-sum noise of relative size ``amp`` per tap (DC gain kept)."""
    noise = rng.standard_normal(base.shape).astype(np.float32) * (amp * float(base.mean()))
    return (base + noise - noise.mean()).astype(np.float32)


def _generator_trace(rng: np.random.Generator, clean: np.ndarray, difficulty: float) -> np.ndarray:
    """Simulated generator decoder. Returns a float32 image (before camera noise).

    The face is reduced by ``f`` (2 or 4) and upsampled with random stride-2 transposed
    convolutions (or nearest upsampling + a random 3x3 conv); a small fixed periodic pattern
    (the "bias fingerprint" of the upsampling layers) is added. The output is
    ``(1 - w) * clean + w * smooth_upsampled + amp(difficulty) * trace``.
    """
    S0 = clean.shape[0]
    x = clean.astype(np.float32)
    f = 4 if rng.random() < 0.3 else 2
    S = -(-S0 // f) * f  # pad odd sizes to a multiple of f, crop at the end
    if S != S0:
        x = cv2.copyMakeBorder(x, 0, S - S0, 0, S - S0, cv2.BORDER_REFLECT_101)
    low = cv2.resize(x, (S // f, S // f), interpolation=cv2.INTER_AREA)
    ref = cv2.resize(low, (S, S), interpolation=cv2.INTER_LINEAR)
    kamp = rng.uniform(0.02, 0.06)
    if rng.random() < 0.65:  # transposed convolutions
        up = low
        up_ref = low
        while up.shape[0] < S:
            k = _random_kernel(rng, _BIL4, kamp)
            up = _tconv2(up, k)
            up_ref = _tconv2(up_ref, _BIL4)
        resid = up - up_ref
    else:  # nearest upsampling + random 3x3 conv
        near = cv2.resize(low, (S, S), interpolation=cv2.INTER_NEAREST)
        smooth = cv2.filter2D(near, -1, _SMOOTH3, borderType=cv2.BORDER_REFLECT_101)
        k = _random_kernel(rng, _SMOOTH3, kamp * 3.0)
        resid = cv2.filter2D(near, -1, k, borderType=cv2.BORDER_REFLECT_101) - smooth
        resid += 0.5 * (smooth - ref)
    # additive periodic fingerprint of the upsampling stack (period 4, Nyquist damped)
    pat = rng.normal(0.0, 1.0, (4, 4, 1)) + rng.normal(0.0, 0.3, (4, 4, 3))
    pat = (pat + 0.5 * (np.roll(pat, 1, 0) + np.roll(pat, -1, 0))) / 2.0
    pat = (pat + 0.5 * (np.roll(pat, 1, 1) + np.roll(pat, -1, 1))) / 2.0
    pat = pat - pat.mean(axis=(0, 1), keepdims=True)
    pat *= rng.uniform(1.0, 2.5) / (pat.std() + 1e-6)
    resid += np.tile(pat.astype(np.float32), (-(-S // 4), -(-S // 4), 1))[:S, :S]
    w = rng.uniform(0.3, 1.0) if f == 2 else rng.uniform(0.15, 0.6)
    d = float(np.clip(difficulty, 0.0, 1.0))
    amp = TRACE_AMP_EASY ** (1.0 - d) * TRACE_AMP_HARD**d
    out = (1.0 - w) * x + w * ref + amp * resid
    out *= rng.normal(1.0, 0.01, 3).astype(np.float32)  # slight tone shift of the generator
    return np.ascontiguousarray(out[:S0, :S0])


def make_real(rng: np.random.Generator, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """A "real" photo: ``render_face`` + camera (defocus, noise). Returns (rgb uint8, labels)."""
    img, lab, _ = render_face(rng, image_size)
    return _camera(rng, img, _real_blur(rng)), lab


def make_fake(
    rng: np.random.Generator, image_size: int, difficulty: float
) -> tuple[np.ndarray, np.ndarray]:
    """A generated ("fake") face with decoder traces + the same camera noise as reals.

    ``difficulty`` in [0, 1]: 0 = strong periodic traces, 1 = faint. Returns (rgb uint8, labels).
    """
    img, lab, _ = render_face(rng, image_size)
    out = _generator_trace(rng, img, difficulty)
    return _camera(rng, out, 0.0), lab


def jpeg_quality(rng: np.random.Generator) -> int:
    return int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1))


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    ok, buf = cv2.imencode(
        ".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    )
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def _write_bytes(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)


def _write_png(path: str, lab: np.ndarray) -> None:
    ok, buf = cv2.imencode(".png", lab)
    if not ok:
        raise RuntimeError("PNG encoding failed")
    _write_bytes(path, buf.tobytes())


# --------------------------------------------------------------------------------------------
# CIPLab-style region edits
# --------------------------------------------------------------------------------------------
def _expand(b, fx: float, fy: float, size: int):
    x0, y0, x1, y1 = b
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    hw, hh = max(x1 - x0, 2) * fx / 2, max(y1 - y0, 2) * fy / 2
    return (
        int(np.clip(round(cx - hw), 0, size - 1)),
        int(np.clip(round(cy - hh), 0, size - 1)),
        int(np.clip(round(cx + hw), 1, size)),
        int(np.clip(round(cy + hh), 1, size)),
    )


def make_ciplab_fake(
    rng: np.random.Generator, image_size: int, level: int, bits: Iterable[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Photoshop-style fake: regions (l_eye, r_eye, nose, mouth; ``bits``) of one face replaced
    by those of another face. ``level`` 0/1/2 = easy/mid/hard seam. Returns (rgb uint8, labels)
    after the camera model (same as reals)."""
    S = int(image_size)
    base, lab, info = render_face(rng, S)
    donor, dlab, dinfo = render_face(rng, S)
    d = (0.0, 0.5, 1.0)[int(level)]
    out = base.astype(np.float32)
    lab = lab.copy()
    grow = {"l_eye": (1.6, 2.4), "r_eye": (1.6, 2.4), "nose": (1.5, 1.25), "mouth": (1.35, 1.8)}
    for part, bit in zip(CIPLAB_PARTS, bits, strict=True):
        if not bit:
            continue
        bx0, by0, bx1, by1 = _expand(info[part], *grow[part], S)
        dx0, dy0, dx1, dy1 = _expand(dinfo[part], *grow[part], S)
        bw, bh = bx1 - bx0, by1 - by0
        if bw < 2 or bh < 2 or dx1 - dx0 < 2 or dy1 - dy0 < 2:
            continue
        patch = cv2.resize(
            donor[dy0:dy1, dx0:dx1].astype(np.float32), (bw, bh), interpolation=cv2.INTER_LINEAR
        )
        plab = cv2.resize(dlab[dy0:dy1, dx0:dx1], (bw, bh), interpolation=cv2.INTER_NEAREST)
        region = out[by0:by1, bx0:bx1]
        # colour matching: full at hard, none (plus a deliberate mismatch) at easy
        pm, ps = patch.reshape(-1, 3).mean(0), patch.reshape(-1, 3).std(0) + 1e-3
        rm, rs = region.reshape(-1, 3).mean(0), region.reshape(-1, 3).std(0) + 1e-3
        matched = (patch - pm) * (rs / ps) + rm
        cm = (0.0, 0.6, 1.0)[int(level)]
        patch = matched * cm + patch * (1.0 - cm)
        if level == 0:
            patch = patch * rng.uniform(0.85, 1.15) + rng.normal(0, 8, 3).astype(np.float32)
        mask = np.zeros((bh, bw), np.float32)
        if level == 0 and rng.random() < 0.5:
            mask[:] = 1.0
        else:
            _ell(mask, ((bw - 1) / 2, (bh - 1) / 2), (bw / 2 * 0.95, bh / 2 * 0.95), 0, 1.0)
        if d > 0:
            sig = d * 0.12 * min(bw, bh) + 0.3
            mask = (
                cv2.GaussianBlur(mask, (0, 0), sig) * (mask > 0)
                if level == 1
                else cv2.GaussianBlur(mask, (0, 0), sig)
            )
        out[by0:by1, bx0:bx1] = region * (1.0 - mask[..., None]) + patch * mask[..., None]
        lab[by0:by1, bx0:bx1] = np.where(mask > 0.5, plab, lab[by0:by1, bx0:bx1])
    return _camera(rng, np.clip(out, 0, 255), _real_blur(rng)), lab


# --------------------------------------------------------------------------------------------
# dataset writers
# --------------------------------------------------------------------------------------------
def _rng(seed: int, layout: str, group: int, cls: int, i: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), LAYOUT_IDS[layout], int(group), int(cls), int(i)])


def _split_id(split: str) -> int:
    return SPLIT_IDS.get(split, 100 + zlib.crc32(split.encode()) % 100000)


def _task_140k(args) -> None:
    out_dir, split, cls, i, size, difficulty, seed, masks = args
    rng = _rng(seed, "140k", _split_id(split), CLASS_IDS[cls], i)
    if cls == "real":
        img, lab = make_real(rng, size)
    else:
        img, lab = make_fake(rng, size, difficulty)
    stem = f"{split}_{cls}_{i:05d}"
    _write_bytes(
        os.path.join(out_dir, split, cls, stem + ".jpg"), encode_jpeg(img, jpeg_quality(rng))
    )
    if masks:
        _write_png(os.path.join(out_dir, split, cls + "_masks", stem + ".png"), lab)


def ciplab_name(level: int, idx: int, bits) -> str:
    return f"{CIPLAB_LEVELS[level]}_{idx:05d}_{''.join(str(int(b)) for b in bits)}"


def _task_ciplab(args) -> None:
    out_dir, cls, i, size, seed, masks = args
    rng = _rng(seed, "ciplab", 0, CLASS_IDS[cls], i)
    if cls == "real":
        img, lab = make_real(rng, size)
        stem, sub = f"real_{i:05d}", "training_real"
    else:
        level = int(rng.choice(3, p=[0.25, 0.5, 0.25]))
        bits = [0, 0, 0, 0]
        while not any(bits):
            bits = [int(b) for b in rng.random(4) < 0.45]
        img, lab = make_ciplab_fake(rng, size, level, bits)
        stem, sub = ciplab_name(level, i, bits), "training_fake"
    _write_bytes(os.path.join(out_dir, sub, stem + ".jpg"), encode_jpeg(img, jpeg_quality(rng)))
    if masks:
        _write_png(os.path.join(out_dir, sub + "_masks", stem + ".png"), lab)


def _worker_init() -> None:
    cv2.setNumThreads(1)


def _run_tasks(fn: Callable, tasks: list, num_workers: int, progress: bool, desc: str) -> None:
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=desc, unit="img", file=sys.stderr)
    if num_workers <= 1 or len(tasks) < 2:
        n_threads = cv2.getNumThreads()
        cv2.setNumThreads(1)  # images are tiny: OpenCV threading only adds overhead
        try:
            for t in tasks:
                fn(t)
                if bar is not None:
                    bar.update(1)
        finally:
            cv2.setNumThreads(n_threads)
    else:
        import multiprocessing as mp

        # fork is fast and works from any __main__; spawn when the parent runs threads
        # (e.g. JAX imported), where forking is unsafe.
        import threading

        safe_fork = (
            sys.platform.startswith("linux")
            and threading.active_count() == 1
            and "jax" not in sys.modules
        )
        ctx = mp.get_context("fork" if safe_fork else "spawn")
        with ctx.Pool(int(num_workers), initializer=_worker_init) as pool:
            for _ in pool.imap_unordered(
                fn, tasks, chunksize=max(1, min(64, len(tasks) // (8 * num_workers)))
            ):
                if bar is not None:
                    bar.update(1)
    if bar is not None:
        bar.close()


def generate_140k(
    output_dir: str,
    counts: dict[str, int],
    image_size: int = 64,
    difficulty: float = 0.5,
    seed: int = 0,
    masks: bool = False,
    num_workers: int = 1,
    progress: bool = False,
) -> dict:
    """Writes ``<output_dir>/{split}/{real,fake}/<split>_<class>_<i:05d>.jpg`` with
    ``counts[split]`` images PER CLASS (``i`` from 0), e.g. ``{'train': 1000, 'valid': 200,
    'test': 200}``. With ``masks=True`` also ``<output_dir>/{split}/{real,fake}_masks/<stem>.png``
    label maps (``PARSING_CLASSES`` indices). Returns a summary dict."""
    t0 = time.perf_counter()
    tasks = []
    for split, n in counts.items():
        for cls in ("real", "fake"):
            os.makedirs(os.path.join(output_dir, split, cls), exist_ok=True)
            if masks:
                os.makedirs(os.path.join(output_dir, split, cls + "_masks"), exist_ok=True)
            tasks += [
                (
                    output_dir,
                    split,
                    cls,
                    i,
                    int(image_size),
                    float(difficulty),
                    int(seed),
                    bool(masks),
                )
                for i in range(int(n))
            ]
    _run_tasks(_task_140k, tasks, num_workers, progress, "140k")
    dt = time.perf_counter() - t0
    return {
        "layout": "140k",
        "output_dir": str(output_dir),
        "counts": {s: {"real": int(n), "fake": int(n)} for s, n in counts.items()},
        "total_images": len(tasks),
        "image_size": int(image_size),
        "difficulty": float(difficulty),
        "seed": int(seed),
        "masks": bool(masks),
        "seconds": dt,
        "images_per_second": len(tasks) / dt if dt > 0 else float("inf"),
    }


def generate_ciplab(
    output_dir: str,
    num_real: int,
    num_fake: int,
    image_size: int = 64,
    seed: int = 0,
    masks: bool = False,
    num_workers: int = 1,
    progress: bool = False,
) -> dict:
    """Writes ``<output_dir>/training_real/real_<id:05d>.jpg`` and
    ``<output_dir>/training_fake/{easy,mid,hard}_<id:05d>_<bits>.jpg`` (ids from 1, like the
    original dataset; bits = edited l_eye, r_eye, nose, mouth, at least one '1'). With
    ``masks=True`` label maps go to ``training_{real,fake}_masks/<stem>.png``."""
    t0 = time.perf_counter()
    for sub in ("training_real", "training_fake"):
        os.makedirs(os.path.join(output_dir, sub), exist_ok=True)
        if masks:
            os.makedirs(os.path.join(output_dir, sub + "_masks"), exist_ok=True)
    tasks = [
        (output_dir, "real", i, int(image_size), int(seed), bool(masks))
        for i in range(1, int(num_real) + 1)
    ]
    tasks += [
        (output_dir, "fake", i, int(image_size), int(seed), bool(masks))
        for i in range(1, int(num_fake) + 1)
    ]
    _run_tasks(_task_ciplab, tasks, num_workers, progress, "ciplab")
    levels = dict.fromkeys(CIPLAB_LEVELS, 0)
    fake_dir = os.path.join(output_dir, "training_fake")
    for name in os.listdir(fake_dir):
        lv = name.split("_", 1)[0]
        if lv in levels:
            levels[lv] += 1
    dt = time.perf_counter() - t0
    return {
        "layout": "ciplab",
        "output_dir": str(output_dir),
        "counts": {"real": int(num_real), "fake": int(num_fake), "fake_levels": levels},
        "total_images": len(tasks),
        "image_size": int(image_size),
        "seed": int(seed),
        "masks": bool(masks),
        "seconds": dt,
        "images_per_second": len(tasks) / dt if dt > 0 else float("inf"),
    }


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m data_prep.synthetic",
        description="Write a deterministic synthetic real/fake face dataset.",
    )
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--layout", choices=sorted(LAYOUT_IDS), default="140k")
    p.add_argument("--train", type=int, default=1000, help="140k: images per class in train")
    p.add_argument("--valid", type=int, default=200, help="140k: images per class in valid")
    p.add_argument("--test", type=int, default=200, help="140k: images per class in test")
    p.add_argument("--num-real", type=int, default=1081, help="ciplab: real images")
    p.add_argument("--num-fake", type=int, default=960, help="ciplab: fake images")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--difficulty", type=float, default=0.5, help="140k fakes: 0 easy .. 1 hard")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--masks", action="store_true", help="also write face-parsing label maps")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="allow a non-empty output dir (the chosen layout's folders in it are replaced)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    if args.image_size < 16:
        build_parser().error("--image-size must be >= 16")
    if not 0.0 <= args.difficulty <= 1.0:
        build_parser().error("--difficulty must be in [0, 1]")
    out = args.output
    if os.path.isdir(out) and os.listdir(out):
        if not args.overwrite:
            build_parser().error(
                f"output directory {out!r} is not empty; pass --overwrite to replace its "
                "dataset folders, or choose another --output"
            )
        subs = (
            ["train", "valid", "test"]
            if args.layout == "140k"
            else ["training_real", "training_fake", "training_real_masks", "training_fake_masks"]
        )
        for sub in subs:
            path = os.path.join(out, sub)
            if os.path.isdir(path):
                shutil.rmtree(path)
    elif os.path.exists(out) and not os.path.isdir(out):
        build_parser().error(f"--output {out!r} exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    common = dict(
        image_size=args.image_size,
        seed=args.seed,
        masks=args.masks,
        num_workers=args.workers,
        progress=not args.no_progress,
    )
    if args.layout == "140k":
        counts = {"train": args.train, "valid": args.valid, "test": args.test}
        summary = generate_140k(out, counts, difficulty=args.difficulty, **common)
    else:
        summary = generate_ciplab(out, args.num_real, args.num_fake, **common)
    print(
        f"wrote {summary['total_images']} images ({summary['layout']} layout, "
        f"{summary['image_size']} px) to {out} in {summary['seconds']:.1f} s "
        f"({summary['images_per_second']:.0f} img/s)"
    )
    print("counts:", summary["counts"])
    return summary


if __name__ == "__main__":
    main()
