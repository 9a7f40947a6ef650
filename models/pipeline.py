"""Named pipelines with one signature: RGB photo + options → flat-lay canvas.

Every pipeline, baseline or not, is called the same way, so the service, the CLI and the
benchmarks can swap them by name. The registry maps names to import paths and imports a
pipeline only when it is built, so listing names costs nothing (the API validates them
without loading any model).
"""

from __future__ import annotations

import functools
import importlib
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.compose import parse_background
from models.presets import DEFAULT_PRESET, get_preset

ProgressFn = Callable[[str, int], None]


class PipelineError(ValueError):
    """A photo the pipeline cannot turn into a flat-lay; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class StructureSpec:
    """A structure given by a person instead of retrieval: category and (L, 2) canonical
    landmarks, already checked by `structure_bank.validate.check_structure`."""

    category: str
    landmarks: np.ndarray

    @classmethod
    def parse(cls, value: Any) -> StructureSpec:
        """From the JSON form of the `landmarks` side output ({"category", "landmarks"}).
        Raises structure_bank.validate.InvalidStructure naming the bad field or point."""
        from structure_bank.validate import InvalidStructure, check_structure

        if not isinstance(value, dict) or "category" not in value or "landmarks" not in value:
            raise InvalidStructure(
                "structure", 'a structure is a JSON object {"category": ..., "landmarks": '
                "[[x, y], ...]} (the landmarks side output of an earlier job)")
        category = value["category"]
        if not isinstance(category, str):
            raise InvalidStructure("category", "category must be a string")
        return cls(category, check_structure(category, value["landmarks"]))

    def to_json(self) -> dict[str, Any]:
        return {"category": self.category,
                "landmarks": [[round(float(x), 6), round(float(y), 6)]
                              for x, y in self.landmarks]}


@dataclass(frozen=True)
class PipelineOptions:
    """Per-request options shared by every pipeline.

    output_size: canvas side in px (256–2048). background: 'transparent' or a hex colour.
    seed: for pipelines that sample; deterministic pipelines ignore it. preset: the output
    preset (models.presets) whose placement rule applies. structure: replaces retrieval.
    steps: the generator's sampling steps (1–50; None: its default).
    """

    output_size: int = 1024
    background: str = "#ffffff"
    seed: int | None = None
    preset: str = DEFAULT_PRESET
    structure: StructureSpec | None = None
    # Sampling steps of the generative pipelines (None: the generator's default).
    steps: int | None = None

    def __post_init__(self) -> None:
        if self.steps is not None and not 1 <= self.steps <= 50:
            raise ValueError(f"steps {self.steps} is outside 1–50")
        if not 256 <= self.output_size <= 2048:
            raise ValueError(f"output_size {self.output_size} is outside 256–2048")
        parse_background(self.background)
        get_preset(self.preset)


@dataclass
class FlatLayResult:
    """One flat-lay and what explains it.

    image: (S, S, 4) uint8 RGBA canvas. alpha: (S, S) float32 garment alpha on the canvas
    (also where the background is, for the compliance check). category: the garment's
    category, if the pipeline knows it. landmarks: (L, 2) float32 canonical-frame landmarks of
    the garment as delivered (the form `structure` accepts back); canvas_landmarks: the same
    in the output canvas's unit square (see `frame`). neighbours: retrieved bank entries with
    SLLE weights. overlay: (S, S, 4) uint8 picture of the structure over the result.
    timings: seconds per stage, in stage order.
    """

    image: np.ndarray
    alpha: np.ndarray
    category: str | None = None
    landmarks: np.ndarray | None = None
    canvas_landmarks: np.ndarray | None = None
    neighbours: list[dict] | None = None
    overlay: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    # (S, S, 3) uint8: the warp the generator started from (W), where a pipeline has one.
    coarse: np.ndarray | None = None
    # "canonical"; "canvas" where a pipeline has no canonical frame (cutout: the parsed
    # landmarks carried onto its canvas).
    frame: str = "canonical"
    # The pipeline's belief in `category` (0–1), where it has one (None: given by the
    # request's structure, or a pipeline that does not say).
    category_confidence: float | None = None

    def structure_json(self) -> dict[str, Any] | None:
        if self.category is None or self.landmarks is None:
            return None
        from models.garments import landmark_names

        out = StructureSpec(self.category, self.landmarks).to_json()
        out["names"] = list(landmark_names(self.category))
        out["frame"] = self.frame
        if self.canvas_landmarks is not None:
            out["canvas_landmarks"] = [[round(float(x), 6), round(float(y), 6)]
                                       for x, y in self.canvas_landmarks]
        return out


# Side outputs stored with every job: name → (file extension, content type).
SIDE_OUTPUTS: dict[str, tuple[str, str]] = {
    "mask": ("png", "image/png"),
    "landmarks": ("json", "application/json"),
    "neighbours": ("json", "application/json"),
    "overlay": ("png", "image/png"),
    "coarse": ("png", "image/png"),
    # Catalog attributes (models.attributes), computed by the worker after the pipeline.
    "attributes": ("json", "application/json"),
}


def side_output_files(result: FlatLayResult) -> dict[str, bytes]:
    """The side outputs this result has, encoded (see SIDE_OUTPUTS for types)."""
    import io
    import json

    from PIL import Image

    def png(array: np.ndarray, mode: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array, mode).save(buf, "PNG", compress_level=3)
        return buf.getvalue()

    files = {"mask": png((np.clip(result.alpha, 0, 1) * 255 + 0.5).astype(np.uint8), "L")}
    structure = result.structure_json()
    if structure is not None:
        files["landmarks"] = json.dumps(structure).encode()
    if result.neighbours is not None:
        files["neighbours"] = json.dumps({"category": result.category,
                                          "neighbours": result.neighbours}).encode()
    if result.overlay is not None:
        files["overlay"] = png(result.overlay, "RGBA")
    if result.coarse is not None:
        files["coarse"] = png(result.coarse, "RGB")
    return files


class Pipeline(Protocol):
    name: str

    def load(self) -> None:
        """Load weights; called once per worker process before the first job."""

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult: ...


class StageClock:
    """Times named stages and reports progress as each one starts."""

    def __init__(self, stages: list[str], progress: ProgressFn | None) -> None:
        self.stages = stages
        self.progress = progress
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        if self.progress is not None:
            self.progress(name, round(100 * self.stages.index(name) / len(self.stages)))
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[name] = round(time.perf_counter() - start, 6)


def preset_fill(options: PipelineOptions, default: float) -> float:
    """The garment's longer side as a share of the canvas for this request's preset."""
    return get_preset(options.preset).fill or default


class CutoutPipeline:
    """Baseline: the garment mask, tight crop, centered on the canvas.

    What a background remover gives: no flattening, no structure. Later pipelines must
    beat it on the quality benchmark. With the learned parser's weights present, its mask
    replaces the classical one and its landmarks are carried onto the canvas (for the
    overlay and the benchmark); without, the classical border colour model is used.
    """

    name = "cutout"
    stages = ["parse", "compose"]
    # Longer side of the garment on the canvas: 84% (an 8% margin each side).
    FILL = 0.84

    def __init__(self) -> None:
        self.parser = None

    def load(self) -> None:
        from models.parser import PARSER_WEIGHTS

        if (PARSER_WEIGHTS / "config.json").is_file():
            self.parser = _parser()

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
                                   preset_fill(options, self.FILL))
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


# Where the retrieval pipelines find their structure bank (the worker points it at the
# service's runtime bank; None: the shipped default bank).
_BANK_DIR: list[Path | None] = [None]


def configure(bank_dir: Path | None) -> None:
    """Point the retrieval pipelines at the bank in `bank_dir` (before they load)."""
    _BANK_DIR[0] = Path(bank_dir) if bank_dir is not None else None


@functools.cache
def _parser():  # noqa: ANN202 (torch models are imported lazily)
    """The garment parser, loaded once per process for every pipeline that uses it."""
    from models.parser import PARSER_WEIGHTS, GarmentParser

    return GarmentParser.from_pretrained(PARSER_WEIGHTS)


@functools.cache
def _retrieval_models():  # noqa: ANN202 (torch models are imported lazily)
    """The parser and StructureNet, loaded once per process for every pipeline using them."""
    from models.structurenet import DEFAULT_WEIGHTS, StructureNet

    return _parser(), StructureNet.from_pretrained(DEFAULT_WEIGHTS)


@dataclass
class CoarseAlignment:
    """What stages 1–5 give the generator: the parse, the photo's structure embedding e
    (D,), the fused structure (ê, L̂, Ŝ, neighbours), the warp W/V on the canonical canvas,
    and the garment crop StructureNet saw, (P, P, 3) uint8."""

    parsed: Any
    query: np.ndarray
    fused: Any
    warped: Any
    crop: np.ndarray
    # The posterior of the category decided (None where the request gave the structure).
    category_confidence: float | None = None


class FlattenPipeline:
    """Parse → embed → retrieve → SLLE → warp → compose (DESIGN.md stages 1–5 and 7).

    The parser finds the garment, its category and its visible landmarks; StructureNet
    embeds the garment crop; SLLE fuses K same-category structures into landmarks L̂ and a
    silhouette Ŝ on the canonical canvas; a thin-plate spline from the visible parsed
    landmarks to L̂ re-samples the full-resolution photo; Ŝ (refined against the warped
    photo near its edge) is the alpha, and texture the photo did not show is filled from
    the nearest known texture. A `structure` option replaces retrieval's landmarks.
    """

    name = "flatten"
    stages = ["parse", "embed", "retrieve", "warp", "compose"]
    K = 8
    # Fewer visible landmarks than this and the warp falls back to the box-to-box fit.
    MIN_VISIBLE = 4
    # Below this standard deviation (8-bit levels, every channel) a photo is a plain colour.
    MIN_CONTRAST = 3.0
    # Both chosen on 40 validation assets: a 1%-wide band where the photo's own edge wins
    # (IoU +0.001; 2% lost 0.01), and a stiff spline: with parsed landmarks this noisy
    # (NME ≈ 0.05 in the photo), smoothing 10 beat 1e-3 on garment SSIM (0.375 vs 0.345)
    # and ΔE (17.6 vs 18.2); stiffer still changed nothing.
    REFINE_BAND = 0.01
    TPS_SMOOTHING = 10.0
    # Texture within this share of the canvas of the photo mask's edge is refilled from
    # inside (the parser's 64² mask edge lets background in). On 40 validation assets:
    # garment SSIM 0.374 → 0.385, ΔE 17.6 → 17.3 (1.2%: 0.383, 17.3).
    EDGE_TRIM = 0.02

    def __init__(self) -> None:
        self.parser = None
        self.structurenet = None
        self.bank = None
        self._bank_stamp: tuple[str, float] | None = None

    def load(self) -> None:
        self.parser, self.structurenet = _retrieval_models()
        self._fresh_bank()

    def _fresh_bank(self):  # noqa: ANN202 (structure_bank is imported lazily)
        """The bank, reloaded when its file changed (`POST /structures` appends to it)."""
        from structure_bank import StructureBank
        from structure_bank.builder import default_bank_path

        path = _BANK_DIR[0] or default_bank_path()
        if _BANK_DIR[0] is not None:
            from structure_bank.runtime import ensure_runtime_bank

            ensure_runtime_bank(path)
        stamp = (str(path), (Path(path) / "bank.json").stat().st_mtime)
        if self.bank is None or stamp != self._bank_stamp:
            self.bank = StructureBank.load(path)
            self._bank_stamp = stamp
        return self.bank

    def fuse(self, bank, query: np.ndarray, parsed, category: str):  # noqa: ANN001, ANN201
        """SLLE over the category's structures that best fit the parsed landmarks."""
        from models.slle import fuse_with_landmarks

        h, w = parsed.mask.shape
        iso = parsed.landmarks * (w, h) / max(h, w)  # photo px over its longer side
        return fuse_with_landmarks(bank, query, iso, parsed.visibility, category, k=self.K)

    @staticmethod
    def category_posterior(parsed, bank, query: np.ndarray) -> dict[str, float]:  # noqa: ANN001
        """The parser's category belief times the vote of the query's top global hits
        (add-half smoothed), normalised over the categories."""
        from collections import Counter

        from models.garments import CATEGORIES
        from models.slle import CATEGORY_VOTERS

        votes = Counter(h.category for h in bank.search(query, CATEGORY_VOTERS))
        log_p = np.log(np.array([parsed.category_probs[c] for c in CATEGORIES]) + 1e-6)
        log_p += np.log(np.array([votes.get(c, 0) for c in CATEGORIES]) + 0.5)
        p = np.exp(log_p - log_p.max())
        return dict(zip(CATEGORIES, (p / p.sum()).tolist(), strict=True))

    @classmethod
    def decide_category(cls, parsed, bank, query: np.ndarray) -> str:  # noqa: ANN001
        """The most probable category of `category_posterior`. Chosen on the validation
        split: the parser alone and this tie on category accuracy (0.74), this gives the
        better silhouettes; StructureNet's category head lowered both."""
        posterior = cls.category_posterior(parsed, bank, query)
        return max(posterior, key=posterior.__getitem__)

    def align(self, rgb: np.ndarray, given: StructureSpec | None, size: int,
              clock: StageClock) -> CoarseAlignment:
        """Stages 1–5: parse, embed, retrieve + SLLE (or the given structure), and the warp of
        the photo onto the fused landmarks on a `size`² canonical canvas."""
        import torch

        from models.slle import structure_on_landmarks
        from models.structurenet import embed_photos, normalise_photos, photo_tensor_uint8
        from models.warp import warp_photo

        if self.parser is None:
            self.load()
        with clock.stage("parse"):
            # A learned parser sees a garment in anything, even a plain wall: a photo
            # without contrast has none.
            if float(rgb[::4, ::4].reshape(-1, 3).std(0).max()) < self.MIN_CONTRAST:
                raise PipelineError("garment_not_found",
                                    "the photo is a plain colour: no garment stands out")
            parsed = self.parser.parse(rgb, category=given.category if given else None)
            garment = parsed.mask > 0.5
            if garment.mean() < 0.002:
                raise PipelineError("garment_not_found",
                                    "no garment was found in this photo")
        with clock.stage("embed"):
            crop = photo_tensor_uint8(rgb, self.structurenet.photo_size, garment)
            with torch.inference_mode():
                query = embed_photos(self.structurenet, normalise_photos(crop[None]))[0]
        with clock.stage("retrieve"):
            bank = self._fresh_bank()
            confidence = None
            if given is None:
                posterior = self.category_posterior(parsed, bank, query)
                category = max(posterior, key=posterior.__getitem__)
                confidence = posterior[category]
                if category != parsed.category:
                    parsed = self.parser.read_as(parsed, category)
            try:
                if given is None:
                    fused = self.fuse(bank, query, parsed, category)
                else:
                    fused = structure_on_landmarks(bank, query, given.category,
                                                   given.landmarks, self.K)
            except ValueError as exc:
                raise PipelineError("structure_unavailable", str(exc)) from None
        with clock.stage("warp"):
            src, dst = self._correspondences(parsed, fused, garment)
            warped = warp_photo(rgb, parsed.mask, src, dst, size, self.TPS_SMOOTHING)
        return CoarseAlignment(parsed=parsed, query=query, fused=fused, warped=warped,
                               crop=crop, category_confidence=confidence)

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        from models.compose import (
            draw_overlay,
            fill_unknown,
            layer_of,
            over_background,
            place_garment,
            refine_alpha,
            silhouette_alpha,
        )

        clock = StageClock(self.stages, progress)
        size = options.output_size
        coarse = self.align(rgb, options.structure, size, clock)
        fused, warped = coarse.fused, coarse.warped
        with clock.stage("compose"):
            alpha, sdf = silhouette_alpha(fused.silhouette, size)
            alpha = refine_alpha(alpha, sdf, warped.mask, self.REFINE_BAND)
            image = fill_unknown(warped.image, warped.validity, alpha, trim=self.EDGE_TRIM)
            layer = layer_of(image, alpha)
            canvas_landmarks = fused.landmarks.copy()
            fill = get_preset(options.preset).fill
            if fill is not None:
                placed = place_garment(image, alpha, size, fill)
                layer = placed.layer
                canvas_landmarks = placed.to_canvas(canvas_landmarks, (size, size))
            canvas = over_background(layer, parse_background(options.background))
            out_alpha = layer[..., 3].astype(np.float32) / 255.0
            overlay = draw_overlay(canvas, out_alpha, canvas_landmarks, fused.category)
        return FlatLayResult(
            image=canvas, alpha=out_alpha, category=fused.category,
            landmarks=fused.landmarks, canvas_landmarks=canvas_landmarks,
            neighbours=fused.neighbours, overlay=overlay, timings=clock.timings,
            category_confidence=coarse.category_confidence)

    def _correspondences(self, parsed, fused, garment: np.ndarray  # noqa: ANN001
                         ) -> tuple[np.ndarray, np.ndarray]:
        """(photo unit square, canvas unit square) point pairs for the warp: the visible
        parsed landmarks and their fused positions; with too few, the garment's box corners
        onto the structure's box corners."""
        vis = parsed.visibility & np.isfinite(parsed.landmarks).all(1)
        if vis.sum() >= self.MIN_VISIBLE:
            return parsed.landmarks[vis], fused.landmarks[vis]
        h, w = garment.shape
        ys, xs = np.nonzero(garment)
        photo_box = np.array([[xs.min(), ys.min()], [xs.max(), ys.min()],
                              [xs.max(), ys.max()], [xs.min(), ys.max()]], np.float64)
        photo_box = (photo_box + 0.5) / (w, h)
        sil = fused.silhouette
        sy, sx = np.nonzero(sil)
        n = sil.shape[0]
        canvas_box = (np.array([[sx.min(), sy.min()], [sx.max(), sy.min()],
                                [sx.max(), sy.max()], [sx.min(), sy.max()]], np.float64)
                      + 0.5) / n
        return photo_box, canvas_box


