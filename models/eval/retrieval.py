"""The retrieval benchmark (`flatlay bench retrieval`): StructureNet + bank + SLLE against
the garment world's ground truth.

Photos are embedded as the pipeline embeds them: cropped to the shipped parser's garment
mask (`photo_view`, as stage 2 does); that view is the headline. Two more views are reported
beside it: the whole photo (with the parsed mask, for a model that sees one), and the crop to
the garment's true box and mask (what a perfect parser would give).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.bank_builder import BANK_SEED_START, world_structures
from models.garments import CATEGORIES, SPLITS, generate
from models.slle import choose_category, fuse_structures, nearest_structure
from models.structurenet import (
    DEFAULT_WEIGHTS,
    StructureNet,
    embed_photos,
    normalise_photos,
    photo_tensor_uint8,
    photo_view,
)
from models.train.pairs import RENDER_SIZE, flat_silhouette
from structure_bank import StructureBank
from structure_bank.builder import default_bank_path

ZERO_SHOT_CATEGORY = "skirt"
# The views reported beside the headline (the parser's crop), by the result key they go to.
EXTRA_VIEWS = {"whole": "whole_photo", "box": "with_garment_box"}
CANONICAL_DIAGONAL = float(np.sqrt(2.0))  # of the unit-square canvas


@dataclass
class EvalSample:
    seed: int
    category: str
    landmarks: np.ndarray  # (L, 2) canonical, ground truth flat-lay
    silhouette: np.ndarray  # (128, 128) bool
    photo_whole: np.ndarray  # (P, P, C) uint8
    photo_box: np.ndarray  # (P, P, C) uint8
    photo_parsed: np.ndarray  # (P, P, C) uint8: the view the pipeline embeds


def render_eval(seeds: list[int], model: StructureNet, category: str | None = None
                ) -> list[EvalSample]:
    from models.pipelines.stages import load_parser, parsed_mask

    parser = load_parser()
    size, with_mask = model.photo_size, model.photo_channels == 4
    out = []
    for seed in tqdm(seeds, desc="render and parse test photos", leave=False):
        s = generate(int(seed), size=RENDER_SIZE, category=category)
        mask = parsed_mask(parser, s.wild_image)  # the pipeline's own crop
        whole = photo_tensor_uint8(s.wild_image, size, mask, with_mask=with_mask, crop=False)
        out.append(EvalSample(
            seed=int(seed), category=s.category, landmarks=s.flat_landmarks,
            silhouette=flat_silhouette(s.flat_mask), photo_whole=whole,
            photo_box=photo_tensor_uint8(s.wild_image, size, s.wild_mask, with_mask=with_mask),
            photo_parsed=photo_view(model, s.wild_image, mask),
        ))
    return out


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def landmark_nme(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean landmark distance over the canvas diagonal (both in the canonical unit square)."""
    return float(np.linalg.norm(pred - truth, axis=1).mean() / CANONICAL_DIAGONAL)


def embed_view(model: StructureNet, samples: list[EvalSample], view: str) -> np.ndarray:
    """The samples' photos in one view (`parsed`, `whole`, `box`) through the photo tower."""
    photos = np.stack([getattr(s, f"photo_{view}") for s in samples])
    with torch.inference_mode():
        return embed_photos(model, normalise_photos(photos))


def _without_category(bank: StructureBank, category: str) -> StructureBank:
    return bank.subset(np.flatnonzero(bank.categories != category))


def search_ms(bank: StructureBank, emb: np.ndarray, k: int) -> list[float]:
    """Milliseconds of each query's top-`k` search in `bank`."""
    timings = []
    for q in emb:
        t = time.perf_counter()
        bank.search(q, k)
        timings.append((time.perf_counter() - t) * 1000)
    return timings


def structure_quality(bank: StructureBank, samples: list[EvalSample], emb: np.ndarray, k: int
                      ) -> dict:
    """Category by the vote, and SLLE's and top-1's silhouette IoU and landmark NME (category
    right) of the structures `bank` gives the queries `emb`."""
    cat_ok, nme_slle, nme_top1, iou_slle, iou_top1 = [], [], [], [], []
    for s, q in zip(samples, emb, strict=True):
        cat = choose_category(bank, q)
        cat_ok.append(cat == s.category)
        fused = fuse_structures(bank, q, k=k, category=cat)
        top1 = nearest_structure(bank, q, category=cat)
        iou_slle.append(iou(fused.silhouette, s.silhouette))
        iou_top1.append(iou(top1.silhouette, s.silhouette))
        if cat == s.category:
            nme_slle.append(landmark_nme(fused.landmarks, s.landmarks))
            nme_top1.append(landmark_nme(top1.landmarks, s.landmarks))
    return {
        "category_accuracy": round(float(np.mean(cat_ok)), 4),
        "landmark_nme_slle": round(float(np.mean(nme_slle)), 5) if nme_slle else None,
        "landmark_nme_top1": round(float(np.mean(nme_top1)), 5) if nme_top1 else None,
        "landmark_nme_n": len(nme_slle),
        "silhouette_iou_slle": round(float(np.mean(iou_slle)), 4),
        "silhouette_iou_top1": round(float(np.mean(iou_top1)), 4),
    }


