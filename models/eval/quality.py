"""The output-quality benchmark (`flatlay bench quality`): every pipeline's flat-lay against
the garment world's ground-truth flat-lay.

For each of the first n seeds of a split, `generate(seed, size=size)` gives a wild photo (its
JPEG, decoded by `models.io.decode_image` as the service would) and the true flat-lay. Every
pipeline turns the photo into a `size`² canvas with the `square-white` preset, seed = the
asset's seed; the retrieval pipelines render in the canonical frame, which is the ground
truth's frame, so the two canvases compare pixel for pixel. All image metrics are computed at
EVAL_SIZE² (256²): both canvases are area-downsampled (PIL BOX filter) to it.

Per asset and pipeline (definitions; the functions below are the reference):

- silhouette_iou: the garment alpha (`FlatLayResult.alpha`) area-downsampled to 256² and
  thresholded at > 0.5, against the true `flat_mask` area-downsampled to 256² and thresholded
  at > 0.5; |A ∩ B| / |A ∪ B| (1.0 when both are empty).
- landmark_nme: mean Euclidean distance between `canvas_landmarks` and `flat_landmarks` over
  all landmarks, divided by the canvas diagonal (√2 in the unit square), as in the retrieval
  benchmark. Computed
  only where the pipeline's category equals the true category (the schemas differ otherwise):
  the report gives the mean over those assets and their count, `landmark_nme_n`. None for an
  asset whose pipeline gives no landmarks.
- category_accuracy: share of successful assets whose category is the true one (no category
  counts as wrong); None when the pipeline never names a category.
- silhouette_iou_category_right / _wrong: silhouette_iou over the successful assets whose
  category is (is not) the true one, to tell classification from structure errors; None when
  there are none.
- ssim_canvas / ssim_garment: `skimage.metrics.structural_similarity` (7×7 window,
  data_range 255, channel_axis) of the output composited on white vs the true flat-lay, both
  256² RGB. ssim_canvas is skimage's mean SSIM over the canvas; ssim_garment is the mean of the
  SSIM map (averaged over channels) inside the true 256² mask.
- psnr: `peak_signal_noise_ratio` of the same pair over the whole canvas, data_range 255,
  capped at PSNR_CAP dB (identical images).
- delta_e: mean CIEDE2000 (`deltaE_ciede2000` on `rgb2lab`) over the pixels of the true
  256² mask.
- seconds: wall time of the pipeline call alone (decoded photo in, canvas out).

Aggregates per pipeline: means over the assets the pipeline succeeded on; seconds_p50 and
seconds_p90 over every call (a failure costs time too); failures counted by `PipelineError`
code. Other exceptions are bugs and stop the run, naming the pipeline and seed. No
randomness beyond the seeds, so a run is reproducible.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

EVAL_SIZE = 256
PSNR_CAP = 100.0
PRESET = "square-white"
IMAGE_METRICS = ("silhouette_iou", "ssim_garment", "ssim_canvas", "psnr", "delta_e")


class PipelineLoadError(RuntimeError):
    """A pipeline whose `load()` failed (missing weights, say); the message names it."""


# ---- metrics ------------------------------------------------------------------------------


def downsample_rgb(rgb: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """(H, W, 3) uint8 → (size, size, 3) uint8 by area averaging."""
    img = Image.fromarray(np.ascontiguousarray(rgb), "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8)


def downsample_alpha(alpha: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """A bool mask or float alpha in [0, 1] → (size, size) float32, area averaged."""
    img = Image.fromarray(np.asarray(alpha, dtype=np.float32), "F")
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32)


def downsample_mask(mask: np.ndarray, size: int = EVAL_SIZE) -> np.ndarray:
    """A bool mask or float alpha in [0, 1] → (size, size) bool: area average > 0.5."""
    return downsample_alpha(mask, size) > 0.5


def on_white(rgba: np.ndarray) -> np.ndarray:
    """(H, W, 4) uint8 RGBA composited over white → (H, W, 3) uint8."""
    a = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * a + 255.0 * (1.0 - a)
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def silhouette_iou(pred: np.ndarray, truth: np.ndarray) -> float:
    """|pred ∩ truth| / |pred ∪ truth| of two bool masks of one shape; 1.0 when both empty."""
    if pred.shape != truth.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {truth.shape}")
    union = int((pred | truth).sum())
    return 1.0 if union == 0 else float((pred & truth).sum() / union)


def landmark_nme(pred: np.ndarray, truth: np.ndarray) -> float:
    """Mean Euclidean distance between (L, 2) landmark arrays in the unit square, over the
    square's diagonal."""
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"landmark shapes differ: {pred.shape} vs {truth.shape}")
    return float(np.linalg.norm(pred - truth, axis=1).mean() / np.sqrt(2.0))


