"""Decoding of stored image bytes into uint8 RGB arrays, with clear errors for bad files.

Used by `data_prep.convert` (to validate every file once) and by the input pipeline (on every
record), so the common case must cost no more than a plain `cv2.imdecode`.

Conventions (the same on the fast and the slow path):

- Output: `np.ndarray`, uint8, shape (H, W, 3), RGB order, C-contiguous.
- Alpha (RGBA, LA, PA, palette with transparency) is DROPPED, not composited: the colour values
  are returned as stored. This is what OpenCV and PIL's ``convert("RGB")`` both do, it never
  changes a pixel value (a detector looks at exact values), and face datasets with alpha are
  nearly always fully opaque. Compositing over black would darken semi-transparent pixels.
- Grayscale (L, LA, 1) is replicated into three channels; palette images are expanded.
- CMYK / YCCK JPEGs (including Adobe's inverted CMYK) are converted to RGB (OpenCV's
  conversion, within 1 of PIL's).
- 16-bit images are reduced to 8 bit by dropping the low byte (``v >> 8``, OpenCV's rule; within
  1 of ``round(v / 257)``).
- EXIF orientation is APPLIED (OpenCV's default for ``IMREAD_COLOR``), so the array is upright as
  an image viewer shows it; the PIL fallback does the same with ``ImageOps.exif_transpose``.
- Truncated files are errors. OpenCV 4.14 already returns None for a truncated JPEG/PNG/WebP/BMP,
  but older OpenCV builds return a JPEG whose missing rows are grey. So a JPEG is only accepted
  from the fast path when it ends with the end-of-image marker ``FF D9`` (an O(1) check);
  otherwise (truncated, or trailing bytes after the marker, which some cameras append) PIL
  decodes it fully and raises "image file is truncated" for a truncated one.

Other decoding errors inside the entropy-coded data (bit flips) are not detectable cheaply: the
decoders conceal them, and so do we.
"""

from __future__ import annotations

import io
import logging
import os
from typing import Any

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageDecodeError", "decode_image_rgb", "probe_image", "sniff_format"]

# OpenCV >= 4.11 decodes straight to RGB; older versions decode to BGR and we convert.
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)
_IMREAD_FLAGS = _IMREAD_RGB if _IMREAD_RGB is not None else cv2.IMREAD_COLOR
_JPEG_SOI = b"\xff\xd8\xff"
_JPEG_EOI = b"\xff\xd9"

_MAGIC = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
)


class ImageDecodeError(ValueError):
    """The bytes are not a decodable image. `source` names the file, `reason` says why."""

    def __init__(self, source: str, reason: str):
        super().__init__(f"cannot decode image {source}: {reason}")
        self.source = source
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """Image format from the magic bytes ('JPEG', 'PNG', 'WEBP', 'BMP', ...), or None."""
    for magic, name in _MAGIC:
        if data.startswith(magic):
            return name
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def _jpeg_complete(data: bytes) -> bool:
    # Tolerate padding that some writers append after the marker.
    return data.endswith(_JPEG_EOI) or data.rstrip(b"\x00\r\n\t ").endswith(_JPEG_EOI)


