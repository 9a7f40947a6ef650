"""Stage 7, compose: garment + alpha → the delivered canvas.

Tight crop, centered on a square canvas with a fixed margin, over the requested background
(an opaque colour or transparency).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from PIL import Image

# The garment's longer side as a share of the canvas where no preset says otherwise: an 8%
# margin each side.
CATALOG_FILL = 0.84
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


@dataclass
class Placement:
    """A garment placed on a canvas. layer: (S, S, 4) uint8 RGBA garment over transparency;
    scale, offset: photo px → canvas px as canvas = photo · scale + offset."""

    layer: np.ndarray
    scale: float
    offset: tuple[float, float]

    @property
    def alpha(self) -> np.ndarray:
        return self.layer[..., 3].astype(np.float32) / 255.0

    def to_canvas(self, points: np.ndarray, photo_shape: tuple[int, int]) -> np.ndarray:
        """(N, 2) points in the photo's unit square → the canvas's unit square."""
        h, w = photo_shape
        size = self.layer.shape[0]
        px = np.asarray(points, np.float64) * (w, h) * self.scale + self.offset
        return (px / size).astype(np.float32)


def place_garment(rgb: np.ndarray, alpha: np.ndarray, size: int, fill: float) -> Placement:
    """Crop the garment tightly and center it on a transparent `size`² layer, its longer
    side spanning `fill`·size.

    rgb: (H, W, 3) uint8 photo; alpha: (H, W) float in [0, 1].
    """
    top, left, bottom, right = garment_bbox(alpha)
    crop = np.dstack([rgb[top:bottom, left:right], alpha[top:bottom, left:right] * 255.0 + 0.5])
    crop_img = Image.fromarray(crop.astype(np.uint8), "RGBA")
    span = max(1, round(size * fill))
    scale = span / max(crop_img.width, crop_img.height)
    new_w = max(1, round(crop_img.width * scale))
    new_h = max(1, round(crop_img.height * scale))
    # Pillow resizes RGBA with premultiplied alpha, so no dark fringes at the edge.
    garment = crop_img.resize((new_w, new_h), Image.Resampling.LANCZOS)
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    x0, y0 = (size - new_w) // 2, (size - new_h) // 2
    layer.alpha_composite(garment, (x0, y0))
    sx, sy = new_w / crop_img.width, new_h / crop_img.height
    return Placement(np.asarray(layer), (sx + sy) / 2, (x0 - left * sx, y0 - top * sy))


def over_background(layer: np.ndarray, background: tuple[int, int, int] | None) -> np.ndarray:
    """(S, S, 4) uint8 garment layer → the delivered RGBA canvas: alpha 255 everywhere over an
    opaque background, the garment's alpha over a transparent one."""
    if background is None:
        return layer
    canvas = Image.new("RGBA", layer.shape[1::-1], (*background, 255))
    canvas.alpha_composite(Image.fromarray(layer, "RGBA"))
    return np.asarray(canvas)


def place_on_canvas(
    rgb: np.ndarray,
    alpha: np.ndarray,
    size: int,
    background: tuple[int, int, int] | None,
    margin: float = 0.08,
) -> np.ndarray:
    """Crop the garment tightly and center it on a `size`² canvas over `background`, its
    longer side spanning (1 - 2·margin)·size. Returns (size, size, 4) uint8 RGBA."""
    return over_background(place_garment(rgb, alpha, size, 1.0 - 2.0 * margin).layer,
                           background)


