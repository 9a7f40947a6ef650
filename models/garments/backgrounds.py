"""Real photographs as backgrounds and surfaces, read from files that ship inside packages.

Sources: scikit-image's bundled `skimage/data` photos and textures, scikit-learn's sample
images, matplotlib's sample data. Nothing is downloaded. Each photo is decoded once per
process. Grey texture photos (brick, grass, gravel) are tinted to plausible surface colours.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

# name: (package, path inside the package, tint for grey photos or None, use)
PHOTOS: dict[str, tuple[str, str, tuple[float, float, float] | None, str]] = {
    "astronaut": ("skimage", "data/astronaut.png", None, "scene"),
    "chelsea": ("skimage", "data/chelsea.png", None, "scene"),
    "coffee": ("skimage", "data/coffee.png", None, "scene"),
    "rocket": ("skimage", "data/rocket.jpg", None, "scene"),
    "motorcycle": ("skimage", "data/motorcycle_left.png", None, "scene"),
    "camera": ("skimage", "data/camera.png", (1.0, 0.97, 0.92), "scene"),
    "china": ("sklearn", "datasets/images/china.jpg", None, "scene"),
    "flower": ("sklearn", "datasets/images/flower.jpg", None, "scene"),
    "grace_hopper": ("matplotlib", "mpl-data/sample_data/grace_hopper.jpg", None, "scene"),
    "brick": ("skimage", "data/brick.png", (1.0, 0.78, 0.66), "surface"),
    "grass": ("skimage", "data/grass.png", (0.72, 0.95, 0.55), "surface"),
    "gravel": ("skimage", "data/gravel.png", (1.0, 0.95, 0.86), "surface"),
    "concrete": ("skimage", "data/gravel.png", (0.93, 0.93, 0.95), "surface"),
    "stone_wall": ("skimage", "data/brick.png", (0.92, 0.9, 0.88), "surface"),
}
SCENE_PHOTOS = tuple(n for n, v in PHOTOS.items() if v[3] == "scene")
SURFACE_PHOTOS = tuple(n for n, v in PHOTOS.items() if v[3] == "surface")


def photo_path(name: str) -> Path:
    package, rel, _, _ = PHOTOS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"background photo {name!r} needs the {package!r} package")
    return Path(spec.origin).parent / rel


@functools.cache
def load_photo(name: str) -> Image.Image:
    """The decoded photo as an RGB PIL image (tinted when the source is grey). Cached."""
    _, _, tint, _ = PHOTOS[name]
    with Image.open(photo_path(name)) as im:
        im.load()
        if tint is None:
            return im.convert("RGB")
        grey = np.asarray(im.convert("L"), dtype=np.float32)
    # Lift contrast-heavy grey textures towards a mid tone before tinting.
    grey = 70 + 0.7 * grey
    rgb = np.clip(grey[..., None] * np.asarray(tint, dtype=np.float32), 0, 255)
    return Image.fromarray(rgb.astype(np.uint8))


def preload() -> None:
    """Decode every photo now (before forking workers, so they share the pages)."""
    for name in PHOTOS:
        load_photo(name)
        _half_photo(name)


@functools.cache
def _half_photo(name: str) -> Image.Image:
    return load_photo(name).reduce(2)


def crop_background(name: str, box: tuple[float, float, float, float], flip: bool,
                    size: int) -> np.ndarray:
    """Crop `box` (x0, y0, x1, y1 in source pixels) of photo `name`, resize to (size, size).

    Returns (size, size, 3) float32 RGB in [0, 1]."""
    if box[2] - box[0] > 2.5 * size:  # large crops read from the half-size copy: faster
        img = _half_photo(name).resize((size, size), Image.Resampling.BILINEAR,
                                       box=tuple(c / 2 for c in box))
    else:
        img = load_photo(name).resize((size, size), Image.Resampling.BILINEAR, box=box)
    if flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(img, dtype=np.float32) * (1.0 / 255)


def sample_background(rng: np.random.Generator, size: int, kind: str) -> tuple[np.ndarray, dict]:
    """Draw a background crop: `kind` "scene" (a photo behind a worn or hung garment) or
    "surface" (something a garment lies on). Returns ((S, S, 3) float32 in [0, 1], attrs)."""
    pool = SCENE_PHOTOS if kind == "scene" else SURFACE_PHOTOS + SCENE_PHOTOS[:3]
    name = str(rng.choice(pool))
    w, h = load_photo(name).size
    side = float(rng.uniform(0.35, 1.0)) * min(w, h)
    x0 = float(rng.uniform(0, w - side))
    y0 = float(rng.uniform(0, h - side))
    box = (round(x0, 2), round(y0, 2), round(x0 + side, 2), round(y0 + side, 2))
    flip = bool(rng.random() < 0.5)
    return crop_background(name, box, flip, size), {"photo": name, "box": list(box),
                                                    "flip": flip}
