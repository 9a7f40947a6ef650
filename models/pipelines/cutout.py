"""`cutout`: the garment as a background remover gives it, the baseline every other pipeline
must beat (DESIGN.md, baselines)."""

from __future__ import annotations

import numpy as np

from models.compose import CATALOG_FILL, parse_background
from models.pipeline import (
    FlatLayResult,
    PipelineError,
    PipelineOptions,
    ProgressFn,
    StageClock,
    preset_fill,
)
from models.pipelines.stages import load_parser


class CutoutPipeline:
    """Baseline: the garment mask, tight crop, centered on the canvas.

    What a background remover gives: no flattening, no structure. Later pipelines must
    beat it on the quality benchmark. With the learned parser's weights present, its mask
    replaces the classical one and its landmarks are carried onto the canvas (for the
    overlay and the benchmark); without, the classical border colour model is used.
    """

    name = "cutout"
    stages = ["parse", "compose"]
    def __init__(self) -> None:
        self.parser = None

    def load(self) -> None:
        from models.parser import PARSER_WEIGHTS

        if (PARSER_WEIGHTS / "config.json").is_file():
            self.parser = load_parser()

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        from models.compose import draw_overlay, over_background, place_garment
        from models.parser import classical_garment_mask  # keeps the API free of torch

        clock = StageClock(self.stages, progress)
        with clock.stage("parse"):
            try:
                # Fails on photos with nothing in them, which the learned parser would not.
                alpha = classical_garment_mask(rgb)
            except ValueError as exc:
                raise PipelineError("garment_not_found", str(exc)) from None
            parsed = None
            if self.parser is not None:
                parsed = self.parser.parse(rgb)
                # The learned mask wins on the test split (IoU 0.90 vs 0.54,
                # `flatlay bench parser`), so it replaces the classical one when not empty.
                if (parsed.mask > 0.5).mean() >= 0.002:
                    alpha = parsed.mask
        with clock.stage("compose"):
            placed = place_garment(rgb, alpha, options.output_size,
                                   preset_fill(options, CATALOG_FILL))
            canvas = over_background(placed.layer, parse_background(options.background))
            category = landmarks = confidence = None
            if parsed is not None:
                category = parsed.category
                confidence = parsed.category_probs.get(category)
                landmarks = placed.to_canvas(parsed.landmarks, rgb.shape[:2])
            overlay = draw_overlay(canvas, placed.alpha, landmarks, category)
        return FlatLayResult(image=canvas, alpha=placed.alpha, category=category,
                             landmarks=landmarks, canvas_landmarks=landmarks, overlay=overlay,
                             timings=clock.timings, frame="canvas",
                             category_confidence=confidence)
