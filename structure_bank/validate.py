"""Is this a garment structure? Checks for structures that come from people (the admin API,
hand-edited landmarks): the category's landmark count, points inside the canvas, and an
outline that does not cross itself. Errors name the bad point."""

from __future__ import annotations

import numpy as np

from structure_bank.schema import CATEGORIES, contour_count, num_landmarks


class InvalidStructure(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _segments_cross(p1: np.ndarray, p2: np.ndarray, q1: np.ndarray, q2: np.ndarray) -> bool:
    def orient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        return float((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    d1, d2 = orient(q1, q2, p1), orient(q1, q2, p2)
    d3, d4 = orient(p1, p2, q1), orient(p1, p2, q2)
    return d1 * d2 < 0 and d3 * d4 < 0  # proper crossings only; touching is allowed


def check_structure(category: str, landmarks: object) -> np.ndarray:
    """Validate and return landmarks as (L, 2) float32 in the canonical unit square.

    Raises InvalidStructure with `field` set to `category` or `landmarks[i]`.
    """
    if category not in CATEGORIES:
        raise InvalidStructure("category", f"unknown category {category!r}; "
                               f"expected one of {', '.join(CATEGORIES)}")
    try:
        lm = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise InvalidStructure("landmarks", "landmarks must be a list of [x, y] pairs") from None
    expected = num_landmarks(category)
    if lm.ndim != 2 or lm.shape[1] != 2:
        raise InvalidStructure("landmarks", "landmarks must be a list of [x, y] pairs")
    if len(lm) != expected:
        raise InvalidStructure(
            "landmarks", f"a {category} has {expected} landmarks, got {len(lm)}")
    for i, (x, y) in enumerate(lm):
        if not (np.isfinite(x) and np.isfinite(y) and 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise InvalidStructure(
                f"landmarks[{i}]", f"landmark {i} ({x}, {y}) is outside the canvas [0, 1]²")
    outline = lm[: contour_count(category)]
    n = len(outline)
    for i in range(n):
        for j in range(i + 2, n):
            if i == 0 and j == n - 1:
                continue  # neighbours through the closing edge
            if _segments_cross(outline[i], outline[(i + 1) % n], outline[j], outline[(j + 1) % n]):
                raise InvalidStructure(
                    f"landmarks[{j}]",
                    f"the outline crosses itself: edge {i}–{i + 1} meets edge {j}–{(j + 1) % n}",
                )
    return lm.astype(np.float32)


def outline_silhouette(category: str, landmarks: np.ndarray, size: int) -> np.ndarray:
    """(size, size) bool: the polygon of the category's outline landmarks, filled."""
    from PIL import Image, ImageDraw

    outline = landmarks[: contour_count(category)] * size
    img = Image.new("L", (size, size), 0)
    ImageDraw.Draw(img).polygon([tuple(p) for p in outline.tolist()], fill=255)
    return np.asarray(img) > 127