class NearestPipeline(FlattenPipeline):
    """Baseline: as `flatten`, with the single nearest structure instead of SLLE fusion."""

    name = "nearest"

    def fuse(self, bank, query: np.ndarray, parsed, category: str):  # noqa: ANN001, ANN201
        from models.slle import nearest_structure

        return nearest_structure(bank, query, category=category)


# name → "module:factory"; imported only when the pipeline is built.
_REGISTRY: dict[str, str] = {
    "cutout": "models.pipeline:CutoutPipeline",
    "flatten": "models.pipeline:FlattenPipeline",
    "nearest": "models.pipeline:NearestPipeline",
    "noretrieval": "models.generator.pipeline_ragdiffusion:NoRetrievalPipeline",
    "ragdiffusion": "models.generator.pipeline_ragdiffusion:RAGDiffusionPipeline",
    "ragdiffusion-nodecode": "models.generator.pipeline_ragdiffusion:NoDecodePipeline",
    "ragdiffusion-nohard": "models.generator.pipeline_ragdiffusion:NoHardPipeline",
    "ragdiffusion-nopattern": "models.generator.pipeline_ragdiffusion:NoPatternPipeline",
    "ragdiffusion-nosoft": "models.generator.pipeline_ragdiffusion:NoSoftPipeline",
}
_INSTANCES: dict[str, Pipeline] = {}
# name → why it could not load (load_pipelines).
_UNAVAILABLE: dict[str, str] = {}
log = logging.getLogger("flatlay.pipeline")


