"""The parser benchmark (`flatlay bench parser`): the learned parser against the garment
world's ground truth and the classical mask, on photos at full size.

mask IoU is over the whole photo (visible garment pixels, `wild_mask`); landmark NME is the
mean distance of visible landmarks in the photo's unit square over its diagonal, read with
the true category's schema (so it measures localisation, not classification).
"""

from __future__ import annotations

import time

import numpy as np
from tqdm import tqdm

from models.garments import SPLITS, generate
from models.parser import PARSER_WEIGHTS, GarmentNotFound, GarmentParser, classical_garment_mask

DIAGONAL = float(np.sqrt(2.0))


def mask_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    return float((pred & truth).sum() / max(1, (pred | truth).sum()))


def benchmark_parser(split: str = "test", n: int = 200, size: int = 512,
                     weights: str | None = None) -> dict:
    parser = GarmentParser.from_pretrained(weights or PARSER_WEIGHTS)
    start = SPLITS[split][0]
    learned, classical, hits, errs, vis_ok, secs = [], [], [], [], [], []
    for seed in tqdm(range(start, start + n), desc=f"parse {split}"):
        s = generate(seed, size=size)
        t = time.perf_counter()
        parsed = parser.parse(s.wild_image)
        secs.append(time.perf_counter() - t)
        learned.append(mask_iou(parsed.mask > 0.5, s.wild_mask))
        try:
            classical.append(mask_iou(classical_garment_mask(s.wild_image) > 0.5, s.wild_mask))
        except GarmentNotFound:
            classical.append(0.0)
        hits.append(parsed.category == s.category)
        own = parsed if parsed.category == s.category else parser.parse(s.wild_image,
                                                                         s.category)
        inside = ((s.wild_landmarks >= 0) & (s.wild_landmarks < 1)).all(1)
        visible = s.wild_visibility.astype(bool) & inside
        d = np.linalg.norm(own.landmarks - s.wild_landmarks, axis=1) / DIAGONAL
        errs += d[visible].tolist()
        vis_ok += (own.visibility == visible).tolist()
    return {
        "split": split, "n": n, "photo_size": size,
        "mask_iou_learned": round(float(np.mean(learned)), 4),
        "mask_iou_classical": round(float(np.mean(classical)), 4),
        "learned_mask_better_share": round(float(np.mean(np.array(learned) >
                                                         np.array(classical))), 4),
        "category_accuracy": round(float(np.mean(hits)), 4),
        "landmark_nme_visible": round(float(np.mean(errs)), 4),
        "visibility_accuracy": round(float(np.mean(vis_ok)), 4),
        "parse_seconds_p50": round(float(np.median(secs)), 4),
    }
