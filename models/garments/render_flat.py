"""The canonical flat-lay: front view, centred, upright, white background, soft even light.

Each part (torso, sleeves, hood) becomes an RGBA layer of the canvas size: the fabric with the
part's construction details and prints drawn on, alpha from the part polygon (2x supersampled
for clean edges). The flat-lay composites the layers over white; the wild renderer warps the
very same layers, so the photo and its flat-lay share every thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

from .categories import Detail, GarmentShape, Part
from .textures import Fabric, draw_print

WHITE = (255, 255, 255)

_PRINT_P = {"tshirt": 0.6, "long_sleeve_top": 0.4, "tank_top": 0.35, "hoodie": 0.5,
            "sweater": 0.25, "shirt": 0.12, "jacket": 0.15, "dress": 0.05, "skirt": 0.05,
            "trousers": 0.08, "jeans": 0.08, "shorts": 0.15}
_PLAIN = ("solid", "heather", "knit", "gradient", "denim")


@dataclass
class FlatLayers:
    """Part layers and the composite flat-lay.

    `layers[i]` is a PIL RGBA image (S x S) for `parts[i]` (sorted by z, bottom first);
    `image` is (S, S, 3) uint8 RGB over white; `mask` is (S, S) bool, the garment silhouette.
    """

    parts: list[Part]
    layers: list[Image.Image]
    image: np.ndarray
    mask: np.ndarray
    attributes: dict


def soft_blur(alpha: np.ndarray, radius: float, offset=(0.0, 0.0)) -> np.ndarray:
    """Gaussian blur (and shift by `offset` pixels) of an (H, W) float alpha in [0, 1],
    computed at reduced resolution: soft shading and shadows have no detail to lose."""
    height, width = alpha.shape
    f = 4 if radius >= 4 else 2 if radius >= 2 else 1
    img = Image.fromarray((alpha * 255).astype(np.uint8))
    small = img.reduce(f) if f > 1 else img
    small = small.filter(ImageFilter.GaussianBlur(radius / f))
    if offset[0] or offset[1]:
        small = small.transform(small.size, Image.Transform.AFFINE,
                                (1, 0, -offset[0] / f, 0, 1, -offset[1] / f),
                                resample=Image.Resampling.BILINEAR)
    if f > 1:
        small = small.resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(small, np.float32) * np.float32(1 / 255)


def _rgb(c: np.ndarray) -> tuple[int, int, int]:
    c = np.clip(np.asarray(c, dtype=np.float32) * 255, 0, 255)
    return int(c[0]), int(c[1]), int(c[2])


def _px(points: np.ndarray, size: int) -> list[tuple[float, float]]:
    return [(float(x), float(y)) for x, y in points * size]


def part_alpha(polygon: np.ndarray, size: int) -> Image.Image:
    """Anti-aliased 'L' mask of a canonical polygon: drawn at 2x, box-reduced."""
    big = Image.new("L", (2 * size, 2 * size), 0)
    ImageDraw.Draw(big).polygon(_px(polygon, 2 * size), fill=255)
    return big.reduce(2)


class _DetailPainter:
    """Draws `Detail`s onto a part layer with colours derived from the fabric."""

    def __init__(self, fabric: Fabric, size: int, rng: np.random.Generator):
        self.size, self.fabric = size, fabric
        base = fabric.base
        self.seam = _rgb(fabric.accent if fabric.attributes["kind"] == "denim" else base * 0.68)
        self.dark = _rgb(base * 0.55)
        self.line_w = max(1, round(size / 256))
        button_colours = [base * 0.6, np.float32([0.93, 0.92, 0.9]), np.float32([0.15, 0.13, 0.12]),
                          np.float32([0.45, 0.3, 0.18]), fabric.accent]
        self.button = _rgb(button_colours[int(rng.integers(len(button_colours)))])
        self.metal = _rgb([0.75, 0.74, 0.7] if rng.random() < 0.6 else [0.72, 0.55, 0.3])
        self.cord = _rgb([0.95, 0.95, 0.93] if rng.random() < 0.5 else base * 0.85)
        label = rng.random() < 0.5
        self.label = _rgb([0.96, 0.96, 0.94] if label else [0.12, 0.12, 0.14])
        self.tints: dict[str, Image.Image] = {}

    def _tint(self, kind: str) -> Image.Image:
        """The fabric re-lit for a detail: lining in shadow, ribbing, collar, flap (cached)."""
        if kind not in self.tints:
            if kind == "rib":
                rib = 0.82 + 0.12 * (np.mod(np.arange(self.size), 3) == 0).astype(np.float32)
                factor = rib[None, :, None]
            else:
                factor = np.float32({"lining": 0.6, "collar": 1.03, "flap": 0.9}[kind])
            rgb = np.clip(self.fabric.rgb * factor * 255, 0, 255).astype(np.uint8)
            self.tints[kind] = Image.fromarray(rgb)
        return self.tints[kind]

    def _fill(self, layer: Image.Image, tint: str, points: np.ndarray) -> None:
        mask = Image.new("L", layer.size, 0)
        ImageDraw.Draw(mask).polygon(_px(points, self.size), fill=255)
        layer.paste(self._tint(tint), (0, 0), mask)

    def paint(self, layer: Image.Image, draw: ImageDraw.ImageDraw, d: Detail) -> None:
        s, lw = self.size, self.line_w
        pts = _px(d.points, s)
        w = max(1, round(d.width * s))
        if d.kind in ("seam", "fly"):
            draw.line(pts, fill=self.seam, width=lw, joint="curve")
        elif d.kind == "line":
            draw.line(pts, fill=_rgb(self.fabric.base * 0.8), width=lw)
        elif d.kind == "band":
            draw.line(pts, fill=_rgb(self.fabric.base * 0.82), width=w, joint="curve")
            draw.line(pts, fill=self.seam, width=lw, joint="curve")
        elif d.kind in ("lining", "rib", "collar", "flap"):
            self._fill(layer, d.kind, d.points)
            if d.kind != "lining":
                draw.line([*pts, pts[0]], fill=self.seam, width=lw, joint="curve")
        elif d.kind == "cuff":
            draw.line([*pts, pts[0]], fill=self.seam, width=lw)
        elif d.kind == "pocket":
            draw.line([*pts, pts[0]], fill=self.seam, width=lw)
            draw.line(pts[:2], fill=self.dark, width=lw)
        elif d.kind in ("pocket_slit", "loop"):
            draw.line(pts, fill=self.dark if d.kind == "pocket_slit" else self.seam,
                      width=max(lw, w if d.kind == "loop" else 2 * lw))
        elif d.kind == "pocket_curve":
            p = d.points
            t = np.linspace(0, 1, 12)[:, None]
            curve = (1 - t) ** 2 * p[0] + 2 * (1 - t) * t * p[1] + t**2 * p[2]
            draw.line(_px(curve, s), fill=self.seam, width=lw)
        elif d.kind == "placket":
            (x0, y0), (x1, y1) = pts
            draw.line([(x0, y0), (x0, y1)], fill=self.seam, width=lw)
            draw.line([(x1, y0), (x1, y1)], fill=self.seam, width=lw)
        elif d.kind in ("button", "rivet"):
            (cx, cy), r = pts[0], max(1.0, d.width * s)
            fill = self.button if d.kind == "button" else self.metal
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill, outline=self.dark)
        elif d.kind == "label":
            (cx, cy), r = pts[0], d.width * s
            draw.rectangle((cx - r, cy - 0.35 * r, cx + r, cy + 0.35 * r), fill=self.label)
        elif d.kind == "zip":
            draw.line(pts, fill=self.metal, width=w)
            draw.line(pts, fill=self.dark, width=lw)
            (x0, y0) = pts[0]
            draw.rectangle((x0 - w * 0.5, y0, x0 + w * 0.5, y0 + 2.2 * w), fill=self.metal,
                           outline=self.dark)
        elif d.kind == "cord":
            draw.line(pts, fill=self.cord, width=w, joint="curve")
            (x1, y1) = pts[-1]
            draw.rectangle((x1 - w * 0.6, y1 - w * 0.4, x1 + w * 0.6, y1 + 2 * w), fill=self.dark)
        elif d.kind == "belt":
            draw.line(pts, fill=_rgb(self.fabric.base * 0.75), width=w)
            (xa, ya), (xb, yb) = pts
            cx = 0.5 * (xa + xb)
            draw.rectangle((cx - w * 0.6, ya - w * 0.6, cx + w * 0.6, ya + w * 0.6),
                           outline=self.metal, width=max(1, w // 5))
        elif d.kind == "cable":
            (x0, y0), (_, y1) = pts
            half = 0.5 * w
            draw.line([(x0 - half, y0), (x0 - half, y1)], fill=self.dark, width=lw)
            draw.line([(x0 + half, y0), (x0 + half, y1)], fill=self.dark, width=lw)
            y = np.linspace(y0, y1, 80)
            for phase in (0.0, np.pi):
                x = x0 + 0.35 * w * np.sin((y - y0) / (1.2 * w) * np.pi + phase)
                draw.line(list(zip(x.tolist(), y.tolist(), strict=True)), fill=self.seam, width=lw)
        else:
            raise ValueError(f"unknown detail kind {d.kind!r}")


def render_flat(shape: GarmentShape, fabric: Fabric, size: int,
                rng: np.random.Generator) -> FlatLayers:
    """Render the canonical flat-lay and its part layers (see `FlatLayers`)."""
    texture = Image.fromarray((fabric.rgb * 255).astype(np.uint8))
    painter = _DetailPainter(fabric, size, rng)
    attrs: dict = {}
    layers: list[Image.Image] = []
    want_print = rng.random() < _PRINT_P[shape.category] * (
        1.0 if fabric.attributes["kind"] in _PLAIN else 0.3)
    for part in shape.parts:
        layer = texture.copy()
        draw = ImageDraw.Draw(layer)
        if part.name == "torso" and want_print and shape.print_box is not None:
            small = shape.category in ("shirt", "jacket", "trousers", "jeans", "shorts") or (
                rng.random() < 0.25)
            attrs["print"] = draw_print(draw, shape.print_box, rng, fabric, size, small)
        for d in shape.details:
            if d.part == part.name:
                painter.paint(layer, draw, d)
        layer.putalpha(part_alpha(part.polygon, size))
        layers.append(layer)

    canvas = Image.new("RGB", (size, size), WHITE)
    union = np.zeros((size, size), np.uint8)
    for layer in layers:
        alpha = layer.getchannel("A")
        canvas.paste(layer, (0, 0), alpha)
        np.maximum(union, np.asarray(alpha), out=union)
    # Soft even light: a faint darkening towards the outline, as cloth curls at its edges.
    a = union.astype(np.float32) * np.float32(1 / 255)
    shade = 255.5 - 30.6 * a * (1.0 - soft_blur(a, size / 48))
    shade_img = Image.fromarray(shade.astype(np.uint8))
    image = ImageChops.multiply(canvas, Image.merge("RGB", (shade_img, shade_img, shade_img)))
    return FlatLayers(parts=shape.parts, layers=layers, image=np.asarray(image), mask=a >= 0.5,
                      attributes=attrs)
