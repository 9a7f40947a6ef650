"""`flatlay bench quality --hints`: what a text hint buys on the hardest photos.

The hard photos of a split are the ones that hide the structure: an occluder on the garment
or at least HARD_HIDDEN of its landmarks hidden (occluded or out of frame). Each goes through
the pipeline once per VARIANTS: without a hint; with a correct one (the garment world's true
structure described in full words: category, sleeve length, length, neckline) under each
fusion mode (restrict the structures fused to those the hint favours, re-rank by moving the
query towards the hint, or the category decision only); and a wrong one (another category's
garment in words). Category accuracy, silhouette IoU and landmark NME as in
`flatlay bench quality`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

HARD_HIDDEN = 0.25
# Each variant: the hint given and the fusion mode (StructureAligner.HINT_FUSION) it runs with.
VARIANTS: dict[str, tuple[str | None, str]] = {
    "no hint": (None, "restrict"),
    "correct hint, restrict": ("correct", "restrict"),
    "correct hint, re-rank": ("correct", "rerank"),
    "correct hint, category only": ("correct", "category"),
    "wrong hint, restrict": ("wrong", "restrict"),
    "wrong hint, re-rank": ("wrong", "rerank"),
}


def full_description(attributes: dict[str, str]) -> str:
    """Every attribute in its first (plainest) words: the hint a careful catalog gives."""
    from models.hints import ATTRIBUTE_WORDS

    words = [ATTRIBUTE_WORDS[k][v][0] for k, v in attributes.items() if k != "category"]
    noun = ATTRIBUTE_WORDS["category"][attributes["category"]][0]
    return f"{noun}, {', '.join(words)}" if words else noun


def hard_seeds(split: str, n: int, limit: int = 20) -> list[int]:
    """The first n seeds of `split` whose photo hides the structure (see module doc)."""
    from models.eval import split_seeds
    from models.garments import generate

    start = split_seeds(split, 1).start
    out: list[int] = []
    for seed in range(start, start + limit * n):
        s = generate(seed, size=64)
        hidden = 1.0 - float(np.mean(s.wild_visibility))
        if s.attributes["wild"].get("occluders") or hidden >= HARD_HIDDEN:
            out.append(seed)
            if len(out) == n:
                return out
    raise ValueError(f"only {len(out)} hard photos in the first {limit * n} seeds of {split}")


def benchmark_hints(split: str = "test", n: int = 100, pipeline: str = "flatten",
                    size: int = 1024, progress: bool = True) -> dict[str, Any]:
    """The VARIANTS on the first n hard photos of `split` through `pipeline`."""
    from tqdm import tqdm

    from models.eval import split_seeds
    from models.eval.quality import _round, _summary, load_truth, run_and_score
    from models.garments import CATEGORIES, generate
    from models.hints import structure_attributes
    from models.pipeline import (
        PipelineOptions,
        check_output_size,
        get_pipeline,
        pipeline_names,
    )
    from models.pipelines.stages import StructureAligner

    split_seeds(split, n)  # a bad split or n fails here, before anything loads
    check_output_size(size, "size")
    if pipeline not in pipeline_names():
        raise ValueError(f"unknown pipeline {pipeline!r}; available: "
                         f"{', '.join(pipeline_names())}")
    run = get_pipeline(pipeline)
    run.load()
    seeds = hard_seeds(split, n)
    rng = np.random.default_rng(0)
    records: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    assets = []
    wall = time.perf_counter()
    for seed in tqdm(seeds, desc=f"hints {split}", unit="asset", disable=not progress):
        truth = load_truth(seed, size)
        right = full_description(structure_attributes(truth.category, truth.landmarks))
        other = str(rng.choice([c for c in CATEGORIES if c != truth.category]))
        g = next(sample for sample in (generate(s, size=64)
                                       for s in range(seed + 1, seed + 10_000))
                 if sample.category == other)
        wrong = full_description(structure_attributes(g.category, g.flat_landmarks))
        row: dict[str, Any] = {"seed": seed, "category": truth.category, "correct": right,
                               "wrong": wrong, "variants": {}}
        shipped = StructureAligner.HINT_FUSION
        for variant, (which, fusion) in VARIANTS.items():
            hint = {"correct": right, "wrong": wrong}.get(which or "")
            options = PipelineOptions(output_size=size, background="#ffffff", seed=seed,
                                      hint=hint)
            StructureAligner.HINT_FUSION = fusion
            try:
                rec, result, _ = run_and_score(run, truth, options)
            finally:
                StructureAligner.HINT_FUSION = shipped
            if result is not None:
                rec.update(won=(result.hint or {}).get("won"),
                           retrieve_s=result.timings.get("retrieve"))
            records[variant].append(rec)
            row["variants"][variant] = _round(dict(rec))
        assets.append(row)
    result: dict[str, Any] = {"benchmark": "quality --hints", "split": split, "n": n,
                              "pipeline": pipeline, "size": size, "hard_hidden": HARD_HIDDEN,
                              "wall_seconds": round(time.perf_counter() - wall, 1),
                              "variants": {}, "assets": assets}
    for variant in VARIANTS:
        s = _summary(records[variant])
        won = [r.get("won") for r in records[variant] if r.get("won")]
        s["won"] = {w: won.count(w) for w in sorted(set(won))}
        retrieve = [r["retrieve_s"] for r in records[variant] if r.get("retrieve_s")]
        s["retrieve_ms_p50"] = round(1000 * float(np.median(retrieve)), 2) if retrieve else None
        result["variants"][variant] = _round(s)
    return result


_COLS = (("category_accuracy", "category acc.", 3), ("silhouette_iou", "IoU", 3),
         ("landmark_nme", "NME", 4), ("retrieve_ms_p50", "retrieve ms p50", 1))


def format_table(result: dict[str, Any]) -> str:
    lines = [f"quality --hints · {result['pipeline']} · split {result['split']} · "
             f"{result['n']} hard photos",
             "| variant | " + " | ".join(label for _, label, _ in _COLS) + " | decided by |",
             "|---|" + "---:|" * len(_COLS) + "---|"]
    for variant, s in result["variants"].items():
        cells = [("—" if s.get(k) is None else f"{s[k]:.{d}f}") for k, _, d in _COLS]
        won = ", ".join(f"{k} {v}" for k, v in s["won"].items()) or "—"
        lines.append(f"| {variant} | " + " | ".join(cells) + f" | {won} |")
    return "\n".join(lines)


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    from models.eval import write_json_md

    return write_json_md(
        result,
        f"# Text hints on hard photos ({result['split']})\n\n"
        f"`flatlay bench quality --hints --split {result['split']} --n {result['n']}`: the first "
        f"{result['n']} photos of the split with an occluder on the garment or at least "
        f"{result['hard_hidden']:.0%} of its landmarks hidden, through `{result['pipeline']}` "
        f"at {result['size']} px. *correct*: the true structure in words (e.g. "
        f"\"{result['assets'][0]['correct']}\"); *wrong*: another category's garment in words; "
        "*restrict* / *re-rank* / *category only*: what the hint does to the structures "
        "fused besides the category decision (StructureAligner.HINT_FUSION). "
        f"Wall time {result['wall_seconds']} s.\n\n{format_table(result)}\n",
        out_dir, f"hints-{result['split']}")
