"""Decoding of stored image bytes into uint8 RGB arrays, with clear errors for bad files.

Output: uint8 (H, W, 3) RGB, C-contiguous; alpha dropped (never composited), grayscale and
palette expanded, CMYK converted, 16-bit reduced by `v >> 8`, EXIF orientation applied.
Truncated files are errors (a JPEG without its end marker is decoded by PIL, which says so).
The header's size is checked before any pixel is decoded (MAX_PIXELS, MAX_ASPECT_RATIO;
MAX_FILE_BYTES per file), so one image costs under 1 GB. Fast paths: `simplejpeg` for plain
JPEGs (`_decode_plain_jpeg`), else one `cv2.imdecode`.
Details and the memory measured: docs/data_format.md (Module reference).
"""

from __future__ import annotations

import io
import logging
import os
import stat
import struct
import warnings
from typing import Any

import cv2
import numpy as np
import simplejpeg
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["ImageDecodeError", "ImageSizeError", "check_view_size", "decode_image_rgb",
           "header_size", "probe_image", "read_image_file", "sniff_format"]

# Per-image bounds (see the module docstring); the README states them where inputs are described.
MAX_PIXELS = 50_000_000  # decoded image, and any resize of it
MAX_ASPECT_RATIO = 50  # long side / short side
MAX_FILE_BYTES = 256 * 1024 * 1024

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


class ImageSizeError(ImageDecodeError):
    """The image is (or would become) too large or too elongated to be processed."""

    def __init__(self, source: str, reason: str):
        super().__init__(source, reason)
        self.args = (f"image {source} refused: {reason}",)


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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (C0-CF except DHT C4, JPG C8, DAC CC) carry the frame's height, width.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_segments(data: bytes):
    """(marker, payload start, payload end) of each JPEG header segment before the first scan;
    stops early where the marker structure is broken."""
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            return
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            i += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image / start of scan
            return
        end = i + 2 + int.from_bytes(data[i + 2:i + 4], "big")
        yield marker, i + 4, end
        i = end


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    for marker, start, _ in _jpeg_segments(data):
        if marker in _JPEG_SOF:
            if start + 5 > len(data):
                return None
            height, width = struct.unpack(">HH", data[start + 1:start + 5])
            return (width, height) if width and height else None
    return None


_EXIF_ORIENTATION_TAG = 0x0112


def _jpeg_orientation(data: bytes) -> int | None:
    """The EXIF orientation of a JPEG (1 = none or no EXIF); None when an EXIF block is there
    but cannot be read here (the general decoder then handles it)."""
    for marker, start, end in _jpeg_segments(data):
        if marker != 0xE1 or data[start:start + 6] != b"Exif\x00\x00":
            continue
        tiff = data[start + 6:end]
        order = {b"II": "<", b"MM": ">"}.get(tiff[:2])
        if order is None or len(tiff) < 10:
            return None
        ifd = struct.unpack(order + "I", tiff[4:8])[0]
        if ifd + 2 > len(tiff):
            return None
        (count,) = struct.unpack(order + "H", tiff[ifd:ifd + 2])
        for entry in range(ifd + 2, min(ifd + 2 + 12 * count, len(tiff) - 11), 12):
            tag, kind = struct.unpack(order + "HH", tiff[entry:entry + 4])
            if tag == _EXIF_ORIENTATION_TAG:
                return struct.unpack(order + "H", tiff[entry + 8:entry + 10])[0] if kind == 3 \
                    else None
        return 1
    return 1


def header_size(data: bytes, source: str = "<bytes>") -> tuple[int, int] | None:
    """(width, height) as the header declares them, without decoding pixels; None when the
    header is not readable (the decoder then says why). Raises ImageSizeError when PIL refuses
    the header as a decompression bomb."""
    if data.startswith(_PNG_SIGNATURE):
        if len(data) >= 24 and data[12:16] == b"IHDR":
            return struct.unpack(">II", data[16:24])
        return None
    if data.startswith(_JPEG_SOI):
        size = _jpeg_size(data)
        if size is not None:
            return size
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:  # reads the header only
                return im.size
    except Image.DecompressionBombError as e:
        raise ImageSizeError(source, f"the header declares too large an image ({e}); the limit "
                                     f"is {MAX_PIXELS / 1e6:g} megapixels per image") from None
    except Exception:  # noqa: BLE001 - unreadable header: the decoder reports it
        return None


def check_size(width: int, height: int, source: str = "<bytes>") -> None:
    """Raises ImageSizeError when a width x height image exceeds MAX_PIXELS or
    MAX_ASPECT_RATIO (see the module docstring)."""
    width, height = int(width), int(height)
    if width < 1 or height < 1:
        raise ImageSizeError(source, f"image has no pixels ({width}x{height})")
    pixels = width * height
    if pixels > MAX_PIXELS:
        raise ImageSizeError(
            source, f"{width}x{height} px = {pixels / 1e6:.3g} megapixels; the limit is "
            f"{MAX_PIXELS / 1e6:g} megapixels per image: downscale or crop it first")
    ratio = max(width, height) / min(width, height)
    if ratio > MAX_ASPECT_RATIO:
        raise ImageSizeError(
            source, f"{width}x{height} px has an aspect ratio of {ratio:.0f}:1; the limit is "
            f"{MAX_ASPECT_RATIO}:1 (a thin strip, not a face photo): crop it first")