def ssim_scores(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(ssim_garment, ssim_canvas) of two (S, S, 3) uint8 images; `mask` the true garment.

    ssim_canvas: skimage's mean SSIM. ssim_garment: the SSIM map, averaged over channels,
    averaged inside `mask` (NaN when the mask is empty).
    """
    canvas, smap = _ssim_map(output, truth)
    garment = float(smap[mask].mean()) if mask.any() else float("nan")
    return garment, canvas


def _ssim_map(output: np.ndarray, truth: np.ndarray) -> tuple[float, np.ndarray]:
    """skimage's mean SSIM and its (S, S) map averaged over the channels."""
    from skimage.metrics import structural_similarity

    canvas, full = structural_similarity(truth, output, channel_axis=-1, data_range=255,
                                         full=True)
    return float(canvas), full.mean(axis=-1)


def garment_coverage(output: np.ndarray, pred_mask: np.ndarray, truth: np.ndarray,
                     mask: np.ndarray) -> dict[str, float]:
    """ssim_garment split by the pipeline's own silhouette: the share of the true garment
    `pred_mask` covers, and the SSIM map's mean where it covers and where it misses (white
    against cloth). ssim_garment = cover · covered + (1 − cover) · missed."""
    smap = _ssim_map(output, truth)[1]
    hit, miss = mask & pred_mask, mask & ~pred_mask
    return {"cover": float(hit.sum() / mask.sum()) if mask.any() else float("nan"),
            "ssim_covered": float(smap[hit].mean()) if hit.any() else float("nan"),
            "ssim_missed": float(smap[miss].mean()) if miss.any() else float("nan")}


def psnr(output: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of two uint8 images (data_range 255), capped at PSNR_CAP."""
    mse = float(np.mean((output.astype(np.float64) - truth.astype(np.float64)) ** 2))
    if mse == 0.0:
        return PSNR_CAP
    return min(PSNR_CAP, float(10.0 * np.log10(255.0**2 / mse)))


def delta_e(output: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean CIEDE2000 colour difference inside `mask` (NaN when the mask is empty)."""
    from skimage.color import deltaE_ciede2000, rgb2lab

    if not mask.any():
        return float("nan")
    d = deltaE_ciede2000(rgb2lab(truth[mask][None]), rgb2lab(output[mask][None]))
    return float(d.mean())


# ---- one asset ----------------------------------------------------------------------------


@dataclass
class Truth:
    """One garment-world asset: the photo a pipeline gets and the flat-lay it should give."""

    seed: int
    category: str
    difficulty: float
    scene: str
    photo: np.ndarray  # (size, size, 3) uint8, decoded from the sample's JPEG
    flat: np.ndarray  # (EVAL_SIZE, EVAL_SIZE, 3) uint8
    mask: np.ndarray  # (EVAL_SIZE, EVAL_SIZE) bool
    landmarks: np.ndarray  # (L, 2) float32, canonical unit square
    pattern: str = ""  # models.attributes.PATTERNS: what the garment's fabric or print shows
    # The photo's visible garment placed where it belongs on the flat-lay (`registered_photo`),
    # (EVAL_SIZE, EVAL_SIZE, 3) uint8, and where the photo shows it; with `registration` only.
    registered: np.ndarray | None = None
    registered_known: np.ndarray | None = None


def load_truth(seed: int, size: int, family: str | None = None,
               registration: bool = False) -> Truth:
    """The asset of `seed`; family: `generate`'s shape family (default: the seed's split's);
    registration: also the photo through the true correspondence (`Truth.registered`)."""
    from models.attributes import world_pattern
    from models.garments import generate
    from models.io import decode_image

    s = generate(int(seed), size=size, family=family, coords=registration)
    photo = decode_image(s.wild_jpeg) if s.wild_jpeg else s.wild_image
    registered = known = None
    if registration:
        registered, known = registered_photo(photo, s.wild_mask, s.wild_flat_coords)
    return Truth(seed=int(seed), category=s.category, difficulty=float(s.difficulty),
                 scene=str(s.attributes.get("wild", {}).get("scene", "")), photo=photo,
                 flat=downsample_rgb(s.flat_image), mask=downsample_mask(s.flat_mask),
                 landmarks=np.asarray(s.flat_landmarks, dtype=np.float32),
                 pattern=world_pattern(s.attributes), registered=registered,
                 registered_known=known)


def registered_photo(photo: np.ndarray, visible: np.ndarray, coords: np.ndarray,
                     size: int = EVAL_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """The photo's `visible` garment pixels moved to their true place on the flat-lay
    (`coords`: `GarmentSample.wild_flat_coords`) and averaged per pixel of a size² canvas:
    a warp that made no error, keeping the photo's shading, colour cast and blur. Returns the
    (size, size, 3) uint8 image (white where unknown) and where the photo shows the garment
    (pixels no photo pixel lands on, a crack between landed ones is filled from its
    neighbours; occluded or out-of-frame cloth stays unknown)."""
    from scipy import ndimage

    ok = visible & np.isfinite(coords[..., 0])
    cell = np.clip((coords[ok] * size).astype(np.int64), 0, size - 1)
    flat = cell[:, 1] * size + cell[:, 0]
    count = np.bincount(flat, minlength=size * size).reshape(size, size).astype(np.float64)
    seen = photo[ok].astype(np.float64)
    rgb = np.stack([np.bincount(flat, seen[:, c], size * size) for c in range(3)],
                   -1).reshape(size, size, 3)
    landed = count > 0
    # A one-pixel crack between landed pixels (a stretched photo) is filled, larger gaps not.
    known = ndimage.binary_closing(landed, np.ones((3, 3), bool)) | landed
    weight = ndimage.uniform_filter(landed.astype(np.float64), 3)
    mean = np.where(landed[..., None], rgb / np.maximum(count, 1)[..., None], 0.0)
    near = np.stack([ndimage.uniform_filter(mean[..., c], 3) for c in range(3)], -1)
    out = np.where(landed[..., None], mean, near / np.maximum(weight, 1e-9)[..., None])
    out = np.where(known[..., None], out, 255.0)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8), known


def result_mask(result: Any) -> np.ndarray:
    """A FlatLayResult's garment as the metrics read it: its alpha at EVAL_SIZE, > 0.5."""
    return downsample_mask(np.clip(result.alpha, 0.0, 1.0))


def score(result: Any, truth: Truth) -> tuple[dict[str, Any], np.ndarray]:
    """Metrics of one FlatLayResult against its truth, and the 256² output on white."""
    out = downsample_rgb(on_white(result.image))
    pred_mask = result_mask(result)
    metrics = score_image(out, pred_mask, result.category, result.canvas_landmarks, truth)
    metrics["category_confidence"] = result.category_confidence
    return metrics, out


def run_and_score(run: Any, truth: Truth, options: Any
                  ) -> tuple[dict[str, Any], Any, np.ndarray | None]:
    """One pipeline on one asset: its record (`failure` code or None, `seconds`, the
    metrics), the FlatLayResult and the 256² output on white (both None when the pipeline
    refused the photo with a PipelineError; any other exception propagates)."""
    from models.pipeline import PipelineError

    t0 = time.perf_counter()
    try:
        result = run(truth.photo, options)
    except PipelineError as exc:
        return {"failure": exc.code, "seconds": time.perf_counter() - t0}, None, None
    seconds = time.perf_counter() - t0
    metrics, out = score(result, truth)
    return {"failure": None, "seconds": seconds, **metrics}, result, out


def score_image(out: np.ndarray, pred_mask: np.ndarray, category: str | None,
                canvas_landmarks: np.ndarray | None, truth: Truth) -> dict[str, Any]:
    """Metrics of a 256² output on white and its 256² garment mask (see the module
    docstring)."""
    ssim_g, ssim_c = ssim_scores(out, truth.flat, truth.mask)
    metrics: dict[str, Any] = {
        "category": category,
        "category_ok": category == truth.category,
        "silhouette_iou": silhouette_iou(pred_mask, truth.mask),
        "landmark_nme": None,
        "ssim_garment": ssim_g,
        "ssim_canvas": ssim_c,
        "psnr": psnr(out, truth.flat),
        "delta_e": delta_e(out, truth.flat, truth.mask),
    }
    lm = canvas_landmarks
    if lm is not None and metrics["category_ok"]:
        lm = np.asarray(lm, dtype=np.float32)
        if lm.shape == truth.landmarks.shape and np.isfinite(lm).all():
            metrics["landmark_nme"] = landmark_nme(lm, truth.landmarks)
        else:
            metrics["landmark_invalid"] = True
    return metrics


# What a perfect generator, or a warp without error, behind `flatten`'s structure would
# score: rows of the benchmark built from flatten's own output and silhouette (`--ceilings`).
CEILINGS = ("ceiling: oracle colour", "ceiling: registration",
            "ceiling: registration, oracle colour", "ceiling: truth 64²",
            "ceiling: truth 128²", "ceiling: truth")


def ceiling_images(out: np.ndarray, alpha: np.ndarray, truth: Truth) -> dict[str, np.ndarray]:
    """`out`: flatten's 256² output on white, `alpha` its 256² alpha in [0, 1] → each
    ceiling's 256² image on white inside that silhouette: flatten with the one affine RGB map
    that best fits the truth (least squares on the garment); where the truth has
    `registered`, flatten with a warp that made no error (the photo's own pixels where they
    belong, flatten's where the photo does not show the garment), as it is and with the best
    affine RGB map; and the true flat-lay at 64², 128² (bicubic back up) and as it is."""
    a = alpha[..., None]
    fit = truth.mask & (alpha > 0.5)
    images = {"ceiling: oracle colour": _oracle_colour(out, truth.flat, fit)}
    if truth.registered is not None and truth.registered_known is not None:
        known = truth.registered_known[..., None]
        registered = np.where(known, truth.registered, out).astype(np.uint8)
        images["ceiling: registration"] = registered.astype(np.float64)
        images["ceiling: registration, oracle colour"] = _oracle_colour(
            registered, truth.flat, fit)
    for side in (64, 128):
        small = Image.fromarray(truth.flat).resize((side, side), Image.Resampling.BOX)
        images[f"ceiling: truth {side}²"] = np.asarray(
            small.resize(out.shape[:2][::-1], Image.Resampling.BICUBIC), np.float64)
    images["ceiling: truth"] = truth.flat.astype(np.float64)
    return {name: np.clip(img * a + 255.0 * (1 - a) + 0.5, 0, 255).astype(np.uint8)
            for name, img in images.items()}


def _oracle_colour(out: np.ndarray, target: np.ndarray, fit: np.ndarray) -> np.ndarray:
    """`out` through the one affine RGB map that best fits `target` on `fit` (least
    squares), float64; `out` as it is where fewer than 4 pixels fit."""
    x = np.c_[out.reshape(-1, 3).astype(np.float64), np.ones(out.shape[0] * out.shape[1])]
    if fit.sum() < 4:
        return out.astype(np.float64)
    m, *_ = np.linalg.lstsq(x[fit.ravel()], target[fit].astype(np.float64), rcond=None)
    return (x @ m).reshape(out.shape)


# ---- the run ------------------------------------------------------------------------------


def _mean(values: Sequence[float | None]) -> float | None:
    vals = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(vals)) if vals else None


def _round(v: Any, digits: int = 5) -> Any:
    if isinstance(v, float):
        return round(v, digits) if np.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _round(x, digits) for k, x in v.items()}
    if isinstance(v, list):
        return [_round(x, digits) for x in v]
    return v


