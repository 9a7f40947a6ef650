"""How stage 4 fuses the structures that fit the photo, weighed on the validation split.

    python bench/tune_fusion.py [--n 200] [--size 512] [--shape-ks 0,8,16,32,64,128,256]

Stages 1–3 and the category decision run once per photo as the service runs them
(`flatten`'s aligner: the parser, the photo tower on its crop, the category posterior and the
decided category's landmark fit over its CANDIDATES structures). Then each variant fuses the
structure: `shape_k` 0 is SLLE's own mix of the K best-fitting structures' landmarks (before);
`shape_k` n is the plain mean of the n best-fitting ones' landmarks (`models.slle.SHAPE_K`).
Scored in the canonical frame against the garment world's true flat-lay, as `flatlay bench
retrieval` scores structures: silhouette IoU (overall, category right, category wrong) and
landmark NME (category right). Prints a table and writes bench/results/fusion-val.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.eval.retrieval import iou, landmark_nme  # noqa: E402
from models.garments import SPLITS, generate  # noqa: E402
from models.pipeline import get_pipeline  # noqa: E402
from models.slle import SHAPE_K  # noqa: E402
from models.train.pairs import flat_silhouette  # noqa: E402

RESULTS = REPO / "bench" / "results"


def decided(aligner, seed: int, size: int) -> dict:  # noqa: ANN001 (flatten's aligner)
    """One validation photo through stages 1–3 and the category decision, with its truth."""
    s = generate(seed, size=size)
    parsed = aligner.parser.parse(s.wild_image, with_head=True)
    query, _ = aligner.embed(s.wild_image, parsed.mask > 0.5)
    d = aligner.decide(parsed, aligner.bank, query)
    return {"category": d.category, "right": d.category == s.category, "query": query,
            "parsed": d.parsed, "fit": d.fits.get(d.category), "silhouette": flat_silhouette(
                s.flat_mask), "landmarks": s.flat_landmarks}


def score(aligner, photos: list[dict], shape_k: int) -> dict:  # noqa: ANN001
    ious: dict[bool, list[float]] = {True: [], False: []}
    nmes = []
    aligner.SHAPE_K = shape_k  # this instance only
    for p in photos:
        fused = aligner.fuse(aligner.bank, p["query"], p["parsed"], p["category"],
                             fit=p["fit"])
        ious[p["right"]].append(iou(fused.silhouette, p["silhouette"]))
        if p["right"]:
            nmes.append(landmark_nme(fused.landmarks, p["landmarks"]))
    every = ious[True] + ious[False]
    return {"n": len(every), "silhouette_iou": round(float(np.mean(every)), 4),
            "iou_right": round(float(np.mean(ious[True])), 4) if ious[True] else None,
            "iou_wrong": round(float(np.mean(ious[False])), 4) if ious[False] else None,
            "landmark_nme": round(float(np.mean(nmes)), 5) if nmes else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=512, help="photo side, px")
    ap.add_argument("--shape-ks", default="0,8,16,32,64,128,256",
                    help="landmark means over this many best-fitting structures (0: SLLE's mix)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    try:
        shape_ks = [int(k) for k in args.shape_ks.split(",") if k.strip()]
    except ValueError:
        ap.error("--shape-ks takes whole numbers separated by commas, e.g. 0,8,64")
    if args.n < 1 or not shape_ks or min(shape_ks) < 0:
        ap.error("--n must be ≥ 1 and --shape-ks whole numbers ≥ 0")
    aligner = get_pipeline("flatten").aligner  # stages 1–4 as the service runs them
    aligner.load()
    start = SPLITS["val"][0]
    photos = [decided(aligner, start + i, args.size) for i in tqdm(range(args.n), desc="photos")]
    rows = []
    for k in tqdm(shape_ks, desc="variants"):
        name = "SLLE's mix of the K (before)" if k == 0 else f"mean of the {k} best-fitting"
        rows.append({"variant": name + (" (shipped)" if k == SHAPE_K else ""), "shape_k": k,
                     **score(aligner, photos, k)})
    accuracy = float(np.mean([p["right"] for p in photos]))
    intro = ["# Stage 4's landmarks: SLLE's mix or the mean of the best-fitting structures", "",
             f"Validation seeds {start}–{start + args.n - 1} at {args.size}², category decided "
             f"as the service decides it (accuracy {accuracy:.3f}); K = {aligner.K} silhouettes "
             "warped onto the landmarks; canonical frame, truth from the garment world. "
             f"`python bench/tune_fusion.py --n {args.n} --size {args.size} --shape-ks "
             f"{args.shape_ks}`.", ""]
    print(write_variants(args.out, "fusion-val", intro, rows,
                         [("n", "n", "d"), ("silhouette_iou", "IoU", ".4f"),
                          ("iou_right", "IoU cat right", ".4f"),
                          ("iou_wrong", "IoU cat wrong", ".4f"),
                          ("landmark_nme", "NME", ".5f")]))


if __name__ == "__main__":
    main()