def check_view_size(width: int, height: int, short_side: int, source: str = "<bytes>") -> float:
    """Checks that resizing a width x height image to `short_side` (upscaling keeps the aspect
    ratio) stays within MAX_PIXELS; returns the scale factor (> 1: upscaled). Raises
    ImageSizeError otherwise."""
    width, height, short_side = int(width), int(height), int(short_side)
    scale = short_side / max(1, min(width, height))
    new_w, new_h = max(short_side, round(width * scale)), max(short_side, round(height * scale))
    if new_w * new_h > MAX_PIXELS:
        raise ImageSizeError(
            source, f"resizing {width}x{height} px to a short side of {short_side} px would make "
            f"{new_w}x{new_h} px = {new_w * new_h / 1e6:.3g} megapixels; the limit is "
            f"{MAX_PIXELS / 1e6:g}: crop it first")
    return scale


def read_image_file(path: str) -> bytes:
    """The bytes of an image file, with one-line reasons (ImageDecodeError naming `path`) for a
    missing file, a broken symbolic link, a folder, an unreadable or an oversized file
    (over MAX_FILE_BYTES, refused before reading)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageDecodeError(path, f"broken symbolic link (it points to "
                                         f"{os.readlink(path)!r}, which does not exist)") from None
        raise ImageDecodeError(path, "cannot read file: No such file or directory") from None
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file: {e.strerror or e}") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageDecodeError(path, "a folder, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise ImageDecodeError(path, "not a regular file (a device, socket or pipe)")
    if st.st_size > MAX_FILE_BYTES:
        raise ImageSizeError(path, f"file of {st.st_size / 2**20:.0f} MiB; the limit is "
                                   f"{MAX_FILE_BYTES / 2**20:.0f} MiB per image")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ImageDecodeError(path, f"cannot read file: {e.strerror or e}") from None


def check_header(data: bytes, source: str) -> None:
    """Refuses empty bytes and, from the header alone, images over the per-image bounds."""
    if not data:
        raise ImageDecodeError(source, "empty file (0 bytes)")
    size = header_size(data, source)
    if size is not None:
        check_size(*size, source)


def decode_image_rgb(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decodes encoded image bytes to a uint8 (H, W, 3) RGB array; see the module docstring.

    Raises ImageDecodeError (naming `source` and the reason) for empty, non-image, corrupt or
    truncated bytes, and its subclass ImageSizeError, before decoding, for images over the
    per-image bounds (MAX_PIXELS, MAX_ASPECT_RATIO).
    """
    check_header(data, source)
    img = _decode_plain_jpeg(data)
    if img is not None:
        return img
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


def _decode_plain_jpeg(data: bytes) -> np.ndarray | None:
    """A complete YCbCr or grey JPEG without EXIF rotation, decoded by simplejpeg: the same
    libjpeg-turbo pixels as `cv2.imdecode` (tested), 1.3x faster (docs/benchmarks.md). None
    for anything else, and for any libjpeg warning: the general path decodes or explains it."""
    if not data.startswith(_JPEG_SOI) or not data.endswith(_JPEG_EOI):
        return None
    if _jpeg_orientation(data) != 1:
        return None
    try:
        if simplejpeg.decode_jpeg_header(data)[2] not in ("YCbCr", "Gray"):
            return None  # CMYK / YCCK / Adobe RGB: OpenCV's conversions
        return simplejpeg.decode_jpeg(data, colorspace="RGB")
    except Exception:  # noqa: BLE001 - corrupt, truncated or odd: the general path says why
        return None


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
    Raises ImageDecodeError when the header cannot be read, ImageSizeError when it declares an
    image over the per-image bounds.
    """
    check_header(data, source)
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
# A folder's files that get a row (scored, or an error naming why not): the formats above, and
# other image formats, which are decoded when OpenCV/PIL can (GIF's first frame, TIFF) and
# reported otherwise, so no image in a folder is dropped without a word.
LISTED_EXTENSIONS = IMAGE_EXTENSIONS + (".jpe", ".jfif", ".gif", ".tif", ".tiff", ".heic",
                                        ".heif", ".avif", ".jp2", ".jxl", ".ico", ".ppm",
                                        ".pgm", ".pbm", ".pnm", ".tga", ".psd", ".svg")


def list_images(paths: list[str], recursive: bool = False,
                not_listed: list[str] | None = None, warn: bool = True) -> list[str]:
    """Files to read, in a stable order: each path given (files as given, whatever their
    extension, and missing ones too, so they get an error row), folders expanded to their
    files with an image extension (LISTED_EXTENSIONS, any case; broken symbolic links too, so
    they get an error row) sorted by name; duplicates once.

    `not_listed`, when given, receives one line per folder on what it held that is not listed
    (files without an image extension, subfolders without `recursive`), so a caller can say so.
    `warn`: log a warning for a folder without any image file.

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
        found, subfolders = [], 0
        if recursive:
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found += [os.path.join(root, f) for f in files]
        else:
            for f in os.listdir(path):
                if os.path.isdir(os.path.join(path, f)):
                    subfolders += 1
                else:  # files, and broken links (isfile() is False for those)
                    found.append(os.path.join(path, f))
        images = sorted(f for f in found if f.lower().endswith(LISTED_EXTENSIONS))
        others = sorted(f for f in found if not f.lower().endswith(LISTED_EXTENSIONS))
        if not images and warn:
            logging.getLogger(__name__).warning(
                "%s holds no %s files%s", path, "/".join(IMAGE_EXTENSIONS),
                "" if recursive else " (subfolders need --recursive)")
        if not_listed is not None and (others or subfolders):
            parts = []
            if others:
                shown = ", ".join(os.path.basename(f) for f in others[:3])
                parts.append(f"{len(others)} file(s) without an image extension ({shown}"
                             f"{', ...' if len(others) > 3 else ''}; give a file by its path "
                             "to read it anyway)")
            if subfolders:
                parts.append(f"{subfolders} subfolder(s) (add --recursive)")
            not_listed.append(f"{path}: not read: {'; '.join(parts)}")
        for f in images:
            add(f)
    return out
