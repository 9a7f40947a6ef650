"""Can a small learned refiner read the silhouette that the landmark fit misses? (issue 12)

    python bench/silhouette_refiner.py [--n-train 5000] [--n-val 400] [--minutes 38]

Each photo goes through stages 1–5 as `flatten` serves them (parse, embed, category decision,
the landmark fit's Ŝ, the spline warp), at 512² for speed. A U-Net at 64² inside the 128²
canvas reads Ŝ's signed distance, the warped photo mask, where the photo covers the canvas
and the warped photo W, and adds a zero-initialised correction to Ŝ's logit, so before
training it returns Ŝ exactly. Trained with BCE against the true flat silhouette on train
seeds from 200000 (no shipped model saw them), mirror augmentation; scored by silhouette IoU
on the canonical canvas against Ŝ's, on the validation seeds and on the same seeds drawn from
the held-out shape family (a diagnosis: the held-out split is not touched). An experiment,
not a stage of the service yet: prints a table and writes
bench/results/silhouette-refiner-val.{md,json}; the stage views are cached under --cache.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.harness import write_variants  # noqa: E402
from models.garments import SPLITS, generate  # noqa: E402
from models.pipeline import get_pipeline  # noqa: E402
from models.train.pairs import flat_silhouette  # noqa: E402
from models.warp import photo_to_canvas_map, signed_distance, warp_photo  # noqa: E402

RESULTS = REPO / "bench" / "results"
CANVAS = 128  # the bank's silhouette size: Ŝ's own resolution
TRAIN_START = 200_000


def stage_view(aligner, seed: int, family: str, size: int) -> dict:  # noqa: ANN001
    """One photo through stages 1–5 as served: Ŝ, the warped mask, the photo's coverage of
    the canvas, W (all CANVAS²), and the truth."""
    s = generate(seed, size=size, family=family)
    parsed = aligner.parser.parse(s.wild_image)
    query, _ = aligner.embed(s.wild_image, parsed.mask > 0.5)
    d = aligner.decide(parsed, aligner.bank, query)
    fused = aligner.fuse(aligner.bank, query, d.parsed, d.category, fit=d.fits.get(d.category))
    src, dst = aligner._correspondences(d.parsed, fused, d.parsed.mask > 0.5)
    warped = warp_photo(s.wild_image, d.parsed.mask, src, dst, CANVAS, aligner.TPS_SMOOTHING)
    rows, cols = photo_to_canvas_map(src, dst, s.wild_image.shape[:2], CANVAS,
                                     aligner.TPS_SMOOTHING)
    h, w = s.wild_image.shape[:2]
    return {"shat": fused.silhouette, "mask": (warped.mask * 255).astype(np.uint8),
            "inside": (rows >= -0.5) & (rows <= h - 0.5) & (cols >= -0.5) & (cols <= w - 0.5),
            "rgb": warped.image, "truth": flat_silhouette(s.flat_mask),
            "right": d.category == s.category}


def stage_views(aligner, start: int, n: int, family: str, size: int,  # noqa: ANN001
                cache: Path) -> dict[str, np.ndarray]:
    path = cache / f"views-{start}-{n}-{family}-{size}.npz"
    if path.is_file():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    views = [stage_view(aligner, seed, family, size)
             for seed in tqdm(range(start, start + n), desc=f"stages 1–5, {family} {start}")]
    data = {k: np.stack([v[k] for v in views]) for k in views[0]}
    cache.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **data)
    return data


def tensors(d: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(inputs (N, 6, C, C), Ŝ's signed distance in pixels (N, 1, C, C), truth (N, 1, C, C))."""
    sdf = np.stack([signed_distance(m) for m in d["shat"]])
    x = np.concatenate([np.clip(sdf / 16.0, -1, 1)[:, None],
                        d["mask"][:, None].astype(np.float32) / 255.0,
                        d["inside"][:, None].astype(np.float32),
                        d["rgb"].transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0], 1)
    return (torch.from_numpy(x), torch.from_numpy(sdf[:, None]),
            torch.from_numpy(d["truth"][:, None].astype(np.float32)))


def _block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU(),
                         nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU())


class Refiner(nn.Module):
    """Ŝ's logit (−distance / tau) plus a U-Net's correction at half the canvas, upsampled."""

    def __init__(self, width: int = 16, tau: float = 4.0) -> None:
        super().__init__()
        w = width
        self.enc = nn.ModuleList([_block(6, w), _block(w, 2 * w), _block(2 * w, 3 * w),
                                  _block(3 * w, 4 * w)])
        self.dec = nn.ModuleList([_block(7 * w, 3 * w), _block(5 * w, 2 * w), _block(3 * w, w)])
        self.out = nn.Conv2d(w, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.tau = tau

    def forward(self, x: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
        skips = [self.enc[0](F.avg_pool2d(x, 2))]
        for block in self.enc[1:]:
            skips.append(block(F.avg_pool2d(skips[-1], 2)))
        h = skips.pop()
        for block in self.dec:
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="bilinear"),
                                 skips.pop()], 1))
        delta = F.interpolate(self.out(h), scale_factor=2, mode="bilinear")
        return -sdf / self.tau + delta


