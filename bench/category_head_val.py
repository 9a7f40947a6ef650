"""The category head's share of stage 1's category, weighed on the validation split.

    python bench/category_head_val.py [--n 800] [--size 512] [--head DIR]
                                      [--weights 0,0.3,0.5,0.7,1] [--out bench/results]

Each of the first n validation photos (JPEG-decoded as the service decodes, `--size` px) is
parsed once by the shipped parser alone (first pass, mirror and second look), and the head
(default: the shipped one) reads the same photo beside the parser's mask. For each weight w
the category is the argmax of (1 − w) · parser + w · head (`GarmentParser.head_weight`; 0
is the parser alone, 1 the head alone), and for comparison of the product parser^(1−w) ·
head^w. Only stage 1: the retrieval vote and the landmark fit
that follow are weighed by `bench/tune_category.py --heads` in the whole pipeline. Prints a
table (accuracy and the five most frequent confusions per weight) and writes
bench/results/category-head-val.{md,json}.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.eval.quality import load_truth  # noqa: E402
from models.garments import CATEGORIES, SPLITS  # noqa: E402
from models.parser import PARSER_WEIGHTS, GarmentParser  # noqa: E402
from models.pattern import CATEGORY_WEIGHTS, CategoryClassifier  # noqa: E402

RESULTS = REPO / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=800)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--head", type=Path, default=CATEGORY_WEIGHTS,
                    help="category head weights folder (default: the shipped head)")
    ap.add_argument("--weights", default="0,0.3,0.5,0.7,1",
                    help="the head's shares of the category, comma-separated, in [0, 1]")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.n < 1 or not 64 <= args.size <= 4096:
        ap.error("--n must be ≥ 1 and --size in [64, 4096]")
    try:
        weights = [float(w) for w in args.weights.split(",") if w.strip()]
        if not weights or not all(0 <= w <= 1 for w in weights):
            raise ValueError(args.weights)
    except ValueError:
        ap.error("--weights takes numbers in [0, 1] separated by commas, e.g. 0,0.5,1")
    try:
        head = CategoryClassifier.from_pretrained(args.head)
    except (FileNotFoundError, ValueError) as exc:
        ap.error(str(exc))
    parser = GarmentParser.from_pretrained(PARSER_WEIGHTS)  # the parser alone
    start = SPLITS["val"][0]
    truth, parser_p, head_p = [], [], []
    for i in tqdm(range(args.n), desc="parse"):
        t = load_truth(start + i, args.size)
        parsed = parser.parse(t.photo)
        truth.append(CATEGORIES.index(t.category))
        parser_p.append([parsed.category_probs[c] for c in CATEGORIES])
        head_p.append(head.probabilities(t.photo, parsed.mask) if (parsed.mask > 0.5).any()
                      else np.full(len(CATEGORIES), 1 / len(CATEGORIES)))
    y, p_parser, p_head = np.array(truth), np.array(parser_p), np.array(head_p)
    rows = []
    mixes = [("mean", w) for w in weights] + [("product", w) for w in weights if 0 < w < 1]
    for mix, w in mixes:
        if mix == "mean":
            pred = ((1 - w) * p_parser + w * p_head).argmax(1)
        else:  # the product of experts, for comparison: parser^(1−w) · head^w
            pred = ((1 - w) * np.log(p_parser + 1e-6) + w * np.log(p_head + 1e-6)).argmax(1)
        confusions = Counter((CATEGORIES[a], CATEGORIES[b]) for a, b in zip(y, pred, strict=True)
                             if a != b).most_common(5)
        rows.append({"variant": f"head {w:g}, {mix}" + (" (parser alone)" if w == 0 else "")
                     + (" (head alone)" if w == 1 else ""),
                     "n": int(len(y)), "category_accuracy": round(float((pred == y).mean()), 4),
                     "confusions": ", ".join(f"{a}→{b} {k}" for (a, b), k in confusions)})
        print(rows[-1])
    intro = ["# The category head's share of stage 1's category (validation)", "",
             f"Validation seeds {start}–{start + args.n - 1}, {args.size}² photos, the shipped "
             f"parser (mirror and second look) and the head in `{args.head}`; stage 1 only. "
             f"`python bench/category_head_val.py --n {args.n} --size {args.size} --weights "
             f"{args.weights}`.", ""]
    print(write_variants(args.out, "category-head-val", intro, rows,
                         [("n", "n", "d"), ("category_accuracy", "category acc", ".3f"),
                          ("confusions", "most frequent confusions (true→decided)", "")]))


if __name__ == "__main__":
    main()
