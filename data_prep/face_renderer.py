"""The synthetic face renderer: a random face (pose, skin, hair, brows, eyes, nose, lips, ears,
neck, clothes, glasses) drawn at 2x and downsampled, with its 19-class label map in
`PARSING_CLASSES` order (``l_`` = the subject's left = the image's right)."""

from __future__ import annotations

import math

import cv2
import numpy as np

from data_prep.face_drawing import (
    as_color,
    draw_ellipse,
    draw_polygon,
    draw_polyline,
    lerp,
    paste_layer,
    pick_color,
    pixel_grid,
    smooth_textures,
)
from deepfake_jax.parsing.classes import PARSING_CLASSES

_C = {name: i for i, name in enumerate(PARSING_CLASSES)}


_SS = 2  # supersampling factor of the renderer


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
    yy, xx = pixel_grid(W)

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
    skin = lerp(_SKIN[i0], _SKIN[min(i0 + 1, len(_SKIN) - 1)], t - i0)
    skin = np.clip(skin + rng.normal(0, 6, 3), 0, 255).astype(f32)
    hair_c = pick_color(rng, _HAIR, _HAIR_P, 8.0)
    brow_c = lerp(hair_c, skin * 0.35, rng.uniform(0.0, 0.4))
    lip_c = np.clip(
        lerp(skin, [178, 74, 84], rng.uniform(0.3, 0.6)) * rng.uniform(0.8, 1.0), 0, 255
    )
    iris_c = pick_color(rng, _IRIS, _IRIS_P, 10.0)
    white_c = np.clip(np.array([236, 232, 226], f32) * rng.uniform(0.85, 1.0), 0, 255)
    cloth_c = rng.uniform(15, 235, 3).astype(f32)

    # ---------------- background ----------------
    c1 = rng.uniform(20, 235, 3).astype(f32)
    c2 = np.clip(c1 + rng.normal(0, 45, 3), 0, 255).astype(f32)
    th = rng.uniform(0, 2 * np.pi)
    g = ((xx - W / 2) * math.cos(th) + (yy - W / 2) * math.sin(th)) / W + 0.5
    canvas = c1 + (c2 - c1) * np.clip(g, 0, 1)[..., None]
    # bg, hair, cloth, face
    tex = smooth_textures(rng, W, 5, (rng.uniform(5, 25), 0.15, 0.12, 0.04))
    canvas += tex[..., :1]
    if rng.random() < 0.5:  # out-of-focus blobs
        blobs = np.zeros((W, W, 3), f32)
        for _ in range(rng.integers(2, 6)):
            draw_ellipse(
                blobs,
                rng.uniform(0, W, 2),
                (W * rng.uniform(0.05, 0.15),) * 2,
                0,
                as_color(rng.normal(0, 40, 3)),
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
        draw_ellipse(back, (cx, hcy), haxes, 0, 1)
        if hair_style == 3:
            bottom = cy + fh * rng.uniform(1.0, 1.8)
            hw = haxes[0] * rng.uniform(0.92, 1.05)
            draw_polygon(
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
            draw_polygon(
                back,
                [
                    (cx - haxes[0], hcy),
                    (cx + haxes[0], hcy),
                    (cx + haxes[0] * 0.9, cy + fh * 0.45),
                    (cx - haxes[0] * 0.9, cy + fh * 0.45),
                ],
                1,
            )
        paste_layer(canvas, back, lambda r, c: hair_layer(r, c, 0.8), lab, _C["hair"])

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
    draw_polygon(
        neck,
        [(cx - nw, ntop), (cx + nw, ntop), (cx + nw * 1.15, W + 2), (cx - nw * 1.15, W + 2)],
        1,
    )

    def neck_layer(r, c):
        chin_shadow = np.clip((yy[r, c] - (cy + fh * 0.85)) / (0.35 * fh), 0, 1)
        return skin_layer(r, c) * (0.62 + 0.22 * chin_shadow)[..., None]

    paste_layer(canvas, neck, neck_layer, lab, _C["neck"])

    cloth = np.zeros((W, W), np.uint8)
    sh_y = cy + fh * rng.uniform(1.15, 1.45)
    draw_ellipse(
        cloth,
        (cx + rng.normal(0, 0.02 * W), sh_y + W * 0.5),
        (W * rng.uniform(0.42, 0.62), W * 0.5),
        0,
        1,
    )
    if rng.random() < 0.6:  # neckline
        nl = np.zeros((W, W), np.uint8)
        if rng.random() < 0.5:
            draw_polygon(
                nl,
                [
                    (cx - nw * 1.3, sh_y - 1),
                    (cx + nw * 1.3, sh_y - 1),
                    (cx, sh_y + fh * rng.uniform(0.2, 0.6)),
                ],
                1,
            )
        else:
            draw_ellipse(nl, (cx, sh_y), (nw * 1.25, fh * rng.uniform(0.1, 0.3)), 0, 1)
        cloth[nl > 0] = 0
    ctex = 1.0 + tex[..., 2]
    paste_layer(
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
        paste_layer(canvas, front, lambda r, c: hair_layer(r, c, 0.9), lab, _C["hair"])

    # ---------------- ears ----------------
    ear_y = cy - fh * rng.uniform(0.0, 0.12)
    ear_a = (fw * rng.uniform(0.14, 0.2), fh * rng.uniform(0.2, 0.27))
    ears = np.zeros((W, W), np.uint8)
    for side, cls in ((1, "l_ear"), (-1, "r_ear")):
        sc = 1.0 - side * yaw * 2.0  # far ear smaller
        ex = cx + side * fw * (0.96 - 0.05 * side * yaw)
        e = np.zeros((W, W), np.uint8)
        draw_ellipse(e, (ex, ear_y), (ear_a[0] * sc, ear_a[1]), side * 12, 1)
        ears |= e
        lab[e.view(bool)] = _C[cls]
    paste_layer(canvas, ears, lambda r, c: skin_layer(r, c) * 0.88)
    for side in (1, -1):
        sc = 1.0 - side * yaw * 2.0
        ex = cx + side * fw * (1.0 - 0.05 * side * yaw)
        draw_ellipse(
            canvas,
            (ex, ear_y),
            (ear_a[0] * sc * 0.45, ear_a[1] * 0.6),
            side * 12,
            as_color(skin * 0.62 * light[int(np.clip(ear_y, 0, W - 1)),
                                         int(np.clip(ex, 0, W - 1))]),
        )

    # ---------------- face ----------------
    n_pts = 72
    a = np.linspace(0, 2 * np.pi, n_pts, endpoint=False)
    s = np.sin(a)
    px = cx + fw * np.cos(a) * (1.0 - jaw * np.clip(s, 0, 1) ** 2)
    py = cy + fh * np.where(s > 0, s, s * rng.uniform(0.92, 1.02))
    face = np.zeros((W, W), np.uint8)
    draw_polygon(face, np.stack([px, py], 1), 1)

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
        draw_ellipse(shade, (fx + side * eo, ey - eh * 0.5), (ew * 1.35, eh * 2.2), 0, float(sd))
    lside = 1 if math.cos(la) < 0 else -1  # nose side facing away from the light is darker
    draw_ellipse(
        shade,
        (fx + lside * nws * 0.7, (ey + ny) / 2),
        (nws * 0.45, (ny - ey) * 0.55),
        0,
        float(sd - 0.05),
    )
    draw_ellipse(shade, (fx, ny + fh * 0.05), (nws * 1.2, fh * 0.035), 0, float(sd))
    draw_ellipse(shade, (fx, my + lh + fh * 0.04), (mw * 0.6, fh * 0.03), 0, float(0.5 + sd / 2))
    draw_ellipse(shade, (fx, ny - fh * 0.03), (nws * 0.4, fh * 0.05), 0, 1.1)  # nose tip highlight
    draw_ellipse(shade, (fx, (ey + ny) / 2), (nws * 0.18, (ny - ey) * 0.4), 0, 1.06)  # bridge
    for side in (1, -1):  # cheeks
        draw_ellipse(
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

    paste_layer(canvas, face, face_layer, lab, _C["skin"])

    # ---------------- hair on top ----------------
    if hair_style >= 1:
        cap = np.zeros((W, W), np.uint8)
        draw_ellipse(
            cap,
            (cx, hcy if hair_style >= 2 else cy - fh * 0.05),
            (fw * rng.uniform(1.04, 1.12), fh * rng.uniform(1.02, 1.1)),
            0,
            1,
        )
        hairline = rng.uniform(0.38, 0.68) if rng.random() < 0.8 else rng.uniform(0.25, 0.4)
        cut = np.zeros((W, W), np.uint8)
        tilt = rng.normal(0, 8)
        draw_ellipse(
            cut,
            (cx + rng.normal(0, 0.08) * fw, cy + fh * (1.0 - hairline)),
            (fw * rng.uniform(0.86, 0.96), fh),
            tilt,
            1,
        )
        cap[cut > 0] = 0
        cap[int(cy + fh * rng.uniform(-0.05, 0.2)) :] = 0
        paste_layer(canvas, cap, hair_layer, lab, _C["hair"])

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
        draw_polygon(m, poly, 1)
        paste_layer(canvas, m, lambda r, c: brow_c * (1.0 + 0.2 * strands[r, c, None]), lab,
                    _C[cls])

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
        draw_polygon(m, np.concatenate([upper, lower[::-1]], 0), 1)
        eye = roi.copy()
        eye[:] = white_c
        ic = (c[0] + gaze[0] * ew, c[1] + gaze[1] * eh)
        draw_ellipse(eye, ic, (ir, ir), 0, as_color(iris_c))
        draw_ellipse(eye, ic, (ir, ir), 0, as_color(iris_c * 0.6), max(1, int(ir * 0.15)))
        draw_ellipse(eye, ic, (ir * 0.42, ir * 0.42), 0, (12.0, 10.0, 10.0))
        draw_ellipse(
            eye,
            (ic[0] + ir * 0.3, ic[1] - ir * 0.3),
            (ir * 0.16, ir * 0.16),
            0,
            (245.0, 245.0, 245.0),
        )
        paste_layer(roi, m, eye, lab[y0:y1, x0:x1], _C[cls])
        draw_polyline(roi, upper, as_color(lid), max(1.0, eh * 0.28))
        crease = upper + np.array([0.0, -eh * 0.55])
        draw_polyline(roi, crease[2:-2], as_color(skin * 0.7 * sd), max(1.0, eh * 0.12))

    # ---------------- nose ----------------
    nose = np.zeros((W, W), np.uint8)
    draw_polygon(
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
        draw_ellipse(
            canvas,
            (fx + side * nws * 0.45, ny + fh * 0.005),
            (nws * 0.28, nws * 0.13),
            side * 20,
            as_color(nost),
        )
        draw_ellipse(
            canvas,
            (fx + side * nws * 0.75, ny - fh * 0.02),
            (nws * 0.3, fh * 0.05),
            0,
            as_color(skin * 0.75 * sd),
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
    draw_polygon(m_up, np.concatenate([upper, mid_line[::-1]], 0), 1)
    m_lo = np.zeros((W, W), np.uint8)
    draw_polygon(m_lo, np.concatenate([lower_top, lower[::-1]], 0), 1)

    def lip_layer(r, c, k=1.0):
        return (lip_c * k) * (light[r, c] * (1.0 + 0.05 * strands[r, c]))[..., None]

    paste_layer(canvas, m_up, lambda r, c: lip_layer(r, c, 0.82), lab, _C["u_lip"])
    paste_layer(canvas, m_lo, lip_layer, lab, _C["l_lip"])
    draw_ellipse(canvas, (fx, my + lh * 0.45 + gap), (mw * 0.35, lh * 0.18), 0,
                 as_color(lip_c * 1.12))
    if open_mouth:
        mo = np.zeros((W, W), np.uint8)
        draw_polygon(mo, np.concatenate([mid_line, lower_top[::-1]], 0), 1)
        inner = canvas.copy()
        inner[:] = (40.0, 14.0, 18.0)
        draw_ellipse(inner, (fx, my + gap * 0.05), (mw * 0.55, gap * 0.5), 0, (225.0, 220.0, 205.0))
        paste_layer(canvas, mo, inner, lab, _C["mouth"])
    else:
        draw_polyline(canvas, mid_line, as_color(lip_c * 0.45), max(1.0, fh * 0.012))

    # ---------------- eyeglasses ----------------
    glasses = rng.random() < 0.15
    if glasses:
        gm = np.zeros((W, W), np.uint8)
        gw, gh = ew * rng.uniform(1.45, 1.7), eh * rng.uniform(2.0, 2.6)
        gth = max(1, int(round(fw * rng.uniform(0.025, 0.05))))
        gcol = rng.uniform(0, 1) ** 2 * 200
        gc = as_color(np.full(3, gcol, f32) + rng.normal(0, 10, 3))
        tint = rng.random() < 0.3
        for side in (1, -1):
            gx = fx + side * eo
            if tint:
                lens = np.zeros((W, W), np.uint8)
                draw_ellipse(lens, (gx, ey), (gw, gh), 0, 1)
                lm = lens.astype(bool)
                canvas[lm] = canvas[lm] * 0.55 + np.float32(15)
            draw_ellipse(gm, (gx, ey), (gw, gh), 0, 1, gth)
            draw_polyline(gm, [(gx + side * gw, ey - gh * 0.3), (cx + side * fw * 1.0, ear_y)], 1,
                          gth)
        draw_polyline(
            gm,
            [(fx - eo + gw, ey - gh * 0.2), (fx, ey - gh * 0.45), (fx + eo - gw, ey - gh * 0.2)],
            1,
            gth,
        )
        paste_layer(canvas, gm, np.array(gc, f32), lab, _C["eye_g"])

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