def decode_image_rgb(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes to a uint8 (H, W, 3) RGB array; see the module docstring.

    Raises ImageDecodeError (naming `source` and the reason) for empty, non-image, corrupt or
    truncated bytes.
    """
    if not data:
        raise ImageDecodeError(source, "empty file (0 bytes)")
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD_FLAGS)
    except cv2.error:
        img = None
    if img is not None and img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        if data.startswith(_JPEG_SOI) and not _jpeg_complete(data):
            _pil_open_and_load(data, source)  # raises if truncated; trailing bytes are fine
        if _IMREAD_RGB is None:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
        return img
    return _decode_with_pil(data, source)


def _header_reason(data: bytes, e: Exception) -> str:
    kind = "truncated" if "truncat" in str(e).lower() else "corrupt"
    return f"{kind} {sniff_format(data) or 'image'} header ({type(e).__name__}: {e})"


def _pil_open_and_load(data: bytes, source: str) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        head = data[:16]
        raise ImageDecodeError(
            source, f"not a recognised image format ({len(data)} bytes, starts with {head!r})"
        ) from None
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad headers
        raise ImageDecodeError(source, _header_reason(data, e)) from e
    try:
        im.load()
    except Exception as e:  # noqa: BLE001
        msg = str(e)
        if "truncated" in msg:
            reason = f"truncated {im.format or 'image'} file ({msg})"
        else:
            reason = f"corrupt {im.format or 'image'} data ({type(e).__name__}: {msg})"
        raise ImageDecodeError(source, reason) from e
    return im


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind in "ui":  # 16-bit stored as uint16 or int32 ('I' mode)
        return (np.clip(arr, 0, 65535).astype(np.uint32) >> 8).astype(np.uint8)
    if arr.dtype.kind == "f":
        scale = 255.0 if float(np.nanmax(arr, initial=0.0)) <= 1.0 else 1.0
        return np.clip(np.nan_to_num(arr) * scale, 0, 255).round().astype(np.uint8)
    raise TypeError(f"unsupported pixel type {arr.dtype}")


def _decode_with_pil(data: bytes, source: str) -> np.ndarray:
    """Slow path: formats or modes OpenCV could not decode, and the error reasons."""
    im = _pil_open_and_load(data, source)
    try:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
            arr = _to_uint8(np.asarray(im))
        else:
            arr = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(
            source, f"cannot convert {im.format} mode {im.mode} to RGB ({type(e).__name__}: {e})"
        ) from e
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] != 3:
        arr = arr[:, :, :3]
    if arr.size == 0:
        raise ImageDecodeError(source, f"image has no pixels (shape {arr.shape})")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _png_bit_depth(data: bytes) -> int | None:
    # IHDR is the first chunk: 8 signature + 4 length + 4 type + 4 w + 4 h, then bit depth.
    if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 24 and data[12:16] == b"IHDR":
        return data[24]
    return None


def probe_image(data: bytes, source: str = "<bytes>") -> dict[str, Any]:
    """Header facts without decoding the pixels: width, height, mode, format, bit_depth.

    `mode` is PIL's mode ('RGB', 'L', 'LA', 'RGBA', 'P', 'CMYK', 'I;16', ...), `format` PIL's
    format ('JPEG', 'PNG', 'WEBP', 'BMP', ...), `bit_depth` the bits per channel (16 for 16-bit
    PNGs, which PIL reports as mode 'RGB'/'RGBA' for colour ones), `orientation` the EXIF
    orientation tag (1 = none). Width and height are as stored, before EXIF orientation.
    Raises ImageDecodeError when the header cannot be read.
    """
    if not data:
        raise ImageDecodeError(source, "empty file (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            mode, fmt = im.mode, im.format
            try:
                orientation = int(im.getexif().get(0x0112, 1))
            except Exception:  # noqa: BLE001 - a broken EXIF block is not our problem here
                orientation = 1
    except UnidentifiedImageError:
        raise ImageDecodeError(
            source, f"not a recognised image format ({len(data)} bytes, starts with {data[:16]!r})"
        ) from None
    except Exception as e:  # noqa: BLE001
        raise ImageDecodeError(source, _header_reason(data, e)) from e
    bit_depth = _png_bit_depth(data)
    if bit_depth is None:
        bit_depth = 16 if mode.startswith("I;16") else 8
    return {"width": width, "height": height, "mode": mode, "format": fmt,
            "bit_depth": bit_depth, "orientation": orientation}


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def list_images(paths: list[str], recursive: bool = False) -> list[str]:
    """Files to read, in a stable order: each path given (files as given, whatever their
    extension, and missing ones too, so they get an error row), folders expanded to their image
    files (IMAGE_EXTENSIONS, any case) sorted by name; duplicates once.

    Shared by predict, segment and landmarks; lives here because it must not import jax."""
    out, seen = [], set()

    def add(p):
        key = os.path.abspath(p)
        if key not in seen:
            seen.add(key)
            out.append(p)

    for path in paths:
        if not os.path.isdir(path):
            add(path)
            continue
        found = []
        if recursive:
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, f) for f in files]
        else:
            found = [os.path.join(path, f) for f in os.listdir(path)
                     if os.path.isfile(os.path.join(path, f))]
        images = sorted(f for f in found if f.lower().endswith(IMAGE_EXTENSIONS))
        if not images:
            logging.getLogger(__name__).warning(
                "%s holds no %s files%s", path, "/".join(IMAGE_EXTENSIONS),
                "" if recursive else " (subfolders need --recursive)")
        for f in images:
            add(f)
    return out
