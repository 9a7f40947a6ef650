"""Output presets that catalogs require, and the compliance check of a delivered image.

A preset fixes what a marketplace checks: canvas size and shape, background, file formats and
how much of the frame the garment fills. Every job is checked against its preset after
encoding (on the bytes the caller gets), so catalog tooling can gate uploads on the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from models.compose import garment_bbox, parse_background


@dataclass(frozen=True)
class Preset:
    """size: default canvas side (px). background: 'transparent' or a hex colour.
    formats: allowed output formats, the first is the default. fill: the garment's longer
    side as a share of the canvas side when placed; None keeps the canonical frame (a
    category-consistent scale). min_fill: the least fill that passes the check."""

    name: str
    size: int
    background: str
    formats: tuple[str, ...]
    fill: float | None
    min_fill: float | None
    description: str


PRESETS: dict[str, Preset] = {
    "square-white": Preset(
        "square-white", 1024, "#ffffff", ("png", "jpeg", "webp"), None, None,
        "square, white background, garment at its category's canonical scale"),
    "amazon-main": Preset(
        "amazon-main", 2000, "#ffffff", ("jpeg", "png"), 0.9, 0.85,
        "Amazon main image: pure white (255, 255, 255), no shadow, garment fills ≥ 85% "
        "of the frame, square, 2000 px"),
    "transparent": Preset(
        "transparent", 1024, "transparent", ("png", "webp"), None, None,
        "square, transparent background (PNG or WebP with alpha)"),
}
DEFAULT_PRESET = "square-white"

# Garment pixels are told from background by the pipeline's alpha; a band this wide around
# the garment is the anti-aliased edge and is not held to the background rule. JPEG's 8×8
# blocks ring past the edge, so its band is one block.
EDGE_BAND_PX = {"jpeg": 8}
DEFAULT_EDGE_BAND_PX = 2
# Share of background pixels that must be exactly the background (JPEG may nudge a few).
MIN_PURITY = 0.999


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
    return PRESETS[name]


def _check(name: str, value: Any, required: Any, passed: bool) -> dict[str, Any]:
    return {"name": name, "value": value, "required": required, "passed": bool(passed)}


def garment_band(garment: np.ndarray, band: int) -> np.ndarray:
    """The garment and every pixel within `band` steps of it (4-connected), as
    `binary_dilation(garment, iterations=band)`: computed on the garment's box grown by
    `band`, which is exact (the dilation cannot reach past it) and a few ms cheaper than
    dilating the whole 1024² canvas."""
    near = np.zeros_like(garment, bool)
    if not garment.any():
        return near
    top, left, bottom, right = garment_bbox(garment, 0.0)
    box = (slice(max(top - band, 0), bottom + band), slice(max(left - band, 0), right + band))
    near[box] = ndimage.binary_dilation(garment[box], iterations=band)
    return near


def check_compliance(image: np.ndarray, alpha: np.ndarray, preset: Preset, fmt: str,
                     background: str | None = None) -> dict[str, Any]:
    """Check a delivered image against its preset.

    image: the decoded output, (H, W, 3) or (H, W, 4) uint8. alpha: (H, W) garment alpha in
    [0, 1] from the pipeline. background: the background the job asked for (default the
    preset's). Returns {"preset", "passed", "checks": [{name, value, required, passed}]}.
    """
    h, w = image.shape[:2]
    checks = [
        _check("size", [w, h], [preset.size, preset.size], (w, h) == (preset.size,) * 2),
        _check("format", fmt, list(preset.formats), fmt in preset.formats),
    ]
    garment = alpha > 0.0
    band = EDGE_BAND_PX.get(fmt, DEFAULT_EDGE_BAND_PX)
    near = garment_band(garment, band)
    outside = ~near
    wanted = parse_background(background or preset.background)
    if parse_background(preset.background) is None:
        # A transparent preset needs transparency, whatever background was asked for.
        if image.shape[2] < 4:
            purity = 0.0
        else:
            purity = float((image[..., 3][outside] == 0).mean()) if outside.any() else 1.0
        checks.append(_check("background_transparent", round(purity, 6), MIN_PURITY,
                             purity >= MIN_PURITY))
    else:
        exact = np.zeros(image.shape[:2], bool)
        if wanted is not None:
            exact = (image[..., :3] == np.array(wanted, np.uint8)).all(-1)
        if image.shape[2] == 4:
            exact &= image[..., 3] == 255
        purity = float(exact[outside].mean()) if outside.any() else 1.0
        checks.append(_check("background_purity", round(purity, 6), MIN_PURITY,
                             purity >= MIN_PURITY))
        asked = "transparent" if wanted is None else "#{:02x}{:02x}{:02x}".format(*wanted)
        checks.append(_check("background_colour", asked, preset.background,
                             wanted == parse_background(preset.background)))
    if preset.min_fill is not None:
        span = 0
        if (alpha > 0.5).any():
            top, left, bottom, right = garment_bbox(alpha)
            span = max(bottom - top, right - left)
        fill = span / max(h, w)
        checks.append(_check("fill_ratio", round(float(fill), 4), preset.min_fill,
                             fill >= preset.min_fill))
    return {"preset": preset.name, "passed": all(c["passed"] for c in checks),
            "checks": checks}
