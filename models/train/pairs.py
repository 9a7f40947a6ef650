"""(wild photo, flat-lay structure) pairs from the garment world, cached as arrays.

Training StructureNet on the CPU is bounded by how fast pairs arrive, so they are rendered
once, in parallel, into one `.npz` per seed range, and training reads arrays.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.garments import CATEGORIES, generate
from models.train.common import render_map

# Rendering size of the garment world for training pairs and bank entries, and the size the
# photo crops are cached at (resized to a tower's input size when used).
RENDER_SIZE = 128
PAIR_PHOTO_SIZE = 96
SILHOUETTE_SIZE = 128


@dataclass
class PairArrays:
    """N pairs. photos: (N, P, P, C) uint8 photo views (C 4: the parsed mask last); maps:
    (N, 3, S, S) uint8 structure maps (×255); categories: (N,) int16 index into CATEGORIES;
    seeds: (N,) int64; landmarks: (N, Lmax, 2) float32 canonical, NaN-padded; silhouettes:
    (N, 128·128/8) uint8 packed flat-lay masks."""

    photos: np.ndarray
    maps: np.ndarray
    categories: np.ndarray
    seeds: np.ndarray
    landmarks: np.ndarray
    silhouettes: np.ndarray

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **self.__dict__)

    @classmethod
    def load(cls, path: Path) -> PairArrays:
        with np.load(path) as z:
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})

    def landmarks_of(self, i: int) -> np.ndarray:
        lm = self.landmarks[i]
        return lm[~np.isnan(lm[:, 0])]

    def silhouette_of(self, i: int) -> np.ndarray:
        n = SILHOUETTE_SIZE
        return np.unpackbits(self.silhouettes[i], count=n * n).reshape(n, n).astype(bool)


MAX_LANDMARKS = 64


def flat_silhouette(flat_mask: np.ndarray) -> np.ndarray:
    """A flat-lay mask at the bank's silhouette size, (SILHOUETTE_SIZE,)*2 bool."""
    if flat_mask.shape == (SILHOUETTE_SIZE, SILHOUETTE_SIZE):
        return flat_mask
    img = Image.fromarray(flat_mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((SILHOUETTE_SIZE, SILHOUETTE_SIZE),
                                 Image.Resampling.BILINEAR)) > 127


def _crop_mask(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray | None:
    """A garment mask as an imperfect parser would give it: a quarter of the time none (the
    whole photo), otherwise the true mask's box with random padding and shift."""
    if rng.random() < 0.25 or not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    pad = rng.uniform(0.0, 0.12) * max(h, w)
    dy, dx = rng.normal(0, 0.03, 2) * (h, w)
    y0 = int(np.clip(ys.min() - pad + dy, 0, h - 1))
    y1 = int(np.clip(ys.max() + pad + dy, y0 + 1, h))
    x0 = int(np.clip(xs.min() - pad + dx, 0, w - 1))
    x1 = int(np.clip(xs.max() + pad + dx, x0 + 1, w))
    box = np.zeros_like(mask)
    box[y0:y1, x0:x1] = True
    return box


# What the photo tower is trained on: "box", the photo cropped to a simulated parser box
# (`_crop_mask`, the shipped tiny weights); "parsed", the photo and the shipped parser's
# mask as the pipeline crops and embeds them (`photo_view`), the mask as a 4th channel.
PHOTO_VIEWS = ("box", "parsed")


@functools.cache
def _parser():  # noqa: ANN202 (torch is imported lazily)
    import torch

    from models.parser import PARSER_WEIGHTS, GarmentParser

    torch.set_num_threads(1)  # one per render process
    # Its own instance, not the pipeline's: the second look changes only the category
    # (ZOOM_DETAIL off), so the mask is the same without it, for a third less parsing.
    parser = GarmentParser.from_pretrained(PARSER_WEIGHTS)
    parser.zoom = parser.zoom and parser.zoom_detail
    return parser


def _one(args: tuple[int, int, int, str | None, str]) -> tuple:
    from models.pipelines.stages import parsed_mask
    from models.structurenet import photo_tensor_uint8, structure_map_u8

    seed, photo_size, map_size, category, view = args
    s = generate(seed, size=RENDER_SIZE, category=category)
    if view == "parsed":
        photo = photo_tensor_uint8(s.wild_image, photo_size, parsed_mask(_parser(), s.wild_image),
                                   with_mask=True)
    else:
        rng = np.random.default_rng([seed, 99])
        photo = photo_tensor_uint8(s.wild_image, photo_size, _crop_mask(s.wild_mask, rng))
    sil = flat_silhouette(s.flat_mask)
    smap = structure_map_u8(s.flat_landmarks, sil, map_size)
    lm = np.full((MAX_LANDMARKS, 2), np.nan, np.float32)
    lm[: len(s.flat_landmarks)] = s.flat_landmarks
    return (photo, smap, CATEGORIES.index(s.category), seed, lm, np.packbits(sil.ravel()))


def render_pairs(
    seeds: list[int],
    photo_size: int,
    map_size: int,
    workers: int = 2,
    category: str | None = None,
    desc: str = "pairs",
    view: str = "box",
) -> PairArrays:
    """Render the pairs of `seeds` (in order) with `workers` processes and a progress bar;
    `view` (PHOTO_VIEWS) says how the photo is cropped."""
    if view not in PHOTO_VIEWS:
        raise ValueError(f"view must be one of {PHOTO_VIEWS}, not {view!r}")
    jobs = [(int(s), photo_size, map_size, category, view) for s in seeds]
    rows = render_map(_one, jobs, workers, desc)
    cols = list(zip(*rows, strict=True))
    return PairArrays(
        photos=np.stack(cols[0]),
        maps=np.stack(cols[1]),
        categories=np.array(cols[2], np.int16),
        seeds=np.array(cols[3], np.int64),
        landmarks=np.stack(cols[4]),
        silhouettes=np.stack(cols[5]),
    )
