"""The attributes benchmark (`flatlay bench attributes`): the catalog attributes of a
pipeline's flat-lay against the garment world's truth.

For each of the first n seeds of a split, `generate(seed, size=size)` gives the wild photo
(its JPEG, decoded as the service would) and the truth. The pipeline (the command's default:
the service's) turns the photo into a `size`² `square-white` canvas, and
`models.pattern.delivered_attributes` reads the attributes from it exactly as the worker
does. The truth is the same function on the truth: the true category, the TRUE flat-lay
landmarks (canonical frame) and the true flat-lay's pixels and mask, so the benchmark
measures the pipeline, not a second definition.

- accuracy per attribute (category, sleeve_length, length, neckline, pattern, closure): over
  the assets whose truth has the attribute; a failed job, or a missing or different
  prediction, is wrong.
  `_given_category` is the same over the assets whose category came out right.
- colours: the dominant (largest share) colour of the output against the truth's dominant
  colour: `color_name_accuracy` (same vocabulary name), `color_delta_e_median` (CIEDE2000
  between the two measured colours, their hex), `color_within_5` (share of assets with
  that ΔE ≤ 5; a failed job or no colour counts as outside).
- attribute_ms_p50 / _p90: wall time of `garment_attributes` per asset (what the worker adds
  to a job), and pipeline_seconds_p50.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

# Scored by exact match; `pattern` and `closure` are read from the pixels by models.pattern.
STRUCTURE_ATTRIBUTES = ("category", "sleeve_length", "length", "neckline", "pattern",
                        "closure")
PRESET = "square-white"
WITHIN = 5.0


def _value(attrs: dict[str, Any], name: str) -> str | None:
    v = attrs.get(name)
    return v.get("value") if isinstance(v, dict) else v


def _hex_lab(value: str) -> np.ndarray:
    from models.attributes import _lab

    return _lab(np.array([[int(value[i:i + 2], 16) for i in (1, 3, 5)]]))[0]


def truth_attributes(sample: Any) -> dict[str, Any]:  # noqa: ANN401 (GarmentSample)
    """The attributes of a garment-world sample's truth (true category, landmarks, flat-lay)."""
    from models.attributes import garment_attributes, world_closure, world_pattern

    return garment_attributes(sample.category, sample.flat_landmarks, sample.flat_image,
                              sample.flat_mask, category_confidence=1.0,
                              pattern=world_pattern(sample.attributes),
                              closure=world_closure(sample.category,
                                                    sample.attributes["shape"]))


def benchmark_attributes(pipeline: str, split: str = "test", n: int = 60,
                         size: int = 1024, progress: bool = True) -> dict[str, Any]:
    """Run `pipeline` on the first n seeds of `split`; the JSON-ready result (see module
    docstring). Raises ValueError for a bad split, n or size."""
    from tqdm import tqdm

    from models.attributes import delta_e2000
    from models.eval import split_seeds
    from models.garments import GENERATOR_VERSION, generate
    from models.io import decode_image
    from models.pattern import delivered_attributes
    from models.pipeline import (
        PipelineError,
        PipelineOptions,
        check_output_size,
        get_pipeline,
    )

    seeds = split_seeds(split, n)
    start = seeds.start
    check_output_size(size, "size")
    run = get_pipeline(pipeline)
    run.load()
    assets: list[dict[str, Any]] = []
    attr_ms: list[float] = []
    pipe_s: list[float] = []
    for seed in tqdm(range(start, start + n), desc=f"attributes {split}", unit="asset",
                     disable=not progress):
        s = generate(seed, size=size)
        photo = decode_image(s.wild_jpeg) if s.wild_jpeg else s.wild_image
        truth = truth_attributes(s)
        row: dict[str, Any] = {"seed": seed, "truth": truth, "failure": None}
        t0 = time.perf_counter()
        try:
            result = run(photo, PipelineOptions(output_size=size, preset=PRESET, seed=seed))
        except PipelineError as exc:
            row["failure"] = exc.code
            pipe_s.append(time.perf_counter() - t0)
            assets.append(row)
            continue
        pipe_s.append(time.perf_counter() - t0)
        t1 = time.perf_counter()
        pred = delivered_attributes(result)
        attr_ms.append(1000 * (time.perf_counter() - t1))
        row["predicted"] = pred
        if pred["colors"] and truth["colors"]:
            row["color_delta_e"] = float(delta_e2000(_hex_lab(pred["colors"][0]["hex"]),
                                                     _hex_lab(truth["colors"][0]["hex"])))
        assets.append(row)

    summary: dict[str, Any] = {}
    confusion: dict[str, dict[str, int]] = {}
    for name in STRUCTURE_ATTRIBUTES:
        rows = [r for r in assets if _value(r["truth"], name) is not None]
        hits = [r.get("predicted") is not None
                and _value(r["predicted"], name) == _value(r["truth"], name) for r in rows]
        right_cat = [h for r, h in zip(rows, hits, strict=True) if r.get("predicted")
                     and _value(r["predicted"], "category") == r["truth"]["category"]["value"]]
        summary[name] = {
            "n": len(rows),
            "accuracy": float(np.mean(hits)) if rows else None,
            "accuracy_given_category": float(np.mean(right_cat)) if right_cat else None,
            "n_given_category": len(right_cat),
        }
        pairs = Counter(f"{_value(r['truth'], name)} → "
                        f"{_value(r.get('predicted') or {}, name)}" for r in rows)
        confusion[name] = dict(sorted(pairs.items()))
    colored = [r for r in assets if r["truth"]["colors"]]
    des = [r.get("color_delta_e") for r in colored]
    names_ok = [bool(r.get("predicted") and r["predicted"]["colors"]
                     and r["predicted"]["colors"][0]["name"] == r["truth"]["colors"][0]["name"])
                for r in colored]
    measured = [d for d in des if d is not None]
    summary["colors"] = {
        "n": len(colored),
        "color_name_accuracy": float(np.mean(names_ok)) if colored else None,
        "color_delta_e_median": float(np.median(measured)) if measured else None,
        "color_within_5": (float(np.mean([d is not None and d <= WITHIN for d in des]))
                           if colored else None),
    }
    confs = [r["predicted"]["category"]["confidence"] for r in assets
             if r.get("predicted") and r["predicted"].get("category")
             and r["predicted"]["category"]["confidence"] is not None]
    return {
        "benchmark": "attributes",
        "split": split,
        "seeds": [start, start + n - 1],
        "n": n,
        "size": size,
        "pipeline": pipeline,
        "preset": PRESET,
        "generator_version": GENERATOR_VERSION,
        "failures": dict(Counter(r["failure"] for r in assets if r["failure"])),
        "attributes": summary,
        "category_confidence_mean": float(np.mean(confs)) if confs else None,
        "attribute_ms_p50": float(np.percentile(attr_ms, 50)) if attr_ms else None,
        "attribute_ms_p90": float(np.percentile(attr_ms, 90)) if attr_ms else None,
        "pipeline_seconds_p50": float(np.percentile(pipe_s, 50)) if pipe_s else None,
        "confusion": confusion,
        "assets": assets,
    }


