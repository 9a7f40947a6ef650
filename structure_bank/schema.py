"""The garment categories and their landmark schemas: what a structure is made of.

Landmarks follow the DeepFashion2 idea: named points ordered along the garment's outer contour
(counter-clockwise on screen, starting at the top centre), followed by a few interior points
(the front neckline) that are not on the contour. "l" and "r" are image sides: the wearer's
right sleeve is `*_l`. Coordinates live in the canonical frame: the unit square of the
flat-lay canvas, x to the right and y down.

The bank's validator, the garment world (models.garments, which re-exports these names) and
the models all read the schemas from here; this module needs numpy only.
"""

from __future__ import annotations

import numpy as np

CATEGORIES: tuple[str, ...] = (
    "tshirt",
    "long_sleeve_top",
    "tank_top",
    "shirt",
    "hoodie",
    "sweater",
    "jacket",
    "dress",
    "skirt",
    "trousers",
    "jeans",
    "shorts",
)

# One side of a sleeved garment's contour, neck to armpit (each name gets `_l` or `_r`).
SLEEVE_SIDE = ("neck", "shoulder", "sleeve_top", "cuff_top", "cuff_bottom", "sleeve_under",
               "armpit")


def _sided(names: list[str]) -> list[str]:
    """Left names top to bottom, then right names bottom to top: the contour order."""
    return [f"{n}_l" for n in names] + [f"{n}_r" for n in reversed(names)]


def _schema(category: str) -> tuple[tuple[str, ...], int]:
    """(names, number of contour points); interior points follow the contour ones."""
    if category in ("tshirt", "long_sleeve_top", "sweater", "jacket"):
        left = [*SLEEVE_SIDE, "waist", "hem"]
        contour = ["neck_back", *_sided(left)]
        contour.insert(len(left) + 1, "hem_centre")
        interior = ["neckline_l", "neck_front", "neckline_r"]
    elif category == "shirt":
        left = [*SLEEVE_SIDE, "waist", "hem"]
        contour = ["collar_back", *_sided(left)]
        contour.insert(len(left) + 1, "hem_centre")
        interior = ["collar_tip_l", "collar_centre", "collar_tip_r"]
    elif category == "hoodie":
        left = ["hood", *SLEEVE_SIDE, "waist", "hem"]
        contour = ["hood_top", *_sided(left)]
        contour.insert(len(left) + 1, "hem_centre")
        interior = ["neckline_l", "neck_front", "neckline_r"]
    elif category == "tank_top":
        left = ["neck", "shoulder", "armhole", "armpit", "waist", "hem"]
        contour = ["neck_back", *_sided(left)]
        contour.insert(len(left) + 1, "hem_centre")
        interior = ["neckline_l", "neck_front", "neckline_r"]
    elif category == "dress":
        left = [*SLEEVE_SIDE, "waist", "hip", "hem"]
        contour = ["neck_back", *_sided(left)]
        contour.insert(len(left) + 1, "hem_centre")
        interior = ["neckline_l", "neck_front", "neckline_r"]
    elif category == "skirt":
        left = ["waist", "hip", "hem", "hem_mid"]
        contour = ["waist_centre", *_sided(left)]
        contour.insert(len(left) + 1, "hem_centre")
        interior = []
    elif category in ("trousers", "jeans"):
        left = ["waist", "hip", "knee_outer", "hem_outer", "hem_inner", "knee_inner"]
        contour = ["waist_centre", *_sided(left)]
        contour.insert(len(left) + 1, "crotch")
        interior = []
    elif category == "shorts":
        left = ["waist", "hip", "hem_outer", "hem_inner"]
        contour = ["waist_centre", *_sided(left)]
        contour.insert(len(left) + 1, "crotch")
        interior = []
    else:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    return tuple(contour + interior), len(contour)


_SCHEMAS = {c: _schema(c) for c in CATEGORIES}


def landmark_names(category: str) -> tuple[str, ...]:
    """Names of the category's landmarks, in storage order (contour first, then interior)."""
    if category not in _SCHEMAS:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    return _SCHEMAS[category][0]


def num_landmarks(category: str) -> int:
    return len(landmark_names(category))


def contour_count(category: str) -> int:
    """How many of the leading landmarks lie on the outer contour, in contour order."""
    landmark_names(category)
    return _SCHEMAS[category][1]


def flip_permutation(category: str) -> np.ndarray:
    """Index array `perm` such that mirroring an image maps landmark i to landmark perm[i]."""
    names = landmark_names(category)
    index = {n: i for i, n in enumerate(names)}
    swap = {"_l": "_r", "_r": "_l"}
    perm = [index.get(n[:-2] + swap[n[-2:]], i) if n[-2:] in swap else i for i, n in
            enumerate(names)]
    return np.asarray(perm, dtype=np.int64)
