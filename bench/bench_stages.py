"""Per-stage latency of each pipeline, run locally (no service): the worker's own code path.

    python bench/bench_stages.py [--n 20] [--pipelines cutout,...] [--size 1024] [--format png]

Each photo goes through `workers.flatten.flatten_photo` (decode, the pipeline's stages, encode),
after one warm-up photo per pipeline. Writes bench/results/stage_latency.png (p50 bars with
p90 whiskers, per stage and pipeline) and bench/results/stage_latency.md (the table), and
prints the table. Photos: garment-world test-split wild photos (768 px JPEG).
"""

from __future__ import annotations

import argparse
import io
import platform
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.garments import SPLITS, generate  # noqa: E402
from models.io import ImageLimits  # noqa: E402
from models.pipeline import load_pipelines, pipeline_names  # noqa: E402
from workers.flatten import flatten_photo  # noqa: E402

RESULTS = REPO / "bench" / "results"
LIMITS = ImageLimits(25 * 1024 * 1024, 50_000_000, 32)
PHOTO_SIZE = 768


def photos(n: int) -> list[bytes]:
    """`n` garment-world test photos as JPEG files, as a client would upload them."""
    start = SPLITS["test"][0]
    return [generate(start + i, size=PHOTO_SIZE).wild_jpeg for i in range(n)]


def measure(pipeline: str, data: list[bytes], options: dict) -> dict[str, list[float]]:
    """Seconds per stage for each photo (stages in pipeline order), after one warm-up."""
    flatten_photo(data[0], pipeline, options, LIMITS, {})
    per_stage: dict[str, list[float]] = {}
    for photo in tqdm(data, desc=pipeline, unit="photo"):
        timings: dict[str, float] = {}
        flatten_photo(photo, pipeline, options, LIMITS, timings)
        for stage, seconds in timings.items():
            per_stage.setdefault(stage, []).append(seconds)
        per_stage.setdefault("total", []).append(sum(timings.values()))
    return per_stage


def table(results: dict[str, dict[str, list[float]]], args: argparse.Namespace) -> str:
    lines = [
        "# Per-stage latency",
        "",
        f"{args.n} garment-world photos ({PHOTO_SIZE}² JPEG) per pipeline, "
        f"output {args.size}² {args.format}, "
        f"run locally on {platform.processor() or platform.machine()} "
        f"({platform.system()}, Python {platform.python_version()}); milliseconds.",
        "",
        "| pipeline | stage | p50 | p90 | mean |",
        "|---|---|---:|---:|---:|",
    ]
    for pipeline, stages in results.items():
        for stage, values in stages.items():
            ms = np.asarray(values) * 1000
            lines.append(f"| {pipeline} | {stage} | {np.percentile(ms, 50):.1f} | "
                         f"{np.percentile(ms, 90):.1f} | {ms.mean():.1f} |")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, dict[str, list[float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(dict.fromkeys(s for r in results.values() for s in r if s != "total"))
    width = 0.8 / len(results)
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(stages) + 2), 4), dpi=120)
    for i, (pipeline, per_stage) in enumerate(results.items()):
        xs = np.arange(len(stages)) + (i - (len(results) - 1) / 2) * width
        p50 = [np.percentile(per_stage.get(s, [np.nan]), 50) * 1000 for s in stages]
        p90 = [np.percentile(per_stage.get(s, [np.nan]), 90) * 1000 for s in stages]
        ax.bar(xs, p50, width * 0.9, label=f"{pipeline} (p50)")
        ax.errorbar(xs, p50, yerr=[np.zeros(len(stages)), np.subtract(p90, p50)], fmt="none",
                    ecolor="black", capsize=4, lw=1)
    ax.set_xticks(np.arange(len(stages)), stages)
    ax.set_ylabel("milliseconds (bar p50, whisker p90)")
    ax.set_title("Per-stage latency per pipeline")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(frameon=False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    path.write_bytes(buf.getvalue())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20, help="photos per pipeline")
    ap.add_argument("--pipelines", default="all", help="comma-separated, or 'all'")
    ap.add_argument("--size", type=int, default=1024, help="output canvas side, px")
    ap.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    ap.add_argument("--out", type=Path, default=RESULTS, help="results folder")
    args = ap.parse_args()
    names = pipeline_names() if args.pipelines == "all" else args.pipelines.split(",")
    unknown = sorted(set(names) - set(pipeline_names()))
    if unknown:
        raise SystemExit(f"unknown pipelines {unknown}; available: {pipeline_names()}")

    data = photos(args.n)
    options = {"output_size": args.size, "background": "#ffffff", "format": args.format,
               "seed": 0}
    results = {}
    for name in names:
        load_pipelines([name])
        results[name] = measure(name, data, options)

    args.out.mkdir(parents=True, exist_ok=True)
    text = table(results, args)
    (args.out / "stage_latency.md").write_text(text)
    plot(results, args.out / "stage_latency.png")
    print(text)
    print(f"wrote {args.out / 'stage_latency.md'} and {args.out / 'stage_latency.png'}")


if __name__ == "__main__":
    main()
