"""`GarmentSample` and `generate`: one garment, its flat-lay and its wild photo, from a seed.

`generate(seed)` is pure: the same seed (and arguments) gives byte-identical arrays on any
machine. Every random choice comes from `numpy.random.default_rng([seed, stream])`, with one
stream per concern (shape, fabric, flat details, wild photo), so changing how photos are made
does not change which garments exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from structure_bank.schema import CATEGORIES, landmark_names

from .categories import FAMILIES, sample_shape
from .render_flat import render_flat
from .render_wild import SCENES, render_wild
from .textures import sample_fabric

GENERATOR_VERSION = "1.0"

# Seed ranges [start, stop): no garment instance is shared between splits. The held-out range
# draws every garment from its category's held-out shape family (see HELDOUT).
SPLITS: dict[str, tuple[int, int]] = {
    "train": (0, 1_000_000),
    "val": (1_000_000, 1_100_000),
    "test": (1_100_000, 1_200_000),
    "heldout": (1_200_000, 1_300_000),
}

_STREAMS = {"choice": 0, "shape": 1, "fabric": 2, "flat": 3, "wild": 4}


def split_of(seed: int) -> str:
    """The split a seed belongs to ("train", "val", "test", "heldout"), or "unassigned"."""
    for name, (start, stop) in SPLITS.items():
        if start <= seed < stop:
            return name
    return "unassigned"


def _rng(seed: int, stream: str) -> np.random.Generator:
    return np.random.default_rng([seed, _STREAMS[stream]])


@dataclass(frozen=True)
class GarmentSample:
    """One garment of the world with its ground truth. S is the canvas size in pixels.

    flat_image       (S, S, 3) uint8  sRGB flat-lay: front view, centred, white background
    flat_mask        (S, S)    bool   garment silhouette on the flat-lay canvas
    flat_landmarks   (N, 2)    float32 (x, y) in the flat-lay unit square, y down; all visible
    wild_image       (S, S, 3) uint8  sRGB in-the-wild photo
    wild_mask        (S, S)    bool   visible garment pixels (occluders removed)
    wild_occluder_mask (S, S)  bool   pixels covered by hands, hanger or objects
    wild_landmarks   (N, 2)    float32 (x, y) in the wild image's unit square, y down; may lie
                                      outside [0, 1] when out of frame
    wild_visibility  (N,)      uint8  1 visible, 0 occluded, self-occluded or out of frame

    N = `num_landmarks(category)`; row i is `landmark_names(category)[i]` in both frames, so
    the pairs (wild_landmarks[i], flat_landmarks[i]) are correspondences for a warp.
    `attributes` is a JSON-ready dict: shape parameters, fabric, print, scene, camera, ...
    `wild_jpeg` is the JPEG file the photo was compressed to; it decodes to `wild_image`.
    `wild_flat_coords` (S, S, 2) float32, where `generate(..., coords=True)` asked for it: the
    true correspondence, the flat-lay unit-square point each photo pixel shows (NaN off the
    garment's layers; see `WildRender.flat_coords`).
    """

    seed: int
    category: str
    family: str
    difficulty: float
    attributes: dict
    flat_image: np.ndarray
    flat_mask: np.ndarray
    flat_landmarks: np.ndarray
    wild_image: np.ndarray
    wild_mask: np.ndarray
    wild_occluder_mask: np.ndarray
    wild_landmarks: np.ndarray
    wild_visibility: np.ndarray
    wild_jpeg: bytes = field(default=b"", repr=False)
    wild_flat_coords: np.ndarray | None = field(default=None, repr=False)

    @property
    def size(self) -> int:
        return int(self.flat_image.shape[0])

    @property
    def landmark_names(self) -> tuple[str, ...]:
        return landmark_names(self.category)


def generate(seed: int, *, size: int = 256, category: str | None = None,
             family: str | None = None, difficulty: float | None = None,
             scene: str | None = None, coords: bool = False) -> GarmentSample:
    """Generate the garment of `seed`.

    category: one of CATEGORIES (default: drawn from the seed). family: "standard" or
    "heldout" (default: "heldout" for seeds in SPLITS["heldout"], else "standard").
    difficulty: 0 (clean, upright, unoccluded) .. 1 (hard) for the wild photo (default: drawn
    uniformly from the seed). scene: "surface", "hanger" or "worn" (default: drawn). coords:
    also the photo's true correspondence to the flat-lay (`wild_flat_coords`).
    """
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not 16 <= size <= 4096:
        raise ValueError(f"size must be in [16, 4096] pixels, got {size}")
    seed = int(seed)
    pick = _rng(seed, "choice")
    drawn_category = str(CATEGORIES[int(pick.integers(len(CATEGORIES)))])
    drawn_difficulty = float(pick.random())
    category = category or drawn_category
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {', '.join(CATEGORIES)}")
    family = family or ("heldout" if split_of(seed) == "heldout" else "standard")
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")
    difficulty = drawn_difficulty if difficulty is None else float(difficulty)
    if not 0.0 <= difficulty <= 1.0:
        raise ValueError(f"difficulty must be in [0, 1], got {difficulty}")
    if scene is not None and scene not in SCENES:
        raise ValueError(f"unknown scene {scene!r}; expected one of {', '.join(SCENES)}")

    shape = sample_shape(category, _rng(seed, "shape"), family)
    fabric = sample_fabric(category, _rng(seed, "fabric"), size)
    flat = render_flat(shape, fabric, size, _rng(seed, "flat"))
    wild = render_wild(shape, flat, size, _rng(seed, "wild"), difficulty, scene, coords)
    attributes = {"shape": shape.attributes, "fabric": fabric.attributes, **flat.attributes,
                  "wild": wild.attributes}
    return GarmentSample(
        seed=seed,
        category=category,
        family=family,
        difficulty=round(difficulty, 4),
        attributes=attributes,
        flat_image=flat.image,
        flat_mask=flat.mask,
        flat_landmarks=shape.landmarks.astype(np.float32),
        wild_image=wild.image,
        wild_mask=wild.mask,
        wild_occluder_mask=wild.occluder_mask,
        wild_landmarks=wild.landmarks,
        wild_visibility=wild.visibility,
        wild_jpeg=wild.jpeg,
        wild_flat_coords=wild.flat_coords,
    )
