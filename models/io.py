"""Stage 0, ingest: upload bytes → validated sRGB RGB array.

Pure Pillow and NumPy (no torch), so the API can validate an upload with the very code a
worker decodes it with. Errors carry a stable `code` that the service maps to HTTP.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageCms, ImageOps

from models.errors import TypedError

# Pillow format name → MIME type of the uploads we accept.
ACCEPTED_FORMATS: dict[str, str] = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}
OUTPUT_FORMATS: dict[str, str] = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

_SRGB = ImageCms.createProfile("sRGB")

# Every PNG we deliver (the flat-lay and its side outputs). zlib's Z_RLE strategy (3): after
# PNG's row filters a canvas on a flat background is mostly runs, which RLE finds at a
# quarter of level 6's default strategy's time in files no larger (a 1024² `ragdiffusion`
# canvas 64 → 18 ms, 95 → 94 KiB; docs/generator.md, *Delivery*).
PNG_SAVE: dict[str, int] = {"compress_level": 6, "compress_type": 3}


class IngestError(TypedError):
    """An upload that cannot become a photo. `code` is stable and machine-readable."""


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 25 * 1024 * 1024
    max_pixels: int = 50_000_000
    min_side: int = 32


@dataclass(frozen=True)
class ImageInfo:
    format: str  # Pillow name: JPEG, PNG, WEBP
    content_type: str
    width: int  # after EXIF orientation
    height: int
    mode: str  # Pillow mode of the file, before conversion
    bytes: int


def _open(data: bytes, limits: ImageLimits) -> Image.Image:
    if len(data) == 0:
        raise IngestError("empty_file", "the uploaded file is empty")
    if len(data) > limits.max_bytes:
        raise IngestError(
            "file_too_large",
            f"the file has {len(data)} bytes; the limit is {limits.max_bytes} bytes",
        )
    accepted = ", ".join(ACCEPTED_FORMATS.values())
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit below; Pillow's bomb check must not pre-empt it
            # with a warning for sizes between its limit and twice its limit.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=None)
    except Image.DecompressionBombError:
        raise IngestError(
            "image_too_many_pixels",
            f"the image declares more pixels than the limit of {limits.max_pixels}",
        ) from None
    except Exception:
        raise IngestError(
            "unsupported_media_type", f"the file is not a readable image; accepted: {accepted}"
        ) from None
    if img.format not in ACCEPTED_FORMATS:
        raise IngestError(
            "unsupported_media_type",
            f"{img.format or 'this'} images are not accepted; accepted: {accepted}",
        )
    width, height = img.size
    if width * height > limits.max_pixels:
        raise IngestError(
            "image_too_many_pixels",
            f"the image is {width}x{height} = {width * height} pixels; "
            f"the limit is {limits.max_pixels}",
        )
    if min(width, height) < limits.min_side:
        raise IngestError(
            "image_too_small",
            f"the image is {width}x{height}; both sides must be at least {limits.min_side} px",
        )
    return img


def _load(img: Image.Image) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as exc:
        raise IngestError(
            "corrupt_image", f"the image data is damaged or truncated ({exc})"
        ) from None


def validate_image(data: bytes, limits: ImageLimits) -> ImageInfo:
    """Check an upload fully (header, limits and a complete decode) without converting it."""
    img = _open(data, limits)
    _load(img)
    width, height = img.size
    orientation = img.getexif().get(0x0112, 1)
    if orientation in (5, 6, 7, 8):  # 90° rotations swap the sides
        width, height = height, width
    return ImageInfo(
        format=img.format,
        content_type=ACCEPTED_FORMATS[img.format],
        width=width,
        height=height,
        mode=img.mode,
        bytes=len(data),
    )


def _to_srgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB in sRGB; alpha is composited over white."""
    icc = img.info.get("icc_profile")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    elif img.mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        img = Image.fromarray(np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
    if icc and img.mode in ("RGB", "CMYK", "L"):
        try:
            src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, src, _SRGB, outputMode="RGB")
        except (ImageCms.PyCMSError, OSError):
            pass  # a broken profile: fall back to treating the values as sRGB
    return img.convert("RGB")


def decode_image(data: bytes, limits: ImageLimits | None = None) -> np.ndarray:
    """Decode an upload to the pipeline's input.

    Returns: (H, W, 3) uint8 sRGB, EXIF orientation applied (H, W are the upright size).
    Raises IngestError with a stable code for anything that is not an accepted photo.
    """
    limits = limits or ImageLimits()
    img = _open(data, limits)
    _load(img)
    if getattr(img, "n_frames", 1) > 1:
        img.seek(0)  # animated WebP/PNG: the first frame is the photo
    img = ImageOps.exif_transpose(img) or img
    return np.asarray(_to_srgb(img), dtype=np.uint8).copy()


def encode_image(rgba: np.ndarray, fmt: str, quality: int = 95) -> tuple[bytes, str]:
    """Encode a canvas for delivery.

    rgba: (S, S, 4) uint8. `fmt` is one of OUTPUT_FORMATS; JPEG drops alpha (the caller has
    already composited over an opaque background). Returns (bytes, content type).
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown output format {fmt!r}; accepted: {', '.join(OUTPUT_FORMATS)}")
    img = Image.fromarray(rgba, "RGBA")
    opaque = bool((rgba[..., 3] == 255).all())
    buf = io.BytesIO()
    if fmt == "jpeg":
        # 4:4:4 chroma: subsampled chroma rings into a pure-white background near the garment.
        img.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True, subsampling=0)
    elif fmt == "png":
        (img.convert("RGB") if opaque else img).save(buf, "PNG", **PNG_SAVE)
    else:
        (img.convert("RGB") if opaque else img).save(buf, "WEBP", quality=quality, method=4)
    return buf.getvalue(), OUTPUT_FORMATS[fmt]
