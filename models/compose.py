"""Stage 7, compose: garment + alpha → the delivered canvas.

Tight crop, centered on a square canvas with a fixed margin, over the requested background
(an opaque colour or transparency).
"""

from __future__ import annotations

import re

import numpy as np
from PIL import Image

_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def parse_background(value: str) -> tuple[int, int, int] | None:
    """'transparent' → None; '#rgb' / '#rrggbb' (hash optional) → an RGB tuple.

    Raises ValueError naming the accepted forms otherwise.
    """
    if value.strip().lower() == "transparent":
        return None
    m = _HEX.match(value.strip())
    if not m:
        raise ValueError(
            f"background {value!r} is neither 'transparent' nor a hex colour like '#ffffff'"
        )
    h = m.group(1)
    if len(h) == 3:
        h = "".join(ch * 2 for ch in h)
    return (int(h[0:2], 16), int(h[2:4], 16), int(h[4:6], 16))


def garment_bbox(alpha: np.ndarray, threshold: float = 0.5) -> tuple[int, int, int, int]:
    """Tight (top, left, bottom, right) box, bottom/right exclusive, of alpha > threshold."""
    rows = np.flatnonzero((alpha > threshold).any(axis=1))
    cols = np.flatnonzero((alpha > threshold).any(axis=0))
    if rows.size == 0:
        raise ValueError("the alpha mask is empty")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def place_on_canvas(
    rgb: np.ndarray,
    alpha: np.ndarray,
    size: int,
    background: tuple[int, int, int] | None,
    margin: float = 0.08,
) -> np.ndarray:
    """Crop the garment tightly and center it on a `size`² canvas.

    rgb: (H, W, 3) uint8 photo; alpha: (H, W) float in [0, 1]. The garment's longer side
    spans (1 - 2·margin)·size. Returns (size, size, 4) uint8 RGBA: alpha is 255 everywhere
    over an opaque background, the garment's alpha over a transparent one.
    """
    top, left, bottom, right = garment_bbox(alpha)
    crop = np.dstack([rgb[top:bottom, left:right], alpha[top:bottom, left:right] * 255.0 + 0.5])
    crop_img = Image.fromarray(crop.astype(np.uint8), "RGBA")
    span = max(1, round(size * (1.0 - 2.0 * margin)))
    scale = span / max(crop_img.width, crop_img.height)
    new_w = max(1, round(crop_img.width * scale))
    new_h = max(1, round(crop_img.height * scale))
    # Pillow resizes RGBA with premultiplied alpha, so no dark fringes at the edge.
    garment = crop_img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    canvas = Image.new("RGBA", (size, size), (*background, 255) if background else (0, 0, 0, 0))
    canvas.alpha_composite(garment, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)
