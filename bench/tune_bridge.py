"""The bridge's sampling settings (step count, noise), chosen on validation pairs.

    python bench/tune_bridge.py [--n 64] [--steps 1,2,4,8] [--noise 0,0.5,1]

Scores the shipped generator at its working resolution on the first n cached validation
pairs (`runs/generator-tiny/pairs/val`, made by `flatlay train generator` through the real
stages 1–5; made here when missing), the way training validates: garment SSIM and ΔE2000
inside the true mask, beside the coarse image ŷ decoded (where the bridge starts) and W.
Prints a table and writes bench/results/bridge-sampling-val.{md,json}; the chosen row goes
into the generator's `generator.json` (`sampling`) by hand, with this table as its reason.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.config import model_config, train_config  # noqa: E402
from models.generator.sampling import FlatLayGenerator  # noqa: E402
from models.train.generator import (  # noqa: E402
    _on_white,
    _val_conditions,
    image_scores,
)
from models.train.generator_pairs import cache_pairs  # noqa: E402

RESULTS = REPO / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", default="1,2,4,8")
    ap.add_argument("--noise", default="0,0.5,1")
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs" / "generator-tiny")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    noises = [float(s) for s in args.noise.split(",")]
    if args.n < 1 or any(s < 1 for s in steps) or any(x < 0 for x in noises):
        ap.error("--n and --steps must be ≥ 1, --noise ≥ 0")
    m, p = model_config("generator", "tiny"), train_config("generator", "tiny")["pairs"]
    val = cache_pairs(args.run_dir, "val", max(args.n, p["n_val"]), p["photo_size"],
                      m["resolution"], m["unet"]["sample_size"])
    gen = FlatLayGenerator.from_pretrained()
    idx = np.arange(min(args.n, len(val["seed"])))
    conds = _val_conditions(val, idx)
    seeds = [int(s) for s in val["seed"][idx]]
    truth, mask = val["target"][idx, ..., :3], val["target"][idx, ..., 3] > 127

    def batched(fn) -> np.ndarray:  # noqa: ANN001
        return _on_white(np.concatenate([fn(conds[i:i + 16], seeds[i:i + 16])
                                         for i in range(0, len(conds), 16)]))

    with torch.no_grad():
        coarse = batched(lambda c, s: gen.decode(gen.conditions(c).coarse, c))
    warp = val["warp"][idx].copy()
    warp[~val["validity"][idx]] = 255
    rows = [{"variant": "W (the warp)", **image_scores(warp, truth, mask)},
            {"variant": "coarse ŷ decoded", **image_scores(coarse, truth, mask)}]
    for n_steps in steps:
        for noise in noises:
            t0 = time.perf_counter()
            out = batched(lambda c, s, n_steps=n_steps, noise=noise:
                          gen(c, s, steps=n_steps, noise=noise))
            rows.append({"variant": f"{n_steps} steps, noise {noise:g}",
                         **image_scores(out, truth, mask),
                         "ms_per_asset": round(1000 * (time.perf_counter() - t0) / len(idx), 1)})
            print(rows[-1], flush=True)
    shipped = f"{gen.default_steps} steps, noise {gen.noise:g}"
    intro = ["# The bridge's sampling on the validation split", "",
             f"First {len(idx)} validation pairs (seeds {seeds[0]}–{seeds[-1]}), working "
             f"resolution {gen.resolution}², garment SSIM and ΔE2000 inside the true mask. "
             f"Shipped: {shipped}; generator trained "
             f"{gen.meta.get('training', {}).get('steps_this_run', '?')} steps this run.", ""]
    print(write_variants(args.out, "bridge-sampling-val", intro, rows,
                         [("ssim_garment", "SSIM garment", ".4f"), ("delta_e", "ΔE2000", ".3f"),
                          ("ms_per_asset", "ms / asset", "")]))

if __name__ == "__main__":
    main()
