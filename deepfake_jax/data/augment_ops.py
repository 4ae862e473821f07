"""Image ops on uint8 HxWx3 RGB numpy arrays, driven by a numpy Generator: views (crops, flips,
resizes), corruptions (JPEG, blur, noise, resize), colour jitter, random erasing, RandAugment.

Every op takes the image and an `np.random.Generator` and returns a new uint8 image, so grain's
`random_map` (one generator per example, from the seed and the example's index) makes the
pipeline deterministic and resumable. Inputs are never modified. Crops keep a generator's
pixel-level traces; resizing resamples and blurs them, so views only resize images whose size
is not the crop size.

Speed-ups (costs in docs/benchmarks.md): the colour-jitter ops fuse into one affine colour
matrix (`cv2.transform`, no clipping between them); noise and erasing read from fixed banks of
random samples at a random offset; blur is a float separable filter (within 1-2 grey levels of
OpenCV's uint8 GaussianBlur, 2x faster); solarize is a threshold mask and an xor.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import cv2
import numpy as np
import simplejpeg


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


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator,
                        scale: tuple[float, float] = (0.25, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> np.ndarray:
    """torchvision's RandomResizedCrop: a box of random area fraction and aspect, resized.

    The resize interpolates every pixel (a blur of the generator's traces): see module doc.
    """
    h, w = image.shape[:2]
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        area = h * w * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        cw, ch = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            break
    else:  # no box fitted: the largest centred one within the ratio range
        ch = cw = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    box = image[top : top + ch, left : left + cw]
    interp = cv2.INTER_AREA if ch * cw > size * size else cv2.INTER_LINEAR
    return cv2.resize(box, (size, size), interpolation=interp)


def random_flip(image: np.ndarray, rng: np.random.Generator, prob: float = 0.5) -> np.ndarray:
    if rng.random() < prob:
        return cv2.flip(image, 1)  # a contiguous copy; ~50x faster than numpy's [:, ::-1] copy
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


CORRUPTIONS = ("jpeg", "blur", "resize", "noise")


def jpeg_recompress(image: np.ndarray, quality: float) -> np.ndarray:
    # cvtColor swaps channels ~15x faster than a numpy [..., ::-1] copy; same bytes. simplejpeg
    # decodes the same pixels as cv2.imdecode (the same libjpeg-turbo decoder), 1.4x faster.
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV failed to JPEG-encode an image")
    return simplejpeg.decode_jpeg(buf, colorspace="RGB")


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


LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R 601, as torchvision's rgb_to_grayscale


_RGB_TO_YIQ = np.array([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)


_GREY_ROWS = np.outer(np.ones(3), LUMA)  # x -> its luma in all three channels


# Hue rotation by theta = _HUE_KEEP + cos(theta) * _HUE_COS + sin(theta) * _HUE_SIN.
_HUE_KEEP = _YIQ_TO_RGB @ np.diag([1.0, 0.0, 0.0]) @ _RGB_TO_YIQ


_HUE_COS = _YIQ_TO_RGB @ np.diag([0.0, 1.0, 1.0]) @ _RGB_TO_YIQ


_HUE_SIN = _YIQ_TO_RGB @ np.array([[0.0, 0, 0], [0, 0, -1], [0, 1, 0]]) @ _RGB_TO_YIQ


def _homogeneous(linear: np.ndarray, corner: float = 1.0) -> np.ndarray:
    m = np.zeros((4, 4))
    m[:3, :3] = linear
    m[3, 3] = corner
    return m


# Each builder is a*A + b*B of precomputed 4x4 terms (this runs per image; np.diag, np.eye
# and slice assignment cost more than the arithmetic).
_EYE3_H = _homogeneous(np.eye(3), 0.0)  # [I 0; 0 0]


_CORNER = _homogeneous(np.zeros((3, 3)))  # [0 0; 0 1]


_SHIFT = np.zeros((4, 4))


_SHIFT[:3, 3] = 1.0  # the offset column


_GREY_H = _homogeneous(_GREY_ROWS, 0.0)


_HUE_KEEP_H, _HUE_COS_H, _HUE_SIN_H = (_homogeneous(_HUE_KEEP), _homogeneous(_HUE_COS, 0.0),
                                       _homogeneous(_HUE_SIN, 0.0))


def brightness_matrix(factor: float) -> np.ndarray:
    return factor * _EYE3_H + _CORNER


def contrast_matrix(factor: float, mean_gray: float) -> np.ndarray:
    """Scales the distance to the image's mean grey level (torchvision's adjust_contrast)."""
    return factor * _EYE3_H + _CORNER + ((1.0 - factor) * mean_gray) * _SHIFT


def saturation_matrix(factor: float) -> np.ndarray:
    """Blends with the grey (luma) image: 0 -> grey, 1 -> unchanged, >1 more saturated."""
    return factor * _EYE3_H + (1.0 - factor) * _GREY_H + _CORNER


def hue_matrix(shift: float) -> np.ndarray:
    """Rotates the chroma plane of YIQ by `shift` turns (DALI's hue op); luma and greys stay."""
    theta = 2.0 * math.pi * shift
    return _HUE_KEEP_H + math.cos(theta) * _HUE_COS_H + math.sin(theta) * _HUE_SIN_H


def apply_color_matrix(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    linear, offset = matrix[:3, :3], matrix[:3, 3]
    scale = linear[0, 0]
    if (linear == np.diag([scale] * 3)).all() and (offset == offset[0]).all():
        # Brightness/contrast only: cv2.transform takes a ~7x slower path for diagonal
        # matrices; addWeighted computes the same saturate(round(a*x + b)).
        return cv2.addWeighted(image, float(scale), image, 0.0, float(offset[0]))
    return cv2.transform(image, matrix[:3].astype(np.float32))


def mean_rgb(image: np.ndarray) -> np.ndarray:
    # The centre pixel of every 8x8 block: 64x less work than cv2.mean of the whole image
    # (which costs as much as the colour transform), exact enough for a contrast pivot.
    # INTER_NEAREST_EXACT picks exactly image[4::8, 4::8] when a side is a multiple of 8,
    # 3x faster than cv2.mean of that strided view (which OpenCV copies first).
    h, w = image.shape[:2]
    if h < 8 or w < 8:
        return np.array(cv2.mean(image)[:3])
    centres = cv2.resize(image, (w // 8, h // 8), interpolation=cv2.INTER_NEAREST_EXACT)
    return np.array(cv2.mean(centres)[:3])


def mean_gray(image: np.ndarray) -> float:
    return float(mean_rgb(image) @ LUMA)


def adjust_brightness(image: np.ndarray, factor: float) -> np.ndarray:
    return apply_color_matrix(image, brightness_matrix(factor))


def adjust_contrast(image: np.ndarray, factor: float) -> np.ndarray:
    return apply_color_matrix(image, contrast_matrix(factor, mean_gray(image)))


def adjust_saturation(image: np.ndarray, factor: float) -> np.ndarray:
    return apply_color_matrix(image, saturation_matrix(factor))


def adjust_hue(image: np.ndarray, shift: float) -> np.ndarray:
    return apply_color_matrix(image, hue_matrix(shift))


def to_grayscale(image: np.ndarray) -> np.ndarray:
    """Luma in all three channels (the model still sees 3 channels)."""
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB)


def fast_gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable float Gaussian with OpenCV's uint8 kernel size (2*round(3 sigma)+1)."""
    if sigma <= 0:
        return image.copy()
    ksize = int(round(sigma * 3)) * 2 + 1
    kernel = cv2.getGaussianKernel(ksize, float(sigma), cv2.CV_32F)
    return cv2.sepFilter2D(image, -1, kernel, kernel, borderType=cv2.BORDER_REFLECT_101)


_NOISE_BANK_SCALE = 256.0  # int16 fixed point: 1/256 of a standard deviation


@functools.cache
def _noise_bank(size: int) -> np.ndarray:
    """`size` standard normal samples (int16, x256), the same in every process (fixed seed)."""
    normal = np.random.default_rng(0x5EED).standard_normal(size, dtype=np.float32)
    return np.clip(np.rint(normal * _NOISE_BANK_SCALE), -32767, 32767).astype(np.int16)


def add_gaussian_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive N(0, (sigma*255)^2) noise per value, read at a random offset of a fixed bank
    of at least 4x the image's values (2^20 for a 224-px image: 2 MB, built once per process).

    Each image's noise is a run of independent normal samples; two images can share
    (shifted) runs, which does not matter for augmentation and is ~20x faster than drawing
    fresh normals. `gaussian_noise` draws fresh samples (for the robustness evaluation).
    """
    bank = _noise_bank(max(1 << 20, 1 << (4 * image.size - 1).bit_length()))
    start = int(rng.integers(0, bank.size - image.size + 1))
    noise = bank[start : start + image.size].reshape(image.shape)
    scale = sigma * 255.0 / _NOISE_BANK_SCALE
    return cv2.addWeighted(np.ascontiguousarray(image), 1.0, noise, scale, 0.0, dtype=cv2.CV_8U)


@functools.cache
def _uniform_bank(size: int) -> np.ndarray:
    """`size` uniform random bytes, the same in every process (fixed seed)."""
    return np.random.default_rng(0xE4A5E).integers(0, 256, size, dtype=np.uint8)


def random_erase(image: np.ndarray, rng: np.random.Generator,
                 area: tuple[float, float] = (0.02, 0.2), ratio: tuple[float, float] = (0.3, 3.3),
                 fill: str = "noise") -> np.ndarray:
    """Random erasing (Zhong et al. 2020): one rectangle of random area and aspect, filled
    with uniform noise ("noise") or mid grey ("gray"). The noise is a run of a fixed bank of
    uniform bytes at a random offset (as `add_gaussian_noise` reads its normals)."""
    out = image.copy()
    h, w = image.shape[:2]
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = h * w * rng.uniform(*area)
        aspect = math.exp(rng.uniform(*log_ratio))
        eh, ew = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < eh < h and 0 < ew < w:
            top, left = int(rng.integers(0, h - eh + 1)), int(rng.integers(0, w - ew + 1))
            if fill == "noise":  # a random run of a fixed bank: ~30x cheaper than rng.bytes
                bank = _uniform_bank(max(1 << 20, 1 << (4 * eh * ew * 3 - 1).bit_length()))
                start = int(rng.integers(0, bank.size - eh * ew * 3 + 1))
                patch = bank[start : start + eh * ew * 3].reshape(eh, ew, 3)
            else:
                patch = 128
            out[top : top + eh, left : left + ew] = patch
            break
    return out


_FILL = (128, 128, 128)


def _signed(m: float, max_value: float, rng: np.random.Generator) -> float:
    return m / 10.0 * max_value * (1 if rng.random() < 0.5 else -1)


def _enhance_factor(m: float, rng: np.random.Generator) -> float:
    return 1.0 + _signed(m, 0.9, rng)


def _affine(image: np.ndarray, matrix: np.ndarray, interp: int = cv2.INTER_LINEAR) -> np.ndarray:
    h, w = image.shape[:2]
    return cv2.warpAffine(image, matrix.astype(np.float32), (w, h), flags=interp,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=_FILL)


def _ra_rotate(image, m, rng):
    h, w = image.shape[:2]
    return _affine(image, cv2.getRotationMatrix2D((w / 2 - 0.5, h / 2 - 0.5),
                                                  _signed(m, 30.0, rng), 1.0))


def _ra_shear(axis: int):
    def op(image, m, rng):
        s = _signed(m, 0.3, rng)
        matrix = np.array([[1.0, s, 0.0], [0.0, 1.0, 0.0]] if axis == 0 else
                          [[1.0, 0.0, 0.0], [s, 1.0, 0.0]])
        return _affine(image, matrix)
    return op


def _ra_translate(axis: int):
    def op(image, m, rng):  # whole pixels: a copy with a grey border, nothing resampled
        size = image.shape[1 - axis]
        shift = max(-size, min(size, round(_signed(m, 0.45, rng) * size)))
        out = np.full_like(image, _FILL[0])
        src = [slice(None), slice(None)]
        dst = [slice(None), slice(None)]
        src[1 - axis] = slice(max(0, -shift), size - max(0, shift))
        dst[1 - axis] = slice(max(0, shift), size - max(0, -shift))
        out[tuple(dst)] = image[tuple(src)]
        return out
    return op


def _ra_autocontrast(image, m, rng):
    """Stretches each channel to [0, 255]: rint((x - lo) * 255 / (hi - lo)) per channel."""
    extremes = np.array([cv2.minMaxLoc(channel)[:2] for channel in cv2.split(image)])
    lo, hi = extremes[:, 0], extremes[:, 1]
    scale = np.where(hi > lo, 255.0 / np.maximum(hi - lo, 1.0), 1.0)
    lo = np.where(hi > lo, lo, 0.0)
    shifted = cv2.subtract(image, tuple(float(v) for v in lo) + (0.0,))
    return cv2.multiply(shifted, tuple(float(v) for v in scale) + (0.0,))


def _ra_equalize(image, m, rng):
    return cv2.merge([cv2.equalizeHist(np.ascontiguousarray(c)) for c in cv2.split(image)])


def _ra_solarize(image, m, rng):
    """255 - x where x >= 256 - m/10 * 256, else x."""
    # x ^ 255 == 255 - x for uint8: an xor with the threshold mask inverts exactly the values
    # at or above it, 15x faster than cv2.LUT (slow in OpenCV 4.14 builds on one thread).
    # cv2.threshold sets x > t, and x >= threshold <=> x > ceil(threshold) - 1 for integers.
    cut = min(255, max(-1, math.ceil(256 - m / 10.0 * 256) - 1))
    mask = cv2.threshold(image, cut, 255, cv2.THRESH_BINARY)[1]
    return cv2.bitwise_xor(image, mask)


def _ra_posterize(image, m, rng):
    bits = 8 - int(round(m / 10.0 * 4))
    return np.bitwise_and(image, np.uint8((0xFF << (8 - bits)) & 0xFF))


def _ra_sharpness(image, m, rng):
    # PIL's ImageEnhance.Sharpness: blend with the 3x3 smoothed copy [[1,1,1],[1,5,1],
    # [1,1,1]]/13 = (9 * box3 + 4 * x) / 13 (factor < 1 blurs); folded into one blend.
    factor = _enhance_factor(m, rng)
    box = cv2.blur(image, (3, 3), borderType=cv2.BORDER_REPLICATE)
    return cv2.addWeighted(image, factor + (1.0 - factor) * 4.0 / 13.0,
                           box, (1.0 - factor) * 9.0 / 13.0, 0.0)


RANDAUGMENT_OPS: dict[str, Callable[[np.ndarray, float, np.random.Generator], np.ndarray]] = {
    "identity": lambda image, m, rng: image.copy(),
    "autocontrast": _ra_autocontrast,
    "equalize": _ra_equalize,
    "solarize": _ra_solarize,
    "posterize": _ra_posterize,
    "sharpness": _ra_sharpness,
    "brightness": lambda image, m, rng: adjust_brightness(image, _enhance_factor(m, rng)),
    "contrast": lambda image, m, rng: adjust_contrast(image, _enhance_factor(m, rng)),
    "color": lambda image, m, rng: adjust_saturation(image, _enhance_factor(m, rng)),
    "translate_x": _ra_translate(0),
    "translate_y": _ra_translate(1),
    "rotate": _ra_rotate,  # resamples: blurs generator traces
    "shear_x": _ra_shear(0),  # resamples
    "shear_y": _ra_shear(1),  # resamples
}


# Pixel-value ops and whole-pixel shifts: nothing is interpolated.
PHOTOMETRIC_RANDAUGMENT_OPS = ("identity", "autocontrast", "equalize", "solarize", "posterize",
                               "sharpness", "brightness", "contrast", "color", "translate_x",
                               "translate_y")


def rand_augment(image: np.ndarray, rng: np.random.Generator, num_ops: int = 2,
                 magnitude: tuple[float, float] = (0.0, 9.0),
                 ops: tuple[str, ...] = PHOTOMETRIC_RANDAUGMENT_OPS) -> np.ndarray:
    out = image
    for _ in range(int(num_ops)):
        name = ops[int(rng.integers(len(ops)))]
        out = RANDAUGMENT_OPS[name](out, float(rng.uniform(*magnitude)), rng)
    return out if out is not image else image.copy()