@torch.no_grad()
def score(net: Refiner, data: tuple, right: np.ndarray) -> dict[str, float]:
    """Mean IoU of Ŝ and of the refined silhouette (alone and mirror-averaged)."""
    x, sdf, truth = data
    net.eval()
    logits = torch.cat([net(x[i:i + 64], sdf[i:i + 64]) for i in range(0, len(x), 64)])
    mirrored = torch.cat([net(x[i:i + 64].flip(-1), sdf[i:i + 64].flip(-1)).flip(-1)
                          for i in range(0, len(x), 64)])
    net.train()

    def iou(pred: torch.Tensor) -> np.ndarray:
        t = truth > 0.5
        return ((pred & t).flatten(1).sum(1) / (pred | t).flatten(1).sum(1).clamp(min=1)).numpy()

    base, refined, both = iou(sdf < 0), iou(logits > 0), iou(logits + mirrored > 0)
    return {"base": float(base.mean()), "refined": float(refined.mean()),
            "mirrored": float(both.mean()), "refined_right": float(refined[right].mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-val", type=int, default=400)
    ap.add_argument("--size", type=int, default=512, help="photo side, px")
    ap.add_argument("--minutes", type=float, default=38.0)
    ap.add_argument("--eval-minutes", type=float, default=10.0)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--tau", type=float, default=4.0, help="Ŝ's logit: −distance / tau px")
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "silhouette-refiner")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if min(args.n_train, args.n_val, args.width) < 1 or args.minutes <= 0 or args.tau <= 0 \
            or args.eval_minutes <= 0:
        ap.error("--n-train, --n-val and --width must be ≥ 1; --minutes, --eval-minutes and "
                 "--tau > 0")
    torch.manual_seed(0)
    aligner = get_pipeline("flatten").aligner
    aligner.load()
    val_start = SPLITS["val"][0]
    sets = {"validation": ("standard", val_start, args.n_val),
            "held-out family": ("heldout", val_start, args.n_val),
            "train": ("standard", TRAIN_START, args.n_train)}
    raw = {k: stage_views(aligner, start, n, fam, args.size, args.cache)
           for k, (fam, start, n) in sets.items()}
    data = {k: tensors(v) for k, v in raw.items()}
    x, sdf, truth = data.pop("train")
    net = Refiner(args.width, args.tau)
    opt = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    rng = torch.Generator().manual_seed(0)
    rows: list[dict] = []

    def record(step: int, minutes: float) -> None:
        row = {"variant": "Ŝ (the landmark fit)" if step == 0 else f"refined, step {step}",
               "step": step, "minutes": round(minutes, 1)}
        for name, d in data.items():
            s = score(net, d, raw[name]["right"].astype(bool))
            key = "val" if name == "validation" else "heldout"
            row.update({key: s["base"] if step == 0 else s["refined"],
                        f"{key}_mirrored": None if step == 0 else s["mirrored"],
                        f"{key}_right": s["refined_right"]})
        rows.append(row)
        tqdm.write(str(row))

    record(0, 0.0)
    t0, step, next_eval = time.perf_counter(), 0, args.eval_minutes
    bar = tqdm(total=round(args.minutes * 60), desc="train refiner", unit="s")
    while (elapsed := time.perf_counter() - t0) < args.minutes * 60:
        idx = torch.randint(0, len(x), (32,), generator=rng)
        bx, bs, bt = x[idx], sdf[idx], truth[idx]
        if torch.rand(1, generator=rng).item() < 0.5:  # the garment seen in a mirror
            bx, bs, bt = bx.flip(-1), bs.flip(-1), bt.flip(-1)
        loss = F.binary_cross_entropy_with_logits(net(bx, bs), bt)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        bar.update(round(time.perf_counter() - t0) - bar.n)
        bar.set_postfix(step=step, loss=f"{loss.item():.4f}")
        if elapsed / 60 >= next_eval:
            record(step, elapsed / 60)
            next_eval += args.eval_minutes
    bar.close()
    record(step, (time.perf_counter() - t0) / 60)
    params = sum(p.numel() for p in net.parameters())
    intro = ["# A learned silhouette refiner after the landmark fit (validation)", "",
             f"Stages 1–5 as served at {args.size}²; {args.n_train} train photos from seed "
             f"{TRAIN_START}; {args.n_val} validation photos from seed {val_start}, and the same "
             f"seeds drawn from the held-out shape family (diagnosis). Refiner width "
             f"{args.width} ({params:,} parameters), tau {args.tau}, batch 32, AdamW 1e-3. "
             "Silhouette IoU on the 128² canonical canvas. `python bench/silhouette_refiner.py "
             f"--n-train {args.n_train} --n-val {args.n_val} --minutes {args.minutes}`.", ""]
    print(write_variants(args.out, "silhouette-refiner-val", intro, rows, [
        ("step", "steps", "d"), ("minutes", "minutes", ".1f"), ("val", "IoU val", ".4f"),
        ("val_mirrored", "mirror-averaged", ".4f"), ("val_right", "category right", ".4f"),
        ("heldout", "IoU held-out family", ".4f"), ("heldout_mirrored", "mirror-averaged",
                                                    ".4f"),
        ("heldout_right", "category right", ".4f")]))


if __name__ == "__main__":
    main()
