"""One photo through a pipeline, without the job store: decode, the pipeline's stages, encode,
and the compliance check of what is delivered.

The worker's job (workers.jobs), `flatlay generate` (workers.local) and the stage benchmark
(bench/bench_stages.py) all run a photo through here; it imports models only, not the service.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from models.io import ImageLimits, decode_image, encode_image
from models.pipeline import (
    PipelineError,
    PipelineOptions,
    ProgressFn,
    StructureSpec,
    run_pipeline,
    side_output_files,
)
from models.presets import DEFAULT_PRESET, check_compliance, get_preset
from structure_bank.validate import InvalidStructure


@dataclass
class FlatLayOutput:
    """What one photo gives: the delivered image, its side outputs and its compliance check.

    data, content_type: the encoded image. side_outputs: name → encoded file (see
    models.pipeline.SIDE_OUTPUTS; only those the pipeline produced). compliance: the
    delivered image checked against the job's preset (models.presets.check_compliance).
    attributes: the catalog attributes of the delivered garment (models.attributes).
    """

    data: bytes
    content_type: str
    side_outputs: dict[str, bytes]
    compliance: dict[str, Any]
    attributes: dict[str, Any]


def pipeline_options(options: dict[str, Any]) -> PipelineOptions:
    """The pipeline's options from a job's stored options (output_size, background, seed,
    preset, structure in its JSON form, steps, hint). Raises InvalidStructure or
    ValueError."""
    structure = options.get("structure")
    return PipelineOptions(
        output_size=options["output_size"], background=options["background"],
        seed=options.get("seed"), preset=options.get("preset") or DEFAULT_PRESET,
        structure=StructureSpec.parse(structure) if structure is not None else None,
        steps=options.get("steps"), hint=options.get("hint"),
    )


def decode_delivered(data: bytes) -> np.ndarray:
    """The delivered bytes as the buyer's software sees them: (H, W, 3) or, when the file
    has an alpha channel, (H, W, 4) uint8."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        alpha = "A" in img.getbands() or "transparency" in img.info
        return np.asarray(img.convert("RGBA" if alpha else "RGB"))


def flatten_photo(
    data: bytes,
    pipeline: str,
    options: dict[str, Any],
    limits: ImageLimits,
    timings: dict[str, float],
    progress: ProgressFn | None = None,
) -> FlatLayOutput:
    """The work of one job without the job store: photo bytes → image, side outputs and
    compliance.

    options: output_size, background, format, seed, preset, structure (as stored on the job
    row). `timings` fills with seconds per stage as each one ends, so a failure still says
    where time went. progress(stage, percent) spans the whole job: decode 0, the pipeline's
    stages 5–90, encode 90, check 95 (and the attributes, timed as `attributes`).
    """
    report = progress or (lambda stage, percent: None)
    try:
        pipeline_opts = pipeline_options(options)
    except InvalidStructure as exc:
        raise PipelineError("invalid_structure", f"{exc.field}: {exc.message}") from None
    report("decode", 0)
    start = time.perf_counter()
    rgb = decode_image(data, limits)
    timings["decode"] = round(time.perf_counter() - start, 6)

    result = run_pipeline(
        pipeline, rgb, pipeline_opts, lambda stage, pct: report(stage, 5 + pct * 85 // 100)
    )
    timings.update(result.timings)

    report("encode", 90)
    start = time.perf_counter()
    encoded, content_type = encode_image(result.image, options["format"])
    side = side_output_files(result)
    timings["encode"] = round(time.perf_counter() - start, 6)

    # On the bytes the caller gets, not on the canvas: JPEG and WebP change pixels.
    report("check", 95)
    start = time.perf_counter()
    compliance = check_compliance(decode_delivered(encoded), result.alpha,
                                  get_preset(pipeline_opts.preset), options["format"],
                                  pipeline_opts.background)
    timings["check"] = round(time.perf_counter() - start, 6)

    from models.pattern import delivered_attributes  # torch: loaded where a job runs

    start = time.perf_counter()
    # From the canvas the pipeline composed (the garment's own pixels, before JPEG/WebP).
    attributes = delivered_attributes(result)
    side["attributes"] = json.dumps(attributes).encode()
    timings["attributes"] = round(time.perf_counter() - start, 6)
    return FlatLayOutput(encoded, content_type, side, compliance, attributes)
