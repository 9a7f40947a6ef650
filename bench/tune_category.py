"""The category decision's evidence, weighed on the validation split (never on test).

    python bench/tune_category.py [--n 200] [--size 1024] [--votes 0,0.5,1] [--fits 0.5,1,2]
                                  [--parser DIR] [--looks off,0.5,1,0.5+detail]
                                  [--head DIR] [--heads 0,0.3,0.5]

The category posterior is the parser's belief times the vote of the query's top global
hits to the power VOTE_WEIGHT, times the landmark residual of the likeliest categories to the
power −FIT_WEIGHT (`StructureAligner` in models/pipelines/stages.py); vote 0 and fit 0 is the
parser alone. Each vote weight (without the fit), then each fit weight (at the shipped vote),
then each second look of the parser (`GarmentParser.zoom`: off, or the weight of the zoomed
pass in the category, `+detail` for its mask and landmarks too; at the shipped vote and fit),
then each weight of the category head in the parse's category (`GarmentParser.head_weight`,
0: the parser alone; the shipped head or `--head`), and the trained decision
(`models.decision`, where one ships; the other rows weigh the hand-set rule), runs `flatten`
on the first n validation photos, scored with the quality benchmark's metrics: category
accuracy, silhouette IoU (overall, category right, category wrong) and landmark NME. Prints
a table and writes bench/results/category-val.{md,json}.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.eval.quality import _summary, load_truth, run_and_score  # noqa: E402
from models.garments import SPLITS  # noqa: E402
from models.parser import GarmentParser  # noqa: E402
from models.pattern import CategoryClassifier  # noqa: E402
from models.pipeline import PipelineOptions, get_pipeline  # noqa: E402

RESULTS = REPO / "bench" / "results"


def rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


Look = tuple[bool, float, bool]  # GarmentParser's zoom, zoom_weight, zoom_detail


def parse_look(text: str) -> Look:
    if text == "off":
        return (False, GarmentParser.ZOOM_WEIGHT, GarmentParser.ZOOM_DETAIL)
    weight, _, detail = text.partition("+")
    if detail not in ("", "detail") or not 0 <= float(weight) <= 1:
        raise ValueError(text)
    return (True, float(weight), detail == "detail")


def look_of(parser: GarmentParser) -> Look:
    return (parser.zoom, parser.zoom_weight, parser.zoom_detail)


def look_name(look: Look) -> str:
    zoom, weight, detail = look
    return f"{weight:g}{'+detail' if detail else ''}" if zoom else "off"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--votes", default="0,0.5,1", help="vote weights, comma-separated")
    ap.add_argument("--fits", default="0.5,1,2", help="fit weights, comma-separated")
    ap.add_argument("--parser", type=Path, default=None,
                    help="parser weights folder (default: the shipped parser)")
    ap.add_argument("--looks", default="", help="second looks, comma-separated: off, a weight "
                    "in [0, 1], or WEIGHT+detail")
    ap.add_argument("--head", type=Path, default=None,
                    help="category head weights folder (default: the shipped head)")
    ap.add_argument("--heads", default="", help="category head weights in [0, 1], "
                    "comma-separated")
    args = ap.parse_args()
    if args.n < 1:
        ap.error("--n must be ≥ 1")
    try:
        votes, fits = ([float(w) for w in text.split(",") if w.strip()]
                       for text in (args.votes, args.fits))
        looks = [parse_look(text.strip()) for text in args.looks.split(",") if text.strip()]
        heads = [float(w) for w in args.heads.split(",") if w.strip()]
        if not all(0 <= w <= 1 for w in heads):
            raise ValueError(args.heads)
    except ValueError:
        ap.error("--votes and --fits take numbers separated by commas, e.g. 0,0.5,1; --looks "
                 "off, weights in [0, 1] or WEIGHT+detail, e.g. off,0.5,1+detail; --heads "
                 "weights in [0, 1]")
    run = get_pipeline("flatten")
    aligner = run.aligner  # its stages 1–4; the weights are set on this instance only
    aligner.load()
    if args.parser is not None:
        try:
            aligner.parser = GarmentParser.from_pretrained(args.parser, head=aligner.parser.head)
        except (FileNotFoundError, ValueError) as exc:
            ap.error(str(exc))
    parser = aligner.parser
    if args.head is not None:
        try:
            parser.head = CategoryClassifier.from_pretrained(args.head)
        except (FileNotFoundError, ValueError) as exc:
            ap.error(str(exc))
    if heads and parser.head is None:
        ap.error("--heads needs a category head: none ships yet, give --head DIR")
    shipped = (aligner.VOTE_WEIGHT, aligner.FIT_WEIGHT, look_of(parser),
               parser.head_weight if parser.head is not None else 0.0)
    # The rows weigh the hand-set rule's evidence; the trained decision (models.decision),
    # where one ships, gets a row of its own at the shipped looks and head.
    decider, aligner.decider = aligner.decider, None
    variants = ([(v, 0.0, shipped[2], shipped[3]) for v in votes]
                + [(shipped[0], f, shipped[2], shipped[3]) for f in fits if f]
                + [(shipped[0], shipped[1], look, shipped[3]) for look in looks]
                + [(*shipped[:3], w) for w in heads]
                + ([None] if decider is not None else []))
    start = SPLITS["val"][0]
    truths = [load_truth(start + i, args.size) for i in tqdm(range(args.n), desc="photos")]
    rows = []
    try:
        for variant in variants:
            aligner.decider = decider if variant is None else None
            vote, fit, look, head = shipped if variant is None else variant
            aligner.VOTE_WEIGHT, aligner.FIT_WEIGHT = vote, fit
            parser.zoom, parser.zoom_weight, parser.zoom_detail = look
            parser.head_weight = head
            name = ("the trained decision (shipped)" if variant is None else
                    f"vote {vote:g}, fit {fit:g}, look {look_name(look)}, head {head:g}")
            scored = [run_and_score(run, t, PipelineOptions(output_size=args.size,
                                                             seed=t.seed))[0]
                      for t in tqdm(truths, desc=name)]
            summary = _summary(scored)  # the quality benchmark's own aggregates
            rows.append({
                "variant": name if variant is None else name
                + (" (parser alone)" if vote == fit == 0 else "")
                + (" (the rule)" if variant == shipped else ""),
                "n": summary["n_ok"],
                **{key: rounded(summary[of]) for key, of in (
                    ("category_accuracy", "category_accuracy"),
                    ("silhouette_iou", "silhouette_iou"),
                    ("iou_right", "silhouette_iou_category_right"),
                    ("iou_wrong", "silhouette_iou_category_wrong"),
                    ("landmark_nme", "landmark_nme"))}})
            print(rows[-1])
    finally:
        aligner.decider = decider
        aligner.VOTE_WEIGHT, aligner.FIT_WEIGHT = shipped[:2]
        parser.zoom, parser.zoom_weight, parser.zoom_detail = shipped[2]
        parser.head_weight = shipped[3]
    command = (f"python bench/tune_category.py --n {args.n} --votes {shlex.quote(args.votes)} "
               f"--fits {shlex.quote(args.fits)}"
               + (f" --parser {args.parser}" if args.parser else "")
               + (f" --looks {args.looks}" if args.looks else "")
               + (f" --head {args.head}" if args.head else "")
               + (f" --heads {args.heads}" if args.heads else ""))
    intro = ["# The category decision's evidence on the validation split", "",
             f"Validation seeds {start}–{start + args.n - 1}, `flatten`, {args.size}² photos; "
             f"parser {parser.meta.get('training', {}).get('command', 'shipped')!r}; metrics "
             f"as `flatlay bench quality`. `{command}`.", ""]
    print(write_variants(args.out, "category-val", intro, rows,
                         [("n", "n", "d"), ("category_accuracy", "category acc", ".3f"),
                          ("silhouette_iou", "IoU", ".4f"), ("iou_right", "IoU cat right", ".3f"),
                          ("iou_wrong", "IoU cat wrong", ".3f"),
                          ("landmark_nme", "NME", ".4f")]))


if __name__ == "__main__":
    main()