def draw_overlay(image: np.ndarray, alpha: np.ndarray, landmarks: np.ndarray | None,
                 category: str | None) -> np.ndarray:
    """The structure drawn over a result, for people: the silhouette's edge in cyan, the
    outline landmarks joined in order in magenta, every landmark a numbered dot.

    image: (S, S, 4) uint8; alpha: (S, S) float; landmarks: (L, 2) in the canvas's unit
    square. Returns (S, S, 4) uint8 RGBA (opaque).
    """
    from PIL import ImageDraw
    from scipy import ndimage

    from models.garments import contour_count

    size = image.shape[0]
    base = Image.new("RGBA", (size, size), (255, 255, 255, 255))
    base.alpha_composite(Image.fromarray(image, "RGBA"))
    # Fade the garment so the drawing stands out.
    base = Image.blend(base, Image.new("RGBA", base.size, (255, 255, 255, 255)), 0.35)
    inside = alpha > 0.5
    # The outline: inside pixels with an outside pixel within `t` (a separable min filter).
    t = max(1, size // 400)
    edge = inside & ~ndimage.minimum_filter(inside, size=2 * t + 1)
    px = np.asarray(base).copy()
    px[edge] = (0, 170, 200, 255)
    out = Image.fromarray(px, "RGBA")
    if landmarks is not None and category is not None:
        draw = ImageDraw.Draw(out)
        pts = [tuple(p) for p in (np.asarray(landmarks) * size).tolist()]
        n = contour_count(category)
        line = max(1, size // 300)
        draw.line(pts[:n] + pts[:1], fill=(200, 0, 120, 255), width=line)
        r = max(2, size // 150)
        for i, (x, y) in enumerate(pts):
            draw.ellipse((x - r, y - r, x + r, y + r), fill=(200, 0, 120, 255),
                         outline=(255, 255, 255, 255))
            draw.text((x + r + 1, y - r - 1), str(i), fill=(40, 40, 40, 255))
    return np.asarray(out)


def silhouette_alpha(silhouette: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A canonical silhouette (s, s) bool → (alpha, sdf) on a `size`² canvas.

    The signed distance field is resized rather than the mask, so the edge stays smooth at
    any output size; alpha ramps over one output pixel (anti-aliased). sdf is in output px,
    negative inside.
    """
    from scipy import ndimage

    from models.warp import signed_distance

    s = silhouette.shape[0]
    # A light blur of the distance field takes out the pixel steps of the bank's mask, which
    # an 8× upsampling would show as a wobbly outline.
    sdf = ndimage.gaussian_filter(signed_distance(silhouette), 0.8) * (size / s)
    big = np.asarray(Image.fromarray(sdf, "F").resize((size, size), Image.Resampling.BILINEAR))
    alpha = np.clip(0.5 - big, 0.0, 1.0).astype(np.float32)
    return alpha, big.astype(np.float32)


def refine_alpha(alpha: np.ndarray, sdf: np.ndarray, warped_mask: np.ndarray,
                 band: float) -> np.ndarray:
    """Near the structure's edge (|sdf| < band·size) the warped photo's own garment edge wins:
    the structure gives the shape, the photo the exact outline where they nearly agree."""
    width = band * alpha.shape[0]
    if width <= 0:
        return alpha
    near = np.abs(sdf) < width
    out = alpha.copy()
    out[near] = np.clip(warped_mask[near], 0.0, 1.0)
    return out


def fill_unknown(image: np.ndarray, validity: np.ndarray, alpha: np.ndarray,
                 work: int = 256, trim: float = 0.0) -> np.ndarray:
    """Texture where the garment is but the photo said nothing (occluded, out of frame,
    behind a fold): the nearest known texture, blurred, at a working resolution.

    image: (S, S, 3) uint8; validity: (S, S) bool (V); alpha: (S, S) float. `trim` (share of
    the canvas) drops that much of V's edge too: a parser's mask edge is coarse, and a
    garment edge smeared from inside looks better than a strip of background.
    """
    from scipy import ndimage

    size = image.shape[0]
    hole = (alpha > 0.0) & ~validity
    if not hole.any() and trim <= 0:
        return image
    small = np.asarray(Image.fromarray(image).resize((work, work), Image.Resampling.BOX))
    known = np.asarray(Image.fromarray(validity.astype(np.uint8) * 255).resize(
        (work, work), Image.Resampling.BOX)) > 250
    if trim > 0 and known.any():
        trimmed = ndimage.binary_erosion(known, iterations=max(1, round(trim * work)))
        known = trimmed if trimmed.any() else known
    if known.any():
        _, (iy, ix) = ndimage.distance_transform_edt(~known, return_indices=True)
        filled = small[iy, ix].astype(np.float32)
        for c in range(3):
            filled[..., c] = ndimage.gaussian_filter(filled[..., c], 2.0)
    else:
        filled = np.broadcast_to(np.median(image[alpha > 0.5], axis=0) if (alpha > 0.5).any()
                                 else np.full(3, 128.0), small.shape).astype(np.float32)
    big = np.asarray(Image.fromarray(np.clip(filled, 0, 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BILINEAR))
    # A soft seam: blend over a few pixels into the known texture (the blur is made at the
    # working size and upsampled; the hole itself stays exact at full size).
    soft = ndimage.gaussian_filter((~known).astype(np.float32), 1.0)
    weight = np.asarray(Image.fromarray(soft, "F").resize((size, size),
                                                          Image.Resampling.BILINEAR))
    weight = np.maximum(weight, hole)[..., None]
    return (image * (1 - weight) + big * weight + 0.5).astype(np.uint8)


def layer_of(image: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(S, S, 3) uint8 + (S, S) float alpha → (S, S, 4) uint8 RGBA layer."""
    return np.dstack([image, (np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8)])
