"""The category decision's evidence, weighed on the validation split (never on test).

    python bench/tune_category.py [--n 200] [--size 1024] [--votes 0,0.5,1] [--fits 0.5,1,2]

The category posterior is the parser's belief times the vote of the query's top global
hits to the power VOTE_WEIGHT, times the landmark residual of the likeliest categories to the
power −FIT_WEIGHT (`StructureAligner` in models/pipelines/stages.py); vote 0 and fit 0 is the
parser alone. Each vote weight (without the fit), then each fit weight (at the shipped vote),
runs `flatten` on the first n validation photos, scored with the quality benchmark's metrics:
category accuracy, silhouette IoU (overall, category right, category wrong) and landmark NME.
Prints a table and writes bench/results/category-val.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.eval.quality import _summary, load_truth, run_and_score  # noqa: E402
from models.garments import SPLITS  # noqa: E402
from models.pipeline import PipelineOptions, get_pipeline  # noqa: E402

RESULTS = REPO / "bench" / "results"


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--votes", default="0,0.5,1", help="vote weights, comma-separated")
    ap.add_argument("--fits", default="0.5,1,2", help="fit weights, comma-separated")
    args = ap.parse_args()
    if args.n < 1:
        ap.error("--n must be ≥ 1")
    try:
        votes, fits = ([float(w) for w in text.split(",") if w.strip()]
                       for text in (args.votes, args.fits))
    except ValueError:
        ap.error("--votes and --fits take numbers separated by commas, e.g. 0,0.5,1")
    run = get_pipeline("flatten")
    aligner = run.aligner  # its stages 1–4; the weights are set on this instance only
    shipped = aligner.VOTE_WEIGHT, aligner.FIT_WEIGHT
    variants = [(v, 0.0) for v in votes] + [(shipped[0], f) for f in fits if f]
    start = SPLITS["val"][0]
    truths = [load_truth(start + i, args.size) for i in tqdm(range(args.n), desc="photos")]
    rows = []
    try:
        for vote, fit in variants:
            aligner.VOTE_WEIGHT, aligner.FIT_WEIGHT = vote, fit
            name = f"vote {vote:g}, fit {fit:g}"
            scored = [run_and_score(run, t, PipelineOptions(output_size=args.size,
                                                             seed=t.seed))[0]
                      for t in tqdm(truths, desc=name)]
            summary = _summary(scored)  # the quality benchmark's own aggregates
            rows.append({
                "variant": name + (" (parser alone)" if vote == fit == 0 else "")
                + (" (shipped)" if (vote, fit) == shipped else ""),
                "n": summary["n_ok"],
                **{key: rounded(summary[of]) for key, of in (
                    ("category_accuracy", "category_accuracy"),
                    ("silhouette_iou", "silhouette_iou"),
                    ("iou_right", "silhouette_iou_category_right"),
                    ("iou_wrong", "silhouette_iou_category_wrong"),
                    ("landmark_nme", "landmark_nme"))}})
            print(rows[-1])
    finally:
        aligner.VOTE_WEIGHT, aligner.FIT_WEIGHT = shipped
    intro = ["# The category decision's evidence on the validation split", "",
             f"Validation seeds {start}–{start + args.n - 1}, `flatten`, {args.size}² photos; "
             "metrics as `flatlay bench quality`. `python bench/tune_category.py --n "
             f"{args.n} --votes {args.votes} --fits {args.fits}`.", ""]
    print(write_variants(args.out, "category-val", intro, rows,
                         [("n", "n", "d"), ("category_accuracy", "category acc", ".3f"),
                          ("silhouette_iou", "IoU", ".4f"), ("iou_right", "IoU cat right", ".3f"),
                          ("iou_wrong", "IoU cat wrong", ".3f"),
                          ("landmark_nme", "NME", ".4f")]))


if __name__ == "__main__":
    main()
