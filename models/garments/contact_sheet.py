"""A contact sheet for people: wild photo | flat-lay pairs with their landmarks drawn."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from structure_bank.schema import CATEGORIES, contour_count

from .sample import GarmentSample, generate
from .textures import _font

_LABEL_H = 18


def _colours(n: int) -> list[tuple[int, int, int]]:
    return [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / max(n, 1), 0.9, 1.0))
            for i in range(n)]


def _draw_landmarks(img: Image.Image, pts: np.ndarray, vis: np.ndarray, n_contour: int) -> None:
    draw = ImageDraw.Draw(img)
    s = img.width
    xy = pts * s
    outline = [tuple(p) for p in xy[:n_contour]]
    draw.line([*outline, outline[0]], fill=(255, 255, 255), width=1)
    r = max(2.0, s / 110)
    for (x, y), v, c in zip(xy, vis, _colours(len(pts)), strict=True):
        box = (x - r, y - r, x + r, y + r)
        if v:
            draw.ellipse(box, fill=c, outline=(0, 0, 0))
        else:
            draw.ellipse(box, outline=c, width=1)


def pair_image(sample: GarmentSample) -> Image.Image:
    """One cell: wild | flat-lay with landmarks (filled = visible, ring = occluded), labelled."""
    s = sample.size
    cell = Image.new("RGB", (2 * s, s + _LABEL_H), (250, 250, 250))
    wild = Image.fromarray(sample.wild_image)
    _draw_landmarks(wild, sample.wild_landmarks, sample.wild_visibility,
                    contour_count(sample.category))
    flat = Image.fromarray(sample.flat_image)
    _draw_landmarks(flat, sample.flat_landmarks, np.ones(len(sample.flat_landmarks)),
                    contour_count(sample.category))
    cell.paste(wild, (0, 0))
    cell.paste(flat, (s, 0))
    wa = sample.attributes["wild"]
    label = (f"#{sample.seed} {sample.category} · {sample.attributes['fabric']['kind']} · "
             f"{wa['scene']} · d={sample.difficulty:.2f}"
             + (" · heldout" if sample.family == "heldout" else ""))
    ImageDraw.Draw(cell).text((4, s + 3), label, fill=(20, 20, 20),
                              font=_font("DejaVuSans.ttf", 11))
    return cell


def contact_sheet(samples: Sequence[GarmentSample], columns: int = 4) -> Image.Image:
    """Grid of `pair_image` cells, `columns` pairs per row."""
    cells = [pair_image(s) for s in samples]
    w, h = cells[0].size
    rows = (len(cells) + columns - 1) // columns
    pad = 6
    sheet = Image.new("RGB", (columns * (w + pad) + pad, rows * (h + pad) + pad), (255, 255, 255))
    for i, c in enumerate(cells):
        sheet.paste(c, (pad + (i % columns) * (w + pad), pad + (i // columns) * (h + pad)))
    return sheet


def sample_for_sheet(n: int, seed: int, size: int) -> list[GarmentSample]:
    """n samples cycling through every category, difficulty spread from 0 to 1."""
    diffs = np.linspace(0.0, 1.0, n) if n > 1 else [0.5]
    return [generate(seed + i, size=size, category=CATEGORIES[i % len(CATEGORIES)],
                     difficulty=float(diffs[(i * 7) % n])) for i in range(n)]


def write_contact_sheet(path: str | Path, n: int = 24, seed: int = 0, size: int = 256,
                        columns: int = 4) -> Path:
    path = Path(path)
    contact_sheet(sample_for_sheet(n, seed, size), columns).save(path, optimize=True)
    return path
