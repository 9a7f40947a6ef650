"""The diffusion stage alone: seconds per asset by batch size and step count, on this
machine's device (CPU here; CUDA in half precision where present).

    python bench/bench_generator.py [--n 8] [--batches 1,2,4,8] [--steps 4,8,12]

Conditions come from garment-world test photos (1024²) through the real stages 1–5. Prints a
table and writes bench/results/generator_batch.{md,json}: what batching several queued
assets into one forward pass would buy a worker on this device.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.garments import SPLITS, generate  # noqa: E402
from models.generator.conditioning import coarse_conditions  # noqa: E402
from models.io import decode_image  # noqa: E402
from models.pipeline import StageClock, get_pipeline  # noqa: E402

RESULTS = REPO / "bench" / "results"


def conditions(n: int, size: int = 1024) -> list:
    pipe = get_pipeline("ragdiffusion")
    pipe.load()
    out = []
    for i in tqdm(range(n), desc="stages 1–5", unit="photo"):
        photo = decode_image(generate(SPLITS["test"][0] + i, size=size).wild_jpeg)
        coarse = pipe.aligner.align(photo, None, size, StageClock(pipe.stages, None))
        out.append(coarse_conditions(coarse, photo, pipe.generator.resolution,
                                     pipe.generator.latent_size))
    return pipe.generator, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=8, help="assets (a multiple of every batch)")
    ap.add_argument("--batches", default="1,2,4,8")
    ap.add_argument("--steps", default="4,8,12")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    steps = [int(s) for s in args.steps.split(",")]
    if any(b < 1 or args.n % b for b in batches) or any(s < 1 for s in steps):
        raise SystemExit("every batch must be ≥ 1 and divide --n; steps ≥ 1")
    gen, conds = conditions(args.n)
    gen(conds[:1], [0], steps=2)  # warm-up
    rows = []
    for s in steps:
        for b in batches:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                for i in range(0, args.n, b):
                    gen(conds[i:i + b], list(range(i, i + b)), steps=s)
                best = min(best, (time.perf_counter() - t0) / args.n)
            rows.append({"steps": s, "batch": b, "ms_per_asset": round(best * 1000, 1)})
            print(rows[-1])
    base = {r["steps"]: r["ms_per_asset"] for r in rows if r["batch"] == 1}
    device = str(gen.device)
    lines = ["# The diffusion stage by batch size", "",
             f"{args.n} garment-world test photos (1024²) through stages 1–5; the generator "
             f"alone (conditions, sampling, decoding) on {device} "
             f"({platform.processor() or platform.machine()}), best of {args.repeats}; "
             "milliseconds per asset.", "",
             "| steps | batch | ms / asset | speed-up vs batch 1 |", "|---:|---:|---:|---:|"]
    lines += [f"| {r['steps']} | {r['batch']} | {r['ms_per_asset']} | "
              f"{base[r['steps']] / r['ms_per_asset']:.2f}× |" for r in rows]
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "generator_batch.md").write_text(text)
    (args.out / "generator_batch.json").write_text(json.dumps(
        {"device": device, "n": args.n, "rows": rows}, indent=2) + "\n")
    print(text)


if __name__ == "__main__":
    main()
