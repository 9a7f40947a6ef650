"""Fabric textures and prints, generated at the target size with vectorised numpy.

A fabric is an (S, S, 3) float32 RGB image in [0, 1] over the canonical canvas; every part of
a garment samples the same fabric, so patterns run across seams the way cut cloth does. Prints
(text in real fonts, logos, badges) are drawn onto the torso layer by `draw_print`.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Everyday garment colours (sRGB 0-255): neutrals dominate a real catalog.
PALETTE: dict[str, tuple[int, int, int]] = {
    "white": (242, 242, 238), "ivory": (236, 230, 212), "black": (28, 28, 30),
    "charcoal": (58, 60, 64), "grey": (128, 130, 134), "heather": (170, 170, 172),
    "navy": (30, 40, 78), "royal": (40, 70, 170), "sky": (140, 180, 222),
    "denim_blue": (70, 100, 150), "teal": (20, 110, 120), "forest": (34, 80, 50),
    "olive": (100, 104, 58), "sage": (150, 168, 140), "mint": (170, 220, 196),
    "khaki": (190, 172, 130), "beige": (210, 192, 160), "camel": (186, 140, 90),
    "brown": (100, 66, 44), "rust": (170, 80, 40), "burgundy": (110, 24, 40),
    "red": (190, 30, 40), "coral": (240, 120, 100), "pink": (236, 170, 186),
    "fuchsia": (200, 40, 130), "lavender": (180, 160, 210), "purple": (90, 50, 120),
    "mustard": (214, 170, 40), "yellow": (246, 214, 70), "orange": (236, 120, 40),
}
_NEUTRALS = ["white", "black", "charcoal", "grey", "heather", "navy", "beige", "ivory", "khaki"]

FABRIC_KINDS = ("solid", "heather", "stripes", "checks", "plaid", "dots", "gradient", "floral",
                "camo", "denim", "knit")

_CATEGORY_FABRICS: dict[str, dict[str, float]] = {
    "tshirt": {"solid": 5, "heather": 2, "stripes": 2, "dots": 0.5, "gradient": 0.5, "camo": 0.5,
               "floral": 0.5},
    "long_sleeve_top": {"solid": 4, "heather": 2, "stripes": 2.5, "dots": 0.5, "knit": 0.5},
    "tank_top": {"solid": 5, "heather": 1, "stripes": 1.5, "floral": 1, "gradient": 0.7},
    "shirt": {"solid": 3, "stripes": 2.5, "checks": 2, "plaid": 2, "floral": 1, "dots": 0.5,
              "denim": 0.5},
    "hoodie": {"solid": 5, "heather": 3, "camo": 1, "gradient": 0.6},
    "sweater": {"knit": 5, "heather": 1.5, "stripes": 1.2, "solid": 1.5},
    "jacket": {"solid": 4, "denim": 2, "camo": 1, "plaid": 1, "heather": 0.5},
    "dress": {"solid": 3, "floral": 3, "dots": 1.5, "stripes": 1.2, "checks": 1, "gradient": 0.6},
    "skirt": {"solid": 3, "plaid": 2, "floral": 1.5, "denim": 1.5, "checks": 1, "dots": 0.6},
    "trousers": {"solid": 5, "stripes": 0.8, "checks": 0.8, "heather": 1, "camo": 0.7},
    "jeans": {"denim": 1},
    "shorts": {"solid": 3, "denim": 2, "camo": 0.8, "stripes": 0.8, "plaid": 0.6},
}


@dataclass
class Fabric:
    """`rgb` (S, S, 3) float32 in [0, 1], canonical frame; `base` and `accent` are (3,) float32
    colours for details (stitching, ribbing, prints); `attributes` is JSON-ready."""

    rgb: np.ndarray
    base: np.ndarray
    accent: np.ndarray
    attributes: dict


def _colour(rng: np.random.Generator, names: list[str] | None = None) -> tuple[str, np.ndarray]:
    name = str(rng.choice(names or list(PALETTE)))
    jitter = rng.normal(0, 7, 3)
    return name, np.clip((np.array(PALETTE[name]) + jitter) / 255.0, 0, 1).astype(np.float32)


@functools.lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (u, v) of the canonical canvas, each (S, S) float32."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(t, t)


@functools.lru_cache(maxsize=8)
def _noise_tile(size: int) -> np.ndarray:
    """A fixed (2S, 2S) float32 standard-normal tile, the same on every machine."""
    return np.random.default_rng(0x5EED).standard_normal((2 * size, 2 * size), dtype=np.float32)


def white_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """(S, S) float32 standard-normal noise: a window of the fixed tile at a random offset,
    flipped at random (per-pixel noise without drawing S² normals every time)."""
    ox, oy, flip = (int(v) for v in rng.integers(0, size, 3))
    patch = _noise_tile(size)[oy:oy + size, ox:ox + size]
    return patch[:, ::-1] if flip % 2 else patch


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Smooth value noise in about [-1, 1], (S, S) float32: bicubic upsampled random grid."""
    small = rng.standard_normal((cells, cells)).astype(np.float32)
    img = Image.fromarray(small, mode="F").resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(img)