def _summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Aggregates of one pipeline's per-asset records (see the module docstring)."""
    ok = [r for r in records if "failure" in r and r["failure"] is None]
    seconds = [r["seconds"] for r in records]
    named = [r for r in ok if r["category"] is not None]
    nmes = [r["landmark_nme"] for r in ok if r["landmark_nme"] is not None]
    out: dict[str, Any] = {
        "n": len(records),
        "n_ok": len(ok),
        "failures": dict(sorted(Counter(r["failure"] for r in records
                                        if r["failure"] is not None).items())),
        "category_accuracy": (sum(r["category_ok"] for r in ok) / len(ok)
                              if named and ok else None),
        "landmark_nme": _mean(nmes),
        "landmark_nme_n": len(nmes),
    }
    for key in IMAGE_METRICS:
        out[key] = _mean([r[key] for r in ok])
    if named:
        for side, want in (("right", True), ("wrong", False)):
            out[f"silhouette_iou_category_{side}"] = _mean(
                [r["silhouette_iou"] for r in ok if bool(r["category_ok"]) == want])
    out["landmark_invalid"] = sum(bool(r.get("landmark_invalid")) for r in ok)
    out.update(review_rates(ok))
    out["seconds_p50"] = float(np.percentile(seconds, 50)) if seconds else None
    out["seconds_p90"] = float(np.percentile(seconds, 90)) if seconds else None
    return out


