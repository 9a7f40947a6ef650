"""The `ragdiffusion` choices, made on the validation split (never on test).

    python bench/tune_ragdiffusion.py [--n 40] [--size 1024] [--family heldout]

Each row sets the `ragdiffusion` call options (detail, detail_where, silhouette), the step
count or stage 5's silhouette refiner away from the shipped values (`flatten` and
`noretrieval` are reference rows) and scores the first n validation photos with the quality
benchmark's own metrics (`models.eval.quality.score`). `--family heldout` draws the same
validation seeds from the held-out shape family (a diagnosis on validation photos, never the
held-out split) and writes ragdiffusion-val-heldout-family.*. Beside the metrics, garment
SSIM split by each variant's silhouette (`models.eval.quality.garment_coverage`: the share
of the true garment covered, the SSIM there and where it is missed) and by the garment's true
pattern (`models.attributes.PATTERNS`: a choice that helps one may hurt another).
Prints a table and writes ragdiffusion-val.{md,json} under `--out` (bench/results), and a
grid of the first `--grid` photos under every variant (ragdiffusion-val.png) to look at
beside the numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.attributes import PATTERNS  # noqa: E402
from models.eval.quality import (  # noqa: E402
    downsample_rgb,
    garment_coverage,
    grid_image,
    load_truth,
    result_mask,
    score,
)
from models.garments import SPLITS  # noqa: E402
from models.pipeline import PipelineError, PipelineOptions, get_pipeline  # noqa: E402

RESULTS = REPO / "bench" / "results"
# Each variant: the pipeline's call options (`detail`, `silhouette`) and request `steps`.
VARIANTS: list[tuple[str, dict]] = [
    ("flatten (reference)", {"pipeline": "flatten"}),
    ("noretrieval (reference)", {"pipeline": "noretrieval"}),
    ("shipped", {}),
    ("detail 0", {"detail": 0.0}),
    ("detail 0.5", {"detail": 0.5}),
    ("detail 1", {"detail": 1.0}),
    ("detail 1 printed", {"detail": 1.0, "detail_where": "printed"}),
    ("detail 0.5 printed", {"detail": 0.5, "detail_where": "printed"}),
    # The band widened below the generator's scale, on prints (`detail_scale`).
    *[(f"detail {strength:g} printed {scale}× band",
       {"detail": strength, "detail_where": "printed", "detail_scale": scale})
      for strength, scale in ((1.0, 2), (1.0, 4), (0.5, 4), (1.0, 8), (0.5, 8), (0.75, 8),
                              (1.0, 16), (0.5, 16), (0.75, 16), (1.0, 32))],
    ("silhouette generated", {"silhouette": "generated"}),
    # Stage 5 without the silhouette refiner: Ŝ as fused, under both pipelines.
    ("flatten Ŝ unrefined", {"pipeline": "flatten", "refine": False}),
    ("Ŝ unrefined", {"refine": False}),
    ("1 step", {"steps": 1}),
    ("2 steps", {"steps": 2}),
    ("4 steps", {"steps": 4}),
    ("8 steps", {"steps": 8}),
]
METRICS = ("silhouette_iou", "ssim_garment", "delta_e", "psnr", "cover", "ssim_covered",
           "ssim_missed")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--only", default="", help="comma-separated variant labels (default: all)")
    ap.add_argument("--grid", type=int, default=4, help="photos in the grid (0: none)")
    ap.add_argument("--family", choices=("standard", "heldout"), default="standard",
                    help="the validation seeds' shape family")
    args = ap.parse_args()
    if args.n < 1 or args.grid < 0:
        ap.error("--n must be ≥ 1 and --grid ≥ 0")
    only = {v.strip() for v in args.only.split(",") if v.strip()}
    unknown = only - {label for label, _ in VARIANTS}
    if unknown:
        ap.error(f"unknown variants: {', '.join(sorted(unknown))}")
    pipe = get_pipeline("ragdiffusion")
    pipe.load()
    references = {}
    shipped = {"detail": pipe.DETAIL, "detail_where": pipe.DETAIL_WHERE,
               "detail_scale": pipe.DETAIL_SCALE,
               "silhouette": pipe.SILHOUETTE,
               "steps": pipe.generator.default_steps}
    start = SPLITS["val"][0]
    truths = [load_truth(start + i, args.size, args.family)
              for i in tqdm(range(args.n), desc="photos")]
    rows = []
    grid = [(t, downsample_rgb(t.photo), {}) for t in truths[:args.grid]]
    for label, knobs in VARIANTS:
        if only and label not in only:
            continue
        reference = knobs.get("pipeline")
        if reference and reference not in references:
            references[reference] = get_pipeline(reference)
            references[reference].load()
        run = references[reference] if reference else pipe
        aligner = getattr(run, "aligner", None)
        refiner = aligner.refiner if aligner else None
        if knobs.get("refine") is False:
            aligner.refiner = None
        call = {k: v for k, v in knobs.items() if k in ("detail", "silhouette", "detail_where",
                                                          "detail_scale")}
        per: dict[str, list[float]] = {m: [] for m in METRICS}
        by_pattern: dict[str, list[float]] = {p: [] for p in PATTERNS}
        seconds = []
        for i, t in enumerate(tqdm(truths, desc=label)):
            options = PipelineOptions(output_size=args.size, seed=t.seed,
                                      steps=knobs.get("steps"))
            t0 = time.perf_counter()
            try:
                result = run(t.photo, options, **call)
            except PipelineError as e:
                if i < args.grid:
                    grid[i][2][label] = (None, {"failure": e.code})
                continue
            seconds.append(time.perf_counter() - t0)
            metrics, out = score(result, t)
            metrics.update(garment_coverage(out, result_mask(result), t.flat, t.mask))
            if i < args.grid:
                grid[i][2][label] = (out, metrics)
            for m in METRICS:
                per[m].append(metrics[m])
            by_pattern[t.pattern].append(metrics["ssim_garment"])
        if aligner:
            aligner.refiner = refiner
        rows.append({"variant": label, **{m: round(float(np.nanmean(v)), 4)
                                          for m, v in per.items()},
                     **{f"ssim_{p}": round(float(np.mean(v)), 4) if v else None
                        for p, v in by_pattern.items()},
                     "seconds_p50": round(float(np.median(seconds)), 3)})
        print(rows[-1])
    stem = "ragdiffusion-val" + ("-heldout-family" if args.family == "heldout" else "")
    intro = ["# ragdiffusion choices on the validation split", "",
             f"Validation seeds {start}–{start + args.n - 1} ({args.family} shape family), "
             f"{args.size}² photos and canvases; "
             f"metrics as `flatlay bench quality` (256²). Shipped: {shipped}.", ""]
    print(write_variants(args.out, stem, intro, rows,
                         [("silhouette_iou", "IoU", ".3f"), ("ssim_garment", "SSIM garment", ".3f"),
                          ("delta_e", "ΔE2000", ".2f"), ("psnr", "PSNR", ".2f"),
                          ("cover", "true garment covered", ".3f"),
                          ("ssim_covered", "SSIM covered", ".3f"),
                          ("ssim_missed", "SSIM missed", ".3f"),
                          *[(f"ssim_{p}", f"SSIM {p}", ".3f") for p in PATTERNS],
                          ("seconds_p50", "s p50", ".3f")]))
    if grid:
        labels = [row["variant"] for row in rows]
        grid_image(grid, labels).save(args.out / f"{stem}.png")

if __name__ == "__main__":
    main()
