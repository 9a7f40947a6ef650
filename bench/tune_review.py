"""The `review_suggested` threshold, chosen on the validation split (never on test).

    flatlay bench quality --split val --n 300 --pipelines flatten --grid-rows 0 --out-dir runs/val
    python bench/tune_review.py runs/val/quality-val.json

For each threshold: the share of assets flagged (category confidence below it), the wrong-
category rate among the flagged and among the rest, their ratio, and how many of the wrong
categories the flag catches (recall) with the F1 of "flagged" as a detector of "wrong".
Prints the table and writes bench/results/review-val.md.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("quality_json", type=Path, help="a `flatlay bench quality` JSON (split val)")
    ap.add_argument("--pipeline", default="flatten")
    ap.add_argument("--out", type=Path, default=RESULTS / "review-val.md")
    args = ap.parse_args()
    result = json.loads(args.quality_json.read_text())
    if result["split"] != "val":
        ap.error(f"{args.quality_json} is split {result['split']!r}; choose on val only")
    rows = [a["pipelines"][args.pipeline] for a in result["assets"]
            if a["pipelines"][args.pipeline].get("failure") is None]
    conf = np.array([r["category_confidence"] for r in rows], dtype=float)
    wrong = ~np.array([r["category_ok"] for r in rows], dtype=bool)
    lines = [f"# review-val: the `review_suggested` threshold ({args.pipeline}, n = {len(rows)})",
             "", f"Validation seeds {result['seeds'][0]}–{result['seeds'][1]}; category "
             f"accuracy {1 - wrong.mean():.3f}. `python bench/tune_review.py "
             f"{args.quality_json}`.", "",
             "| below | flagged | wrong among flagged | wrong among the rest | ratio | "
             "recall of wrong | F1 |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for t in np.round(np.arange(0.40, 0.96, 0.05), 2):
        flag = conf < t
        if not flag.any() or flag.all():
            continue
        wf, wr = wrong[flag].mean(), wrong[~flag].mean()
        recall = (wrong & flag).sum() / max(1, wrong.sum())
        precision = wf
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        lines.append(f"| {t:.2f} | {flag.mean():.3f} | {wf:.3f} | {wr:.3f} | "
                     f"{wf / max(wr, 1e-9):.2f} | {recall:.3f} | {f1:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