def per_pattern(assets: list[dict[str, Any]], names: Sequence[str]) -> dict[str, Any]:
    """Garment SSIM and ΔE2000 per true pattern (`Truth.pattern`) and pipeline: the means of
    the whole table hardly tell a washed-out print from a solid garment's colour, and prints
    are what a catalog editor looks at first."""
    from models.attributes import PATTERNS

    out: dict[str, Any] = {}
    for pattern in [p for p in PATTERNS if any(a.get("pattern") == p for a in assets)]:
        mine = [a for a in assets if a.get("pattern") == pattern]
        out[pattern] = {}
        for name in names:
            ok = [a["pipelines"][name] for a in mine if name in a["pipelines"]
                  and a["pipelines"][name].get("failure") is None]
            out[pattern][name] = _round({"n": len(mine), "n_ok": len(ok), **{
                key: _mean([r[key] for r in ok]) for key in ("ssim_garment", "delta_e")}})
    return out


def category_confusion(assets: list[dict[str, Any]]) -> dict[str, Any]:
    """True category → decided category → count, for the first pipeline that decides one
    (stages 1–4 decide it alike for flatten, nearest and the generator's pipelines); a
    failed job counts as `failed`."""
    for name in next(iter(assets), {}).get("pipelines", {}):
        if any(a["pipelines"][name].get("category") for a in assets):
            table: dict[str, dict[str, int]] = {}
            for a in assets:
                rec = a["pipelines"][name]
                got = rec.get("category") or ("failed" if rec.get("failure") else "none")
                row = table.setdefault(a["category"], {})
                row[got] = row.get(got, 0) + 1
            return {"pipeline": name, "counts": dict(sorted(table.items()))}
    return {}


def review_rates(records: list[dict[str, Any]], below: float | None = None
                 ) -> dict[str, Any]:
    """How well `review_suggested` (category confidence below `below`, default
    models.attributes.REVIEW_CONFIDENCE) finds wrong categories: the share flagged and the
    wrong-category rate among the flagged and among the rest. Empty where no record has a
    confidence."""
    from models.attributes import REVIEW_CONFIDENCE

    below = REVIEW_CONFIDENCE if below is None else below
    rated = [r for r in records if r.get("category_confidence") is not None]
    if not rated:
        return {}
    flagged = [r for r in rated if r["category_confidence"] < below]
    rest = [r for r in rated if r["category_confidence"] >= below]

    def wrong(rs: list[dict[str, Any]]) -> float | None:
        return sum(not r["category_ok"] for r in rs) / len(rs) if rs else None

    return {"review_below": below, "review_share": len(flagged) / len(rated),
            "wrong_rate_flagged": wrong(flagged), "wrong_rate_rest": wrong(rest)}


