"""The garment world: procedural garments with ground-truth landmarks over real photos.

    from models.garments import generate
    s = generate(seed=7, size=256)      # GarmentSample: flat-lay + wild photo + landmarks

See docs/garment-world.md for categories, landmark schemas, splits and held-out families.
"""

from structure_bank.schema import (
    CATEGORIES,
    contour_count,
    flip_permutation,
    landmark_names,
    num_landmarks,
)

from .categories import CATEGORY_SCALE, FAMILIES, HELDOUT
from .sample import GENERATOR_VERSION, SPLITS, GarmentSample, generate, split_of

__all__ = [
    "CATEGORIES",
    "CATEGORY_SCALE",
    "FAMILIES",
    "GENERATOR_VERSION",
    "HELDOUT",
    "SPLITS",
    "GarmentSample",
    "contour_count",
    "flip_permutation",
    "generate",
    "landmark_names",
    "num_landmarks",
    "split_of",
]