def _fmt(v: Any, digits: int = 3) -> str:  # noqa: ANN401
    return "—" if v is None else f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(attribute, n, metric, value) rows of the summary."""
    rows = []
    for name in STRUCTURE_ATTRIBUTES:
        s = result["attributes"][name]
        rows.append((name, str(s["n"]), "accuracy", _fmt(s["accuracy"])))
        if name != "category":  # for the category itself that is 1 by definition
            rows.append((name, str(s["n_given_category"]), "accuracy, category right",
                         _fmt(s["accuracy_given_category"])))
    c = result["attributes"]["colors"]
    rows += [("colors", str(c["n"]), "dominant name accuracy", _fmt(c["color_name_accuracy"])),
             ("colors", str(c["n"]), "dominant ΔE2000 median", _fmt(c["color_delta_e_median"],
                                                                     2)),
             ("colors", str(c["n"]), "dominant ΔE2000 ≤ 5", _fmt(c["color_within_5"]))]
    return rows


def format_table(result: dict[str, Any]) -> str:
    rows = [("attribute", "n", "metric", "value"), *table_rows(result)]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"attributes · split {result['split']} · n {result['n']} · {result['pipeline']} · "
             f"{result['size']} px · attributes {_fmt(result['attribute_ms_p50'], 1)} ms p50"]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    lines = [f"# attributes-{result['split']}", "",
             f"Split `{result['split']}`, seeds {result['seeds'][0]}–{result['seeds'][1]} "
             f"(n = {result['n']}), pipeline `{result['pipeline']}`, {result['size']} px "
             f"`{result['preset']}` canvases; truth from the same functions on the true "
             f"landmarks and flat-lay (`models/eval/attributes.py`). Garment world "
             f"{result['generator_version']}. Failures: "
             f"{', '.join(f'{k} ×{v}' for k, v in result['failures'].items()) or 'none'}.", "",
             "| attribute | n | metric | value |", "|---|---:|---|---:|"]
    lines += [f"| {a} | {n} | {m} | {v} |" for a, n, m, v in table_rows(result)]
    lines += ["", f"Attributes per job: {_fmt(result['attribute_ms_p50'], 1)} ms p50, "
              f"{_fmt(result['attribute_ms_p90'], 1)} ms p90 (pipeline "
              f"{_fmt(result['pipeline_seconds_p50'], 2)} s p50); mean category confidence "
              f"{_fmt(result['category_confidence_mean'])}.", "",
              "Truth → prediction counts:", ""]
    for name, pairs in result["confusion"].items():
        lines.append(f"- {name}: " + ", ".join(f"{k} ×{v}" for k, v in pairs.items()))
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], out_dir: str | Path) -> dict[str, Path]:
    """attributes-{split}.json and .md under out_dir; returns the paths."""
    from models.eval import write_json_md

    return write_json_md(result, format_markdown(result), out_dir,
                         f"attributes-{result['split']}")