def benchmark_quality(split: str = "test", n: int = 200, pipelines: Sequence[str] | None = None,
                      size: int = 1024, grid_rows: int = 8, progress: bool = True,
                      ceilings: bool = False, previous: dict[str, Any] | None = None
                      ) -> tuple[dict[str, Any], Image.Image | None]:
    """Run every pipeline in `pipelines` (default: the registry) on the first n seeds of
    `split`; with `ceilings`, add the CEILINGS rows (flatten is run for them). Returns the
    JSON-ready result and the before/after grid (None if grid_rows is 0). Raises ValueError
    for a bad split, n, size or pipeline name.

    With `previous` (an earlier result of the same split, n and size), only `pipelines` run
    on every seed: the previous result's other pipelines keep their records and run on the
    grid's seeds only (the first seed without a grid), to draw the grid and to check that
    those records still reproduce (ValueError naming the first that does not: then they must
    run again too). Ceiling rows are kept only while flatten is not re-run."""
    from tqdm import tqdm

    from models.eval import split_seeds
    from models.garments import GENERATOR_VERSION
    from models.pipeline import (
        PipelineOptions,
        check_output_size,
        get_pipeline,
        pipeline_names,
    )

    start = split_seeds(split, n).start
    check_output_size(size, "size")
    if grid_rows < 0:
        raise ValueError(f"grid rows must be non-negative, got {grid_rows}")
    names = list(dict.fromkeys(pipelines)) if pipelines is not None else pipeline_names()
    unknown = [p for p in names if p not in pipeline_names()]
    if unknown or not names:
        raise ValueError(f"unknown pipeline(s) {', '.join(unknown) or '(none given)'}; "
                         f"available: {', '.join(pipeline_names())}")
    if ceilings and "flatten" not in names:
        names.append("flatten")
    kept: list[str] = []
    if previous is not None:
        kept = _kept_rows(previous, split, start, n, size, names, ceilings)
    rows_of = list(dict.fromkeys([*(previous or {}).get("pipelines", {}), *names,
                                  *(CEILINGS if ceilings else ())]))
    rows_of = [r for r in rows_of if r in names or r in kept or (ceilings and r in CEILINGS)]
    checked = [k for k in kept if k not in CEILINGS]

    load_seconds: dict[str, float] = {}
    for name in [*names, *checked]:
        start_load = time.perf_counter()
        try:
            get_pipeline(name).load()  # not load_pipelines: that one skips what fails
        except Exception as exc:
            raise PipelineLoadError(f"pipeline {name!r} could not load ({exc}); leave it out "
                                    "with --pipelines") from exc
        load_seconds[name] = round(time.perf_counter() - start_load, 3)
    runners = {name: get_pipeline(name) for name in [*names, *checked]}
    recorded = {a["seed"]: a["pipelines"] for a in (previous or {}).get("assets", [])}
    assets: list[dict[str, Any]] = []
    grid: list[tuple[Truth, np.ndarray, dict[str, tuple[np.ndarray | None, dict]]]] = []
    wall = time.perf_counter()

    for seed in tqdm(range(start, start + n), desc=f"quality {split}", unit="asset",
                     disable=not progress):
        truth = load_truth(seed, size, registration=ceilings)
        options = PipelineOptions(output_size=size, background="#ffffff", preset=PRESET,
                                  seed=seed)
        row: dict[str, Any] = {"seed": seed, "category": truth.category,
                               "difficulty": round(truth.difficulty, 4), "scene": truth.scene,
                               "pattern": truth.pattern, "pipelines": {}}
        cells: dict[str, tuple[np.ndarray | None, dict]] = {}
        in_grid = len(grid) < grid_rows
        # Kept rows are checked on the grid's assets (on the first one without a grid).
        checking = seed - start < max(grid_rows, 1)
        for name in [*names, *(checked if checking else ())]:
            try:
                rec, result, out = run_and_score(runners[name], truth, options)
            except Exception as exc:
                raise RuntimeError(f"pipeline {name!r} crashed on seed {seed} "
                                   f"(split {split}): {exc!r}") from exc
            cells[name] = (out, rec)
            if name not in names:
                _check_reproduced(name, seed, recorded[seed][name], _round(dict(rec)))
                continue
            row["pipelines"][name] = _round(dict(rec))
            if ceilings and name == "flatten" and out is not None:
                alpha = downsample_alpha(np.clip(result.alpha, 0.0, 1.0))
                for ceiling, image in ceiling_images(out, alpha, truth).items():
                    crec = {"failure": None, "seconds": 0.0, **score_image(
                        image, alpha > 0.5, result.category, result.canvas_landmarks, truth)}
                    row["pipelines"][ceiling] = _round(dict(crec))
        fresh = row["pipelines"]
        row["pipelines"] = {p: fresh[p] if p in fresh else recorded[seed][p] for p in rows_of
                            if p in fresh or p in kept}
        assets.append(row)
        if in_grid:
            grid.append((truth, downsample_rgb(truth.photo),
                         {p: cells[p] for p in rows_of if p in cells}))

    result: dict[str, Any] = {
        "benchmark": "quality",
        "split": split,
        "seeds": [start, start + n - 1],
        "n": n,
        "size": size,
        "eval_size": EVAL_SIZE,
        "preset": PRESET,
        "generator_version": GENERATOR_VERSION,
        "pipelines": {},
        "per_category": {},
        "per_pattern": per_pattern(assets, rows_of),
        "wall_seconds": round(time.perf_counter() - wall, 2),
        "confusion": category_confusion(assets),
        "assets": assets,
    }
    if previous is not None:
        result["updated"] = {"re_run": names, "kept": kept,
                             "checked_on": min(n, max(grid_rows, 1))}

    def records(name: str, category: str | None = None) -> list[dict[str, Any]]:
        # A ceiling row has no record where flatten refused the photo.
        return [a["pipelines"][name] for a in assets if name in a["pipelines"]
                and category in (None, a["category"])]

    for name in rows_of:
        summary = _summary(records(name))
        summary["load_seconds"] = previous["pipelines"][name].get("load_seconds") \
            if name in kept else load_seconds.get(name)
        result["pipelines"][name] = _round(summary)
    for cat in sorted({a["category"] for a in assets}):
        result["per_category"][cat] = {}
        for name in rows_of:
            s = _summary(records(name, cat))
            result["per_category"][cat][name] = _round(
                {k: s[k] for k in ("n", "n_ok", "silhouette_iou", "landmark_nme",
                                   "landmark_nme_n", "category_accuracy")})
    image = grid_image(grid, [p for p in rows_of if p not in CEILINGS]) if grid else None
    return result, image


