"""decode_image_rgb / probe_image on every colour mode and on broken bytes."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from deepfake_jax.data import image_io
from deepfake_jax.data.image_io import ImageDecodeError, decode_image_rgb, probe_image


def _base(h=24, w=32):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 2] = (200, 30, 60)
    return img


def _pil_bytes(img, fmt, **kw):
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _rgba(img, alpha=128):
    return Image.fromarray(np.dstack([img, np.full(img.shape[:2], alpha, np.uint8)]))


def _check(out, shape):
    assert out.dtype == np.uint8 and out.shape == shape + (3,) and out.flags.c_contiguous


@pytest.mark.parametrize("fmt,kw", [("PNG", {}), ("WEBP", {"lossless": True}), ("BMP", {})])
def test_lossless_rgb_exact(fmt, kw):
    base = _base()
    out = decode_image_rgb(_pil_bytes(Image.fromarray(base), fmt, **kw))
    _check(out, base.shape[:2])
    np.testing.assert_array_equal(out, base)  # RGB order, exact


def test_jpeg_rgb_order_and_probe():
    base = _base()
    data = _pil_bytes(Image.fromarray(base), "JPEG", quality=95)
    out = decode_image_rgb(data)
    _check(out, base.shape[:2])
    assert np.abs(out[2, 2].astype(int) - [200, 30, 60]).max() < 8  # red, not blue
    np.testing.assert_array_equal(out, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    assert probe_image(data) == {"width": 32, "height": 24, "mode": "RGB", "format": "JPEG",
                                 "bit_depth": 8, "orientation": 1}


@pytest.mark.parametrize("mode", ["L", "LA", "P", "1"])
def test_gray_palette_modes(mode):
    pil = Image.fromarray(_base()).convert(mode)
    data = _pil_bytes(pil, "PNG")
    out = decode_image_rgb(data)
    _check(out, (24, 32))
    np.testing.assert_array_equal(out, np.asarray(pil.convert("RGB")))
    assert probe_image(data)["mode"] == mode


def test_rgba_alpha_dropped():
    base = _base()
    data = _pil_bytes(_rgba(base, alpha=10), "PNG")
    out = decode_image_rgb(data)
    np.testing.assert_array_equal(out, base)  # colour as stored, alpha ignored
    assert probe_image(data)["mode"] == "RGBA"
    np.testing.assert_array_equal(
        decode_image_rgb(_pil_bytes(_rgba(base), "WEBP", lossless=True)), base)


def test_cmyk_jpeg():
    base = _base()
    data = _pil_bytes(Image.fromarray(base).convert("CMYK"), "JPEG", quality=95)
    assert probe_image(data)["mode"] == "CMYK"
    out = decode_image_rgb(data)
    _check(out, base.shape[:2])
    ref = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    assert np.abs(out.astype(int) - ref).max() <= 2
    assert np.abs(out[2, 2].astype(int) - [200, 30, 60]).max() < 12


def test_16bit_png():
    base = _base()
    ok, enc = cv2.imencode(".png", base[:, :, ::-1].astype(np.uint16) * 257)
    assert ok
    data = enc.tobytes()
    assert probe_image(data)["bit_depth"] == 16
    np.testing.assert_array_equal(decode_image_rgb(data), base)
    gray16 = Image.fromarray(base[:, :, 0].astype(np.uint16) * 257)
    data = _pil_bytes(gray16, "PNG")
    p = probe_image(data)
    assert p["bit_depth"] == 16 and p["mode"].startswith("I")
    np.testing.assert_array_equal(decode_image_rgb(data), np.repeat(base[:, :, :1], 3, axis=2))


def test_exif_orientation_applied():
    ex = Image.Exif()
    ex[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = _pil_bytes(Image.fromarray(_base()), "JPEG", exif=ex)
    assert probe_image(data)["orientation"] == 6
    assert decode_image_rgb(data).shape == (32, 24, 3)


def _smooth(h=61, w=47):
    return cv2.GaussianBlur(_base(h, w), (5, 5), 1.5)  # JPEG-like content, odd sizes


_SAMPLING = {name: [cv2.IMWRITE_JPEG_SAMPLING_FACTOR,
                    getattr(cv2, f"IMWRITE_JPEG_SAMPLING_FACTOR_{name}")]
             for name in ("411", "420", "422", "444")}


@pytest.mark.parametrize("kind", [*_SAMPLING, "progressive", "grey"])
def test_plain_jpeg_fast_path_decodes_the_pixels_opencv_decodes(kind):
    image = _smooth()
    params = {"progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]}.get(kind, _SAMPLING.get(kind, []))
    ok, enc = cv2.imencode(".jpg", image[..., 0] if kind == "grey" else image, params)
    assert ok
    fast = image_io._decode_plain_jpeg(enc.tobytes())
    assert fast is not None, "a plain JPEG takes the simplejpeg path"
    _check(fast, image.shape[:2])
    np.testing.assert_array_equal(fast, cv2.imdecode(enc, cv2.IMREAD_COLOR_RGB))
    np.testing.assert_array_equal(decode_image_rgb(enc.tobytes()), fast)


def _exif_jpeg(orientation=None, byte_order="<"):
    ex = Image.Exif()
    if orientation is not None:
        ex[0x0112] = orientation
    ex[0x010F] = "camera maker"
    ex.endian = byte_order  # cameras write both "II" and "MM"
    data = _pil_bytes(Image.fromarray(_smooth()), "JPEG", exif=ex)
    assert (b"Exif\x00\x00" + {"<": b"II", ">": b"MM"}[byte_order]) in data
    return data


@pytest.mark.parametrize("byte_order", ["<", ">"])
def test_exif_orientation_is_read_in_both_byte_orders(byte_order):
    assert image_io._jpeg_orientation(_exif_jpeg(6, byte_order)) == 6
    assert image_io._jpeg_orientation(_exif_jpeg(None, byte_order)) == 1
    assert image_io._jpeg_orientation(_pil_bytes(Image.fromarray(_smooth()), "JPEG")) == 1


def test_fast_path_leaves_rotated_cmyk_truncated_and_damaged_jpegs_to_the_general_path():
    rotated = _exif_jpeg(6)
    assert image_io._decode_plain_jpeg(rotated) is None
    assert decode_image_rgb(rotated).shape == (47, 61, 3)
    upright = _exif_jpeg(1)
    np.testing.assert_array_equal(
        image_io._decode_plain_jpeg(upright),
        cv2.imdecode(np.frombuffer(upright, np.uint8), cv2.IMREAD_COLOR_RGB))
    cmyk = _pil_bytes(Image.fromarray(_smooth()).convert("CMYK"), "JPEG")
    assert image_io._decode_plain_jpeg(cmyk) is None
    plain = _pil_bytes(Image.fromarray(_smooth()), "JPEG")
    assert image_io._decode_plain_jpeg(plain[:-2]) is None  # no end marker
    damaged = plain[: len(plain) // 2] + b"\x00" * (len(plain) // 2 - 2) + plain[-2:]
    assert image_io._decode_plain_jpeg(damaged) is None  # libjpeg warns: the general path decides
    broken_exif = upright.replace(b"Exif\x00\x00II", b"Exif\x00\x00XY", 1)
    assert image_io._jpeg_orientation(broken_exif) is None


def test_jpeg_trailing_bytes_accepted():
    data = _pil_bytes(Image.fromarray(_base()), "JPEG")
    out = decode_image_rgb(data + b"\x00" * 10 + b"vendor trailer")
    np.testing.assert_array_equal(out, decode_image_rgb(data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP"])
@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_raises(fmt, keep):
    data = _pil_bytes(Image.fromarray(_base(64, 64)), fmt)
    with pytest.raises(ImageDecodeError, match="cut.bin"):
        decode_image_rgb(data[: int(len(data) * keep)], "cut.bin")


def test_truncated_jpeg_missing_only_eoi():
    data = _pil_bytes(Image.fromarray(_base(64, 64)), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode_image_rgb(data[:-2], "x.jpg")


@pytest.mark.parametrize("data,reason", [
    (b"", "empty"),
    (b"hello, this is text\n" * 5, "not a recognised image format"),
    (np.random.default_rng(1).bytes(2000), "not a recognised image format"),
    (b"\xff\xd8\xff\xe0" + np.random.default_rng(2).bytes(500), "JPEG"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(ImageDecodeError, match=reason) as info:
        decode_image_rgb(data, "bad/file.jpg")
    assert info.value.source == "bad/file.jpg" and "bad/file.jpg" in str(info.value)
    assert isinstance(info.value, ValueError)
    if data[:2] != b"\xff\xd8":
        with pytest.raises(ImageDecodeError):
            probe_image(data)