def _recall(with_targets: StructureBank, samples: list[EvalSample], emb: np.ndarray) -> dict:
    """How often a photo finds its own structure (`test-<seed>`) among the bank's entries."""
    r1, r5 = [], []
    for s, q in zip(samples, emb, strict=True):
        ids = [h.id for h in with_targets.search(q, 5)]
        own = f"test-{s.seed}"
        r1.append(ids[:1] == [own])
        r5.append(own in ids)
    return {"recall_at_1": round(float(np.mean(r1)), 4), "recall_at_5": round(float(np.mean(r5)),
                                                                            4)}


@torch.no_grad()  # not set_grad_enabled(False): that leaked into whatever ran next
def benchmark_retrieval(
    split: str = "test",
    n: int = 500,
    k: int = 8,
    weights: Path | None = None,
    bank_path: Path | None = None,
    zero_shot_n: int = 100,
    zero_shot_bank_n: int = 500,
    workers: int = 2,
) -> dict:
    weights = Path(weights or DEFAULT_WEIGHTS)
    model = StructureNet.from_pretrained(weights)
    bank = StructureBank.load(bank_path or default_bank_path())
    start = SPLITS[split][0]
    seeds = list(range(start, start + n))
    samples = render_eval(seeds, model)
    with_targets = bank.subset(np.arange(len(bank)))
    with_targets.add(world_structures(seeds, model, workers=workers, id_prefix="test"))

    result: dict = {"split": split, "n": n, "k": k, "bank_size": len(bank),
                    "weights": weights.name}
    embeddings = {view: embed_view(model, samples, view) for view in ("parsed", "whole", "box")}
    for view, emb in embeddings.items():
        metrics = {**_recall(with_targets, samples, emb),
                   **structure_quality(bank, samples, emb, k)}
        if view == "parsed":
            result.update(metrics)
        else:
            result[EXTRA_VIEWS[view]] = metrics

    emb = embeddings["parsed"]
    timings = search_ms(bank, emb, k)
    result["search_ms_p50"] = round(float(np.percentile(timings, 50)), 4)
    result["search_ms_p99"] = round(float(np.percentile(timings, 99)), 4)
    fuse_ms = []
    for q in emb[:100]:
        t = time.perf_counter()
        fuse_structures(bank, q, k=k)
        fuse_ms.append((time.perf_counter() - t) * 1000)
    result["slle_ms_p50"] = round(float(np.percentile(fuse_ms, 50)), 3)
    result["per_category"] = _per_category(bank, samples, emb, k)
    result["zero_shot"] = zero_shot(model, bank, split, zero_shot_n, zero_shot_bank_n, k,
                                    workers)
    return result


def _per_category(bank: StructureBank, samples: list[EvalSample], emb: np.ndarray,
                  k: int) -> dict:
    out = {}
    for cat in CATEGORIES:
        idx = [i for i, s in enumerate(samples) if s.category == cat]
        if idx:
            out[cat] = {"n": len(idx),
                        **structure_quality(bank, [samples[i] for i in idx], emb[idx], k)}
    return out


def zero_shot(model: StructureNet, bank: StructureBank, split: str, n: int,
              bank_n: int, k: int, workers: int) -> dict:
    """A category StructureNet never saw and the bank lacks: silhouette IoU of its test
    photos before and after its structures are added to the bank (no retraining)."""
    cat = ZERO_SHOT_CATEGORY
    start = SPLITS[split][0] + 50_000  # apart from the main test seeds
    samples = render_eval(list(range(start, start + n)), model, category=cat)
    emb = embed_view(model, samples, "parsed")
    without = _without_category(bank, cat)
    before = structure_quality(without, samples, emb, k)
    added = world_structures(list(range(BANK_SEED_START + 200_000,
                                        BANK_SEED_START + 200_000 + bank_n)),
                             model, category=cat, workers=workers, id_prefix="added")
    without.add(added)
    after = structure_quality(without, samples, emb, k)
    return {
        "category": cat,
        "n": n,
        "structures_added": len(added),
        "silhouette_iou_before": before["silhouette_iou_slle"],
        "silhouette_iou_after": after["silhouette_iou_slle"],
        "category_accuracy_before": before["category_accuracy"],
        "category_accuracy_after": after["category_accuracy"],
        "landmark_nme_after": after["landmark_nme_slle"],
    }