def _kept_rows(previous: dict[str, Any], split: str, start: int, n: int, size: int,
               names: list[str], ceilings: bool) -> list[str]:
    """The rows of an earlier result that an update keeps: its pipelines not re-run, and its
    ceiling rows while flatten is not re-run. Raises ValueError when it was another run
    (split, seeds, size, preset, garment world) or holds nothing to keep."""
    from models.garments import GENERATOR_VERSION

    want = {"split": split, "seeds": [start, start + n - 1], "size": size, "preset": PRESET,
            "eval_size": EVAL_SIZE, "generator_version": GENERATOR_VERSION}
    for key, value in want.items():
        if previous.get(key) != value:
            raise ValueError(f"the earlier result has {key} {previous.get(key)!r}, this run "
                             f"{value!r}: run every pipeline instead of updating")
    rows, assets = previous.get("pipelines"), previous.get("assets")
    kept = [p for p in rows if p not in names and (
        p not in CEILINGS or ("flatten" not in names and not ceilings))] \
        if isinstance(rows, dict) else []
    if not kept:
        raise ValueError("an update re-runs some pipelines and keeps the others, but the "
                         "earlier result has no other pipeline")
    def complete(asset: Any, seed: int) -> bool:
        return isinstance(asset, dict) and asset.get("seed") == seed and isinstance(
            asset.get("pipelines"), dict) and all(
                isinstance(asset["pipelines"].get(p), dict) for p in kept)

    if not isinstance(assets, list) or len(assets) != n or not all(
            complete(a, start + i) for i, a in enumerate(assets)):
        raise ValueError("the earlier result lacks the kept pipelines' per-asset records: run "
                         "every pipeline instead of updating")
    return kept


# How far a kept record's metric may be from a fresh run's and still be the same model: the
# CPU's float sums differ in the last digits between runs (noretrieval's ΔE on seed 1100004:
# 9.04659 recorded, 9.04663 again, the code unchanged); a changed model moves them by 1e-3
# and more.
REPRODUCE_TOLERANCE = 1e-4


def _same_metric(recorded: Any, now: Any) -> bool:  # noqa: ANN401
    numbers = (int, float)
    if isinstance(recorded, numbers) and isinstance(now, numbers) and not isinstance(
            recorded, bool) and not isinstance(now, bool):
        return math.isclose(recorded, now, rel_tol=REPRODUCE_TOLERANCE,
                            abs_tol=REPRODUCE_TOLERANCE)
    return recorded == now


def _check_reproduced(name: str, seed: int, recorded: dict[str, Any],
                      now: dict[str, Any]) -> None:
    """A kept pipeline's record on a grid asset against a fresh run: every metric but the
    seconds must be what was recorded (numbers within REPRODUCE_TOLERANCE)."""
    for key in sorted((set(recorded) | set(now)) - {"seconds"}):
        if not _same_metric(recorded.get(key), now.get(key)):
            raise ValueError(f"{name} on seed {seed} no longer reproduces its recorded {key} "
                             f"({recorded.get(key)!r}, now {now.get(key)!r}): re-run it too "
                             "(add it to --pipelines)")


# ---- for people ---------------------------------------------------------------------------

