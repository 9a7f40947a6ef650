"""Training pairs for the generator, made by the real stages 1–5 (`flatlay train` caches them
once): each garment-world seed's wild photo goes through the shipped parser, StructureNet,
SLLE and the warp exactly as in the service, and is paired with its true flat-lay. The
generator so learns to repair the upstream errors it will meet, never seeing the true
structure as input.

Shards of `SHARD` seeds are written as `.npz` under `<run>/pairs/<split>-…/`, a folder named
by the photo size, the resolution and the stages that made them (`stages_stamp`: pairs made
behind another parser, bank or refiner are another data set); a shard on disk is not made
again, so an interrupted cache resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from models.garments import CATEGORIES, SPLITS
from models.train.common import cached_shards, served_aligner, served_alignment, stages_stamp

SHARD = 250
FIELDS = ("target", "warp", "validity", "structure", "embedding", "crop", "cutout",
          "category", "true_category", "seed")


def make_pair(seed: int, photo_size: int, resolution: int, latent_size: int) -> dict | None:
    """One seed's pair (see FIELDS), or None where stages 1–5 fail on its photo."""
    from models.eval.quality import downsample_rgb
    from models.generator.conditioning import coarse_conditions

    s, photo, coarse = served_alignment(served_aligner(), seed, photo_size)
    if coarse is None:
        return None
    cond = coarse_conditions(coarse, photo, resolution, latent_size)
    alpha = np.asarray(Image.fromarray(s.flat_mask.astype(np.float32), "F").resize(
        (resolution, resolution), Image.Resampling.BOX))
    return {
        "target": np.dstack([downsample_rgb(s.flat_image, resolution),
                             (np.clip(alpha, 0, 1) * 255 + 0.5).astype(np.uint8)]),
        "warp": cond.warp, "validity": cond.validity,
        "structure": (cond.structure * 255 + 0.5).astype(np.uint8),
        "embedding": cond.embedding.astype(np.float16), "crop": cond.crop,
        "cutout": cond.cutout,
        "category": CATEGORIES.index(coarse.fused.category),
        "true_category": CATEGORIES.index(s.category), "seed": int(seed),
    }


def _job(args: tuple[int, int, int, int]) -> dict | None:
    return make_pair(*args)


def cache_pairs(run: Path, split: str, n: int, photo_size: int, resolution: int,
                latent_size: int, workers: int = 2) -> dict[str, np.ndarray]:
    """The first n seeds of `split` as pairs (cached under `pairs_folder`), all in memory."""
    start = SPLITS[split][0]
    jobs = [(start + i, photo_size, resolution, latent_size) for i in range(n)]
    return cached_shards(pairs_folder(run, split, photo_size, resolution), jobs, _job, FIELDS,
                         workers, f"pairs {split}", SHARD)


def pairs_folder(run: Path, split: str, photo_size: int, resolution: int) -> Path:
    """Where a split's pairs are cached: named by the set and the stages that make them (the
    served stages 1–5, the silhouette refiner included)."""
    return (Path(run) / "pairs"
            / f"{split}-{photo_size}-{resolution}-{stages_stamp(refined=True, registered=True)}")
