"""Stage 0, ingest: what uploads become, and what they are refused for."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms

from models.io import ImageLimits, IngestError, decode_image, encode_image, validate_image
from tests.support import encode, garment_photo

LIMITS = ImageLimits(max_bytes=5_000_000, max_pixels=4_000_000, min_side=32)


def _png_with_size(width: int, height: int) -> bytes:
    """A valid PNG whose header claims width × height (the data is a 1×1 image)."""
    raw = encode(np.zeros((1, 1, 3), np.uint8), "PNG")
    ihdr_at = raw.index(b"IHDR")
    body = struct.pack(">II", width, height) + raw[ihdr_at + 12 : ihdr_at + 17]
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + body) & 0xFFFFFFFF)
    return raw[: ihdr_at + 4] + body + crc + raw[ihdr_at + 21 :]


def _code(data: bytes) -> str:
    with pytest.raises(IngestError) as info:
        decode_image(data, LIMITS)
    with pytest.raises(IngestError) as info2:
        validate_image(data, LIMITS)
    assert info.value.code == info2.value.code
    return info.value.code


def test_refusals_have_stable_codes() -> None:
    rgb, _ = garment_photo(200, 160)
    jpeg = encode(rgb, "JPEG")
    assert _code(b"") == "empty_file"
    assert _code(b"hello, I am not an image\n" * 10) == "unsupported_media_type"
    assert _code(jpeg[: len(jpeg) // 2]) == "corrupt_image"
    assert _code(encode(np.zeros((1, 1, 3), np.uint8), "PNG")) == "image_too_small"
    assert _code(_png_with_size(100_000, 100_000)) == "image_too_many_pixels"
    assert _code(_png_with_size(3000, 2000)) == "image_too_many_pixels"  # 6 MP > 4 MP limit
    assert _code(encode(rgb, "GIF")) == "unsupported_media_type"
    assert _code(encode(rgb, "BMP")) == "unsupported_media_type"
    assert _code(encode(rgb, "TIFF")) == "unsupported_media_type"
    assert _code(b"\0" * 6_000_000) == "file_too_large"


def test_message_names_accepted_types() -> None:
    with pytest.raises(IngestError) as info:
        decode_image(encode(garment_photo(64, 64)[0], "GIF"), LIMITS)
    assert "image/jpeg" in info.value.message and "image/webp" in info.value.message


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_accepted_formats_decode_to_rgb(fmt: str) -> None:
    rgb, _ = garment_photo(120, 90)
    out = decode_image(encode(rgb, fmt, quality=95) if fmt != "PNG" else encode(rgb, fmt), LIMITS)
    assert out.shape == (90, 120, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 6


@pytest.mark.parametrize("mode", ["P", "L", "LA", "RGBA", "CMYK", "I;16"])
def test_modes_become_srgb_rgb(mode: str) -> None:
    rgb, _ = garment_photo(96, 64)
    img = Image.fromarray(rgb)
    if mode == "I;16":
        grey = np.asarray(img.convert("L"), dtype=np.uint16) * 257
        img = Image.fromarray(grey)
        assert img.mode == "I;16"
    elif mode == "P":
        img = img.quantize(256)
    else:
        img = img.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    out = decode_image(buf.getvalue(), LIMITS)
    assert out.shape == (64, 96, 3) and out.dtype == np.uint8
    if mode in ("L", "LA", "I;16"):
        expected = np.asarray(Image.fromarray(rgb).convert("L"), dtype=int)
        assert np.abs(out[..., 0].astype(int) - expected).max() <= 2
    else:
        assert np.abs(out.astype(int) - rgb).mean() < 12


def test_transparent_pixels_become_white() -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[16:48, 16:48] = (200, 10, 10, 255)
    out = decode_image(encode(rgba, "PNG"), LIMITS)
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[32, 32]) == (200, 10, 10)


def test_exif_orientation_is_applied() -> None:
    rgb = np.zeros((40, 100, 3), np.uint8)
    rgb[:, :50] = (255, 0, 0)  # left half red
    img = Image.fromarray(rgb)
    exif = img.getexif()
    exif[0x0112] = 6  # stored rotated: display needs 90° clockwise
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif, quality=95)
    out = decode_image(buf.getvalue(), LIMITS)
    assert out.shape == (100, 40, 3)
    assert out[5, 20, 0] > 200 and out[-5, 20, 0] < 60  # red is now on top
    info = validate_image(buf.getvalue(), LIMITS)
    assert (info.width, info.height) == (40, 100)


def test_icc_profile_is_converted_to_srgb() -> None:
    rgb = np.full((64, 64, 3), (0, 200, 0), np.uint8)
    lab_profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "PNG", icc_profile=lab_profile.tobytes())
    out = decode_image(buf.getvalue(), LIMITS)
    assert np.abs(out.astype(int) - rgb).max() <= 2  # sRGB → sRGB is the identity


@pytest.mark.parametrize("fmt,ctype", [("png", "image/png"), ("jpeg", "image/jpeg"),
                                       ("webp", "image/webp")])
def test_encode_round_trip(fmt: str, ctype: str) -> None:
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 255
    rgba[..., 3] = 255
    rgba[20:40, 20:40, :3] = (10, 20, 200)
    data, content_type = encode_image(rgba, fmt)
    assert content_type == ctype
    img = Image.open(io.BytesIO(data))
    assert img.format == fmt.upper() and img.size == (64, 64)


def test_encode_keeps_alpha_for_transparent_png() -> None:
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[8:24, 8:24] = (1, 2, 3, 255)
    data, _ = encode_image(rgba, "png")
    img = Image.open(io.BytesIO(data))
    assert img.mode == "RGBA" and img.getpixel((0, 0))[3] == 0


@pytest.mark.parametrize("opaque", [True, False])
def test_png_delivery_is_lossless(opaque: bool) -> None:
    # The delivered PNG's compression (`PNG_SAVE`) trades time for bytes, never pixels.
    rng = np.random.default_rng(0)
    rgba = np.full((96, 96, 4), 255, np.uint8)
    rgba[16:80, 16:80, :3] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    if not opaque:
        rgba[..., 3] = 0
        rgba[16:80, 16:80, 3] = rng.integers(1, 256, (64, 64), dtype=np.uint8)
    data, _ = encode_image(rgba, "png")
    back = np.asarray(Image.open(io.BytesIO(data)).convert("RGBA"))
    bands = 3 if opaque else 4  # an opaque canvas is delivered as RGB
    assert np.array_equal(back[..., :bands], rgba[..., :bands])