_TITLE_H = 30
_CAPTION_H = 34
_PAD = 4


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def grid_image(rows: list[tuple[Truth, np.ndarray, dict[str, tuple[np.ndarray | None, dict]]]],
               names: Sequence[str]) -> Image.Image:
    """Rows of assets; columns: the wild photo, each pipeline's output, the ground truth.
    Under each output its IoU, garment SSIM and ΔE (or the failure code)."""
    from models.garments.textures import _font

    title_font = _font("DejaVuSans-Bold.ttf", 15)
    font = _font("DejaVuSans.ttf", 11)
    cols = ["wild photo", *names, "ground truth"]
    cell_w, cell_h = EVAL_SIZE, EVAL_SIZE + _CAPTION_H
    sheet = Image.new("RGB", (len(cols) * (cell_w + _PAD) + _PAD,
                              _TITLE_H + len(rows) * (cell_h + _PAD) + _PAD), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for c, title in enumerate(cols):
        x = _PAD + c * (cell_w + _PAD)
        draw.text((x + cell_w // 2, _TITLE_H // 2 + 2), title, fill=(20, 20, 20),
                  font=title_font, anchor="mm")
    for r, (truth, photo, cells) in enumerate(rows):
        y = _TITLE_H + r * (cell_h + _PAD)
        tiles: list[tuple[np.ndarray | None, list[str]]] = [
            (photo, [f"#{truth.seed} {truth.category}",
                     f"{truth.scene} · difficulty {truth.difficulty:.2f}"])]
        for name in names:
            out, rec = cells[name]
            if out is None:
                tiles.append((None, [f"failed: {rec['failure']}", ""]))
            else:
                cat = ("" if rec["category_ok"] or rec["category"] is None
                       else f" · said {rec['category']}")
                tiles.append((out, [f"IoU {_fmt(rec['silhouette_iou'])} · "
                                    f"SSIMg {_fmt(rec['ssim_garment'])}",
                                    f"ΔE {_fmt(rec['delta_e'], 1)} · NME "
                                    f"{_fmt(rec['landmark_nme'])}{cat}"]))
        tiles.append((truth.flat, ["", ""]))
        for c, (img, caption) in enumerate(tiles):
            x = _PAD + c * (cell_w + _PAD)
            if img is None:
                draw.rectangle((x, y, x + cell_w - 1, y + EVAL_SIZE - 1), fill=(225, 225, 225))
                draw.line((x, y, x + cell_w - 1, y + EVAL_SIZE - 1), fill=(190, 60, 60), width=2)
            else:
                sheet.paste(Image.fromarray(img, "RGB"), (x, y))
            draw.rectangle((x - 1, y - 1, x + cell_w, y + EVAL_SIZE), outline=(200, 200, 200))
            for i, line in enumerate(caption):
                draw.text((x + 3, y + EVAL_SIZE + 3 + 15 * i), line, fill=(30, 30, 30), font=font)
    return sheet


_TABLE_COLS = [("n_ok", "ok", 0), ("silhouette_iou", "IoU", 3), ("landmark_nme", "NME", 4),
               ("landmark_nme_n", "NME n", 0), ("category_accuracy", "cat acc", 3),
               ("silhouette_iou_category_right", "IoU cat right", 3),
               ("silhouette_iou_category_wrong", "IoU cat wrong", 3),
               ("ssim_garment", "SSIM garment", 3), ("ssim_canvas", "SSIM canvas", 3),
               ("psnr", "PSNR dB", 2), ("delta_e", "ΔE2000", 2),
               ("seconds_p50", "s p50", 3), ("seconds_p90", "s p90", 3)]


def _failures(fails: dict[str, int]) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in fails.items()) or "—"


def format_table(result: dict[str, Any]) -> str:
    """The per-pipeline means as a plain-text table."""
    header = ["pipeline", *[label for _, label, _ in _TABLE_COLS], "failures"]
    body = []
    for name, s in result["pipelines"].items():
        body.append([name, *[_fmt(s[k], d) if d else _fmt(s[k]) for k, _, d in _TABLE_COLS],
                     _failures(s["failures"])])
    widths = [max(len(str(row[i])) for row in [header, *body]) for i in range(len(header))]
    lines = [f"quality · split {result['split']} · n {result['n']} · {result['size']} px "
             f"(metrics at {result['eval_size']} px)",
             "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True))
              for row in body]
    return "\n".join(lines)


def _provenance(updated: dict[str, Any] | None) -> str:
    if not updated:
        return ""
    return (f" Updated: {', '.join(updated['re_run'])} re-run; "
            f"{', '.join(updated['kept'])} kept from the recorded run (reproduced on its "
            f"first {updated['checked_on']} assets).")


def format_markdown(result: dict[str, Any], png_name: str | None) -> str:
    """Per-pipeline means, then IoU / NME per true category, garment SSIM / ΔE per true
    pattern, the category confusion and the review rates."""
    names = list(result["pipelines"])
    lines = [f"# quality-{result['split']}", "",
             f"Split `{result['split']}`, seeds {result['seeds'][0]}–{result['seeds'][1]} "
             f"(n = {result['n']}), photos and canvases {result['size']} px, `"
             f"{result['preset']}` preset; image metrics at {result['eval_size']}² "
             f"(`models/eval/quality.py` defines them). Garment world "
             f"{result['generator_version']}."
             + _provenance(result.get("updated")), "",
             "| pipeline | " + " | ".join(label for _, label, _ in _TABLE_COLS)
             + " | failures |",
             "|---|" + "---:|" * len(_TABLE_COLS) + "---|"]
    for name, s in result["pipelines"].items():
        cells = [_fmt(s[k], d) if d else _fmt(s[k]) for k, _, d in _TABLE_COLS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {_failures(s['failures'])} |")
    lines += ["", "Per true category: silhouette IoU / landmark NME (assets with a landmark "
              "NME, of those in the category).", "",
              "| category | n | " + " | ".join(names) + " |",
              "|---|---:|" + "---|" * len(names)]
    for cat, per in result["per_category"].items():
        n = next(iter(per.values()))["n"]
        cells = [f"{_fmt(p['silhouette_iou'])} / {_fmt(p['landmark_nme'], 4)} "
                 f"({p['landmark_nme_n']}/{p['n']})" for p in per.values()]
        lines.append(f"| {cat} | {n} | " + " | ".join(cells) + " |")
    patterns = result.get("per_pattern") or {}
    if patterns:
        lines += ["", "Per true pattern (the fabric's, or a front print's): garment SSIM / "
                  "ΔE2000.", "",
                  "| pattern | n | " + " | ".join(names) + " |",
                  "|---|---:|" + "---|" * len(names)]
        for pattern, per in patterns.items():
            n = next(iter(per.values()))["n"]
            cells = [f"{_fmt(per[p]['ssim_garment'])} / {_fmt(per[p]['delta_e'], 2)}"
                     for p in names]
            lines.append(f"| {pattern} | {n} | " + " | ".join(cells) + " |")
    confusion = result.get("confusion") or {}
    if confusion:
        counts = confusion["counts"]
        seen = sorted({c for row in counts.values() for c in row})
        lines += ["", f"Category confusion ({confusion['pipeline']}): true category (rows) → "
                  "decided category (columns), counts "
                  f"(`quality-{result['split']}-confusion.png`).", "",
                  "| true \\ decided | " + " | ".join(seen) + " | accuracy |",
                  "|---|" + "---:|" * (len(seen) + 1)]
        for cat, row in counts.items():
            total = sum(row.values())
            cells = [str(row.get(c, "")) if c != cat else f"**{row.get(c, 0)}**" for c in seen]
            lines.append(f"| {cat} | " + " | ".join(cells)
                         + f" | {row.get(cat, 0) / total:.2f} |")
    reviewed = {name: s for name, s in result["pipelines"].items() if "review_share" in s}
    if reviewed:
        below = next(iter(reviewed.values()))["review_below"]
        lines += ["", f"Review suggested (category confidence below {below}): share of "
                  "assets flagged, and how often the category is wrong among the flagged "
                  "and among the rest.", "",
                  "| pipeline | flagged | wrong among flagged | wrong among the rest |",
                  "|---|---:|---:|---:|"]
        lines += [f"| {name} | {_fmt(s['review_share'])} | {_fmt(s['wrong_rate_flagged'])} "
                  f"| {_fmt(s['wrong_rate_rest'])} |" for name, s in reviewed.items()]
    if png_name:
        lines += ["", f"![wild photo, each pipeline, ground truth]({png_name})"]
    return "\n".join(lines) + "\n"


def confusion_image(confusion: dict[str, Any], cell: int = 34) -> Image.Image:
    """The category confusion as a picture: rows true, columns decided, each cell shaded by
    its share of the row (the diagonal green, the rest red), counts written in."""
    from PIL import ImageDraw

    from models.garments.textures import _font

    counts = confusion["counts"]
    rows = list(counts)
    cols = rows + sorted({c for r in counts.values() for c in r} - set(rows))
    font = _font("DejaVuSans.ttf", 11)
    label = 118
    img = Image.new("RGB", (label + cell * len(cols) + 8, label + cell * len(rows) + 8),
                    "white")
    draw = ImageDraw.Draw(img)
    for j, c in enumerate(cols):  # column labels, written upwards
        text = Image.new("RGB", (label - 6, cell), "white")
        ImageDraw.Draw(text).text((2, cell // 2), c, fill="black", font=font, anchor="lm")
        img.paste(text.rotate(90, expand=True), (label + j * cell, 2))
    for i, r in enumerate(rows):
        y = label + i * cell
        draw.text((label - 6, y + cell // 2), r, fill="black", font=font, anchor="rm")
        total = max(1, sum(counts[r].values()))
        for j, c in enumerate(cols):
            n = counts[r].get(c, 0)
            share = n / total
            tint = (int(255 - 150 * share), 255, int(255 - 150 * share)) if r == c else (
                255, int(255 - 200 * share), int(255 - 200 * share))
            x = label + j * cell
            draw.rectangle((x, y, x + cell - 1, y + cell - 1), fill=tint, outline="#cccccc")
            if n:
                draw.text((x + cell // 2, y + cell // 2), str(n), fill="black", font=font,
                          anchor="mm")
    return img


def write_report(result: dict[str, Any], grid: Image.Image | None,
                 out_dir: str | Path) -> dict[str, Path]:
    """quality-{split}.json, .md, (with a grid) .png and (where a pipeline decides the
    category) -confusion.png under out_dir; returns the paths."""
    from models.eval import write_json_md

    out = Path(out_dir)
    stem = f"quality-{result['split']}"
    paths = write_json_md(result, format_markdown(result, f"{stem}.png" if grid else None),
                          out, stem)
    if grid is not None:
        paths["png"] = out / f"{stem}.png"
        grid.save(paths["png"], optimize=True)
    if result.get("confusion"):
        paths["confusion"] = out / f"{stem}-confusion.png"
        confusion_image(result["confusion"]).save(paths["confusion"], optimize=True)
    return paths