def register_pipeline(name: str, target: str) -> None:
    """Register `target` ("module:factory") under `name`."""
    _REGISTRY[name] = target


def pipeline_names() -> list[str]:
    return sorted(_REGISTRY)


def get_pipeline(name: str) -> Pipeline:
    """The process-wide instance of pipeline `name`, built on first use."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown pipeline {name!r}; available: {', '.join(pipeline_names())}")
    if name not in _INSTANCES:
        module, factory = _REGISTRY[name].split(":")
        _INSTANCES[name] = getattr(importlib.import_module(module), factory)()
    return _INSTANCES[name]


def load_pipelines(names: list[str] | None = None) -> dict[str, float]:
    """Build and load pipelines (all by default); returns seconds spent per pipeline.

    A pipeline that cannot load (missing weights, a broken bank) is logged and left out, so
    the worker still serves the others; its jobs then fail `pipeline_unavailable`.
    """
    spent: dict[str, float] = {}
    for name in names or pipeline_names():
        start = time.perf_counter()
        try:
            get_pipeline(name).load()
        except Exception as exc:  # noqa: BLE001 (any load failure leaves this one out)
            _UNAVAILABLE[name] = f"{type(exc).__name__}: {exc}"
            log.error("pipeline %s could not load: %s", name, _UNAVAILABLE[name])
            continue
        spent[name] = round(time.perf_counter() - start, 3)
    return spent


def run_pipeline(name: str, rgb: np.ndarray, options: PipelineOptions,
                 progress: ProgressFn | None = None) -> FlatLayResult:
    """Run pipeline `name`; PipelineError `pipeline_unavailable` when it could not load."""
    if name in _UNAVAILABLE:
        raise PipelineError("pipeline_unavailable",
                            f"pipeline {name!r} is not available on this worker: "
                            f"{_UNAVAILABLE[name]}")
    return get_pipeline(name)(rgb, options, progress)