def _blend(mask: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    m = mask[..., None]
    return a * (1 - m) + b * m


def _bands(coord: np.ndarray, period: float, duty: float, size: int) -> np.ndarray:
    """Anti-aliased 0/1 stripes along `coord`: 1 inside the first `duty` of each period."""
    f = np.mod(coord / period, 1.0)
    edge = 1.0 / (period * size)  # one pixel in phase units
    return np.clip((duty - f) / edge + 0.5, 0, 1) * np.clip(f / edge + 0.5, 0, 1)


def sample_fabric(category: str, rng: np.random.Generator, size: int) -> Fabric:
    """Draw a fabric for `category`: kind, colours and pattern parameters from `rng`."""
    weights = _CATEGORY_FABRICS[category]
    kinds = list(weights)
    p = np.array([weights[k] for k in kinds], dtype=np.float64)
    kind = str(rng.choice(kinds, p=p / p.sum()))
    u, v = _grid(size)
    attrs: dict = {"kind": kind}
    bright = rng.random() < 0.35
    base_name, base = _colour(rng, None if bright else _NEUTRALS)
    acc_name, accent = _colour(rng)
    while acc_name == base_name:
        acc_name, accent = _colour(rng)
    attrs["colours"] = [base_name, acc_name]
    rgb = np.broadcast_to(base, (size, size, 3)).astype(np.float32)

    if kind == "heather":
        grain = white_noise(rng, size)
        marl = 0.05 * grain + 0.03 * _smooth_noise(rng, size, 24)
        rgb = rgb * (1 + marl[..., None]) - 0.04 * np.abs(marl)[..., None]
    elif kind == "stripes":
        angle = float(rng.choice([0.0, 90.0, rng.uniform(0, 180)], p=[0.55, 0.25, 0.2]))
        period = float(rng.uniform(0.015, 0.11))
        duty = float(rng.uniform(0.15, 0.6))
        a = np.deg2rad(angle)
        coord = u * np.sin(a) + v * np.cos(a)
        rgb = _blend(_bands(coord, period, duty, size), rgb, accent)
        if rng.random() < 0.35:  # a thin second stripe
            _, third = _colour(rng)
            rgb = _blend(_bands(coord + period * 0.75, period, duty * 0.2, size), rgb, third)
        attrs.update(angle=round(angle, 2), period=round(period, 4), duty=round(duty, 3))
    elif kind in ("checks", "plaid"):
        period = float(rng.uniform(0.03, 0.1)) * (1.6 if kind == "plaid" else 1.0)
        angle = float(rng.choice([0.0, 45.0], p=[0.85, 0.15]))
        a = np.deg2rad(angle)
        x, y = u * np.cos(a) + v * np.sin(a), -u * np.sin(a) + v * np.cos(a)
        if kind == "checks":
            bx, by = _bands(x, period, 0.5, size), _bands(y, period, 0.5, size)
            rgb = _blend(0.5 * (bx + by), rgb, accent)
        else:
            _, third = _colour(rng)
            for colour, duty, offset in ((accent, 0.35, 0.0), (third, 0.08, 0.6),
                                         (base * 0.5, 0.12, 0.25)):
                bx = _bands(x + offset * period, period, duty, size)
                by = _bands(y + offset * period, period, duty, size)
                rgb = _blend(0.45 * (bx + by), rgb, colour)
            twill = _bands(x + y, 3.0 / size, 0.5, size)
            rgb = rgb * (0.96 + 0.06 * twill[..., None])
        attrs.update(period=round(period, 4), angle=angle)
    elif kind == "dots":
        period = float(rng.uniform(0.03, 0.09))
        radius = period * float(rng.uniform(0.12, 0.32))
        fx = np.mod(u / period + 0.5 * (np.floor(v / period) % 2), 1.0) - 0.5
        fy = np.mod(v / period, 1.0) - 0.5
        dist = np.sqrt(fx * fx + fy * fy) * period
        dot = np.clip((radius - dist) * size + 0.5, 0, 1)
        rgb = _blend(dot, rgb, accent)
        attrs.update(period=round(period, 4), radius=round(radius, 4))
    elif kind == "gradient":
        angle = float(rng.uniform(0, 360))
        a = np.deg2rad(angle)
        t = np.clip((u - 0.5) * np.cos(a) + (v - 0.5) * np.sin(a) + 0.5, 0, 1)
        if rng.random() < 0.3:  # tie-dye-like swirl
            t = 0.5 + 0.5 * np.sin(6 * t + 2.5 * _smooth_noise(rng, size, 5))
        rgb = _blend(t.astype(np.float32), rgb, accent)
        attrs.update(angle=round(angle, 2))
    elif kind == "floral":
        rgb = _floral(rng, u, v, size, rgb, accent, attrs)
    elif kind == "camo":
        palettes = [["olive", "khaki", "brown", "black"], ["beige", "khaki", "brown", "olive"],
                    ["grey", "charcoal", "heather", "black"], ["pink", "fuchsia", "white", "grey"],
                    ["navy", "royal", "sky", "charcoal"]]
        names = palettes[int(rng.integers(len(palettes)))]
        cells = int(rng.integers(5, 10))
        rgb = np.broadcast_to(np.array(PALETTE[names[0]], np.float32) / 255,
                              (size, size, 3)).copy()
        for name in names[1:]:
            blob = _smooth_noise(rng, size, cells) + 0.25 * _smooth_noise(rng, size, cells * 3)
            rgb = _blend(np.clip((blob - 0.45) * size / 24 + 0.5, 0, 1),
                         rgb, np.array(PALETTE[name], np.float32) / 255)
        attrs["colours"] = names
    elif kind == "denim":
        wash = str(rng.choice(["dark", "mid", "light", "black", "grey"], p=[0.3, 0.3, 0.2, 0.1,
                                                                             0.1]))
        indigo = {"dark": (38, 52, 92), "mid": (70, 98, 146), "light": (128, 158, 196),
                  "black": (40, 40, 46), "grey": (110, 112, 118)}[wash]
        base = np.clip((np.array(indigo) + rng.normal(0, 6, 3)) / 255, 0, 1).astype(np.float32)
        twill = _bands(u + v, 4.0 / size, 0.5, size)
        slub = np.asarray(Image.fromarray(rng.standard_normal((size // 8, size)).astype(
            np.float32), mode="F").resize((size, size), Image.Resampling.BILINEAR))
        fade = 0.12 * _smooth_noise(rng, size, 4)
        light = 1 + 0.1 * twill - 0.05 + 0.05 * slub + fade
        rgb = base * light[..., None] + 0.05 * (twill[..., None] * np.float32([1, 1, 1]))
        accent = np.float32([0.85, 0.55, 0.2])  # copper stitching
        attrs.update(wash=wash)
        attrs["colours"] = [f"denim_{wash}", "copper"]
    elif kind == "knit":
        rows = float(rng.uniform(4.0, 7.0)) / size
        cols = rows * 1.2
        vx = np.abs(np.mod(u / cols, 1.0) - 0.5)
        knit = np.mod(v / rows + vx, 1.0)
        shade = 0.88 + 0.2 * np.abs(knit - 0.5)
        rgb = rgb * shade[..., None]
        if rng.random() < 0.35:  # a stripe band or two
            rgb = _blend(_bands(v, float(rng.uniform(0.08, 0.2)), 0.3, size), rgb, accent * shade[
                ..., None] / shade.mean())
        attrs.update(rows_per_canvas=round(1 / rows, 1))
    # Fine weave grain everywhere: real cloth is never flat colour.
    grain = 1 + 0.025 * white_noise(rng, size)
    rgb = np.clip(rgb * grain[..., None], 0, 1).astype(np.float32)
    return Fabric(rgb=rgb, base=base.astype(np.float32), accent=accent.astype(np.float32),
                  attributes=attrs)


def _floral(rng, u, v, size, rgb, accent, attrs) -> np.ndarray:
    """Scattered five- or six-petal flowers with leaves on a jittered grid (one per cell)."""
    period = float(rng.uniform(0.06, 0.14))
    n = int(np.ceil(1 / period)) + 1
    jitter = rng.uniform(-0.18, 0.18, (n, n, 2)).astype(np.float32)
    rot = rng.uniform(0, 2 * np.pi, (n, n)).astype(np.float32)
    names = [str(c) for c in rng.choice(list(PALETTE), 3)]
    colours = np.array([PALETTE[c] for c in names], np.float32) / 255
    pick = rng.integers(0, 3, (n, n))
    petals = int(rng.choice([5, 6]))
    iy, ix = np.floor(v / period).astype(int), np.floor(u / period).astype(int)
    cx = (ix + 0.5 + jitter[iy, ix, 0]) * period
    cy = (iy + 0.5 + jitter[iy, ix, 1]) * period
    dx, dy = u - cx, v - cy
    r = np.sqrt(dx * dx + dy * dy) / period
    th = np.arctan2(dy, dx) + rot[iy, ix]
    petal_r = 0.3 * (0.55 + 0.45 * np.abs(np.cos(0.5 * petals * th)))
    aa = 1.0 / (period * size)
    flower = np.clip((petal_r - r) / aa + 0.5, 0, 1)
    centre = np.clip((0.07 - r) / aa + 0.5, 0, 1)
    leaf_d = np.hypot((r - 0.4) * 2.2, np.mod(th + 1.0, 2 * np.pi) - np.pi)
    leaf = np.clip((0.35 - leaf_d) * 6, 0, 1) * (r < 0.48)
    out = _blend(leaf.astype(np.float32), rgb, np.float32([0.22, 0.42, 0.22]))
    out = _blend(flower, out, colours[pick[iy, ix]])
    out = _blend(centre, out, accent)
    attrs.update(period=round(period, 4), petals=petals)
    attrs["colours"] = attrs["colours"][:1] + names
    return out


# ---- prints --------------------------------------------------------------------------------

_WORDS = ["BROOKLYN", "SURF CLUB", "ATHLETIC DEPT.", "NEW YORK", "CALIFORNIA", "EST. 1987",
          "VARSITY", "good vibes", "STAY WILD", "PARIS", "TOKYO", "MOUNTAIN CREW", "OCEAN",
          "Weekend", "ORIGINAL", "SUNSET", "COLLEGE", "RUN CLUB", "LIMITED", "CLASSIC",
          "NO. 23", "BERLIN", "Coffee & Co", "VINTAGE", "FLATLAY", "NORTH", "ROCK'N'ROLL",
          "Summer '99", "SKATE", "LA FAMILIA", "AMOR", "HELLO", "BASIC", "1994"]
_FONT_FILES = ["DejaVuSans-Bold.ttf", "DejaVuSans.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSerif-BoldItalic.ttf", "DejaVuSansMono-Bold.ttf",
               "DejaVuSans-BoldOblique.ttf",
               "DejaVuSerif.ttf", "DejaVuSansMono.ttf"]


@functools.lru_cache(maxsize=1)
def _font_dir() -> Path:
    spec = importlib.util.find_spec("matplotlib")
    assert spec is not None and spec.origin is not None, "matplotlib ships the DejaVu fonts"
    return Path(spec.origin).parent / "mpl-data" / "fonts" / "ttf"


@functools.lru_cache(maxsize=256)
def _font(name: str, px: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(_font_dir() / name), max(px, 4))


def _ink(rng: np.random.Generator, base: np.ndarray, accent: np.ndarray) -> tuple[int, ...]:
    """A print colour that reads against the fabric: the accent, or black/white by contrast."""
    lum = float(base @ np.float32([0.3, 0.59, 0.11]))
    acc_lum = float(accent @ np.float32([0.3, 0.59, 0.11]))
    if abs(acc_lum - lum) > 0.25 and rng.random() < 0.6:
        c = accent
    else:
        c = np.float32([0.08, 0.08, 0.1]) if lum > 0.5 else np.float32([0.95, 0.95, 0.93])
    return tuple(int(x) for x in np.clip(c * 255, 0, 255))


def _fit_text(text: str, font_name: str, width_px: float, height_px: float):
    px = max(int(height_px), 4)
    font = _font(font_name, px)
    x0, y0, x1, y1 = font.getbbox(text)
    scale = min(width_px / max(x1 - x0, 1), height_px / max(y1 - y0, 1))
    font = _font(font_name, max(int(px * scale), 4))
    return font, font.getbbox(text)


def draw_print(draw: ImageDraw.ImageDraw, box: tuple[float, float, float, float],
               rng: np.random.Generator, fabric: Fabric, size: int, small: bool) -> dict:
    """Draw a text/logo print inside `box` (canonical x0, y0, x1, y1) on a part layer.

    `small` puts a chest-logo sized print in the upper corner of the box. Returns attributes.
    """
    x0, y0, x1, y1 = (c * size for c in box)
    if small:
        w = (x1 - x0) * float(rng.uniform(0.22, 0.32))
        cx = x1 - w * 0.9 if rng.random() < 0.7 else 0.5 * (x0 + x1)
        x0, x1, y1 = cx - w / 2, cx + w / 2, y0 + w * 0.8
    ink = _ink(rng, fabric.base, fabric.accent)
    kind = str(rng.choice(["text", "logo", "badge", "number"], p=[0.45, 0.2, 0.2, 0.15]))
    font_name = str(rng.choice(_FONT_FILES))
    text = str(rng.choice(_WORDS))
    # A held-out shape can give a print box upside down (a short top under a deep neckline):
    # its size is what counts. Boxes the right way up are unchanged.
    w, h = abs(x1 - x0), abs(y1 - y0)
    cx, cy = 0.5 * (x0 + x1), 0.5 * (y0 + y1)
    attrs = {"kind": kind, "font": font_name, "colour": list(ink), "small": small}
    if kind == "text":
        lines = text.split(" ", 1) if (" " in text and rng.random() < 0.5) else [text]
        line_h = min(h / len(lines) * 0.8, w * 0.35)
        top = cy - 0.5 * line_h * len(lines) * 1.15
        for i, line in enumerate(lines):
            font, bb = _fit_text(line, font_name, w * 0.95, line_h)
            tx = cx - 0.5 * (bb[2] + bb[0])
            draw.text((tx, top + i * line_h * 1.15 - bb[1]), line, font=font, fill=ink)
        attrs["text"] = text
    elif kind == "number":
        num = str(int(rng.integers(0, 100)))
        font, bb = _fit_text(num, font_name, w * 0.6, min(h * 0.8, w * 0.7))
        draw.text((cx - 0.5 * (bb[2] + bb[0]), cy - 0.5 * (bb[3] + bb[1])), num, font=font,
                  fill=ink, stroke_width=max(1, size // 160),
                  stroke_fill=tuple(int(c * 255) for c in fabric.accent))
        attrs["text"] = num
    else:
        r = 0.45 * min(w, h)
        shape = str(rng.choice(["circle", "triangle", "diamond", "star"]))
        if kind == "badge":
            draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=ink, width=max(2, int(r / 8)))
            font, bb = _fit_text(text[:10], font_name, 1.4 * r, 0.45 * r)
            draw.text((cx - 0.5 * (bb[2] + bb[0]), cy - 0.5 * (bb[3] + bb[1])), text[:10],
                      font=font, fill=ink)
            attrs["text"] = text[:10]
        else:
            k = {"circle": 40, "triangle": 3, "diamond": 4, "star": 10}[shape]
            th = np.linspace(0, 2 * np.pi, k, endpoint=False) - np.pi / 2
            rad = np.where(np.arange(k) % 2 == 1, 0.45 * r, r) if shape == "star" else r
            pts = np.stack([cx + rad * np.cos(th), cy - 0.15 * r + rad * np.sin(th)], 1)
            draw.polygon([tuple(p) for p in pts], fill=ink)
            if h > 3 * r * 0.8 or rng.random() < 0.6:
                word = text.split(" ")[0]
                font, bb = _fit_text(word, font_name, 2.2 * r, 0.5 * r)
                draw.text((cx - 0.5 * (bb[2] + bb[0]), cy + 0.95 * r - bb[1]), word, font=font,
                          fill=ink)
                attrs["text"] = word
        attrs["shape"] = shape
    return attrs
