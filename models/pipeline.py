"""Named pipelines with one signature: RGB photo + options → flat-lay canvas.

This module is the contract, torch-free (the service imports it): the options, the result
and its side outputs, the progress clock, the typed error, and the registry. Every pipeline,
baseline or not, is called the same way, so the service, the CLI and the benchmarks can swap
them by name. The registry maps names to import paths (`models.pipelines.*`,
`models.generator.pipeline_ragdiffusion`) and imports a pipeline only when it is built, so
listing names costs nothing (the API validates them without loading any model).
"""

from __future__ import annotations

import importlib
import logging
import time
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from models.compose import parse_background
from models.errors import TypedError
from models.presets import DEFAULT_PRESET, get_preset

ProgressFn = Callable[[str, int], None]
# The generator's sampling steps a request may ask for (its default is in its generator.json).
MAX_STEPS = 50
# The delivered canvas's side, px.
MIN_SIZE, MAX_SIZE = 256, 2048


def check_output_size(size: int, what: str = "output_size") -> int:
    """`size` if it is a canvas side we deliver; ValueError naming `what` otherwise."""
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"{what} must be within {MIN_SIZE}–{MAX_SIZE}, got {size}")
    return size


class PipelineError(TypedError):
    """A photo the pipeline cannot turn into a flat-lay; `code` is machine-readable."""


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


# The longest hint a request may carry (the API, batch manifests, the CLI and the web page
# all check against this one number).
HINT_MAX_CHARS = 200


class InvalidHint(ValueError):
    """A hint a request may not carry (too long, control characters)."""


def check_hint(text: str | None) -> str | None:
    """The hint as it will be used (whitespace collapsed; None when empty), or InvalidHint."""
    if text is None:
        return None
    if any(unicodedata.category(ch) in ("Cc", "Cf") and ch not in " " for ch in text):
        raise InvalidHint("the hint may not contain control characters")
    text = " ".join(text.split())
    if len(text) > HINT_MAX_CHARS:
        raise InvalidHint(f"the hint is longer than {HINT_MAX_CHARS} characters ({len(text)})")
    return text or None



@dataclass(frozen=True)
class PipelineOptions:
    """Per-request options shared by every pipeline.

    output_size: canvas side in px (MIN_SIZE–MAX_SIZE). background: 'transparent' or a hex colour.
    seed: for pipelines that sample; deterministic pipelines ignore it. preset: the output
    preset (models.presets) whose placement rule applies. structure: replaces retrieval.
    steps: the generator's sampling steps (1–50; None: its default). hint: free text about
    the garment (≤ models.hints.HINT_MAX_CHARS), used by the retrieving pipelines.
    """

    output_size: int = 1024
    background: str = "#ffffff"
    seed: int | None = None
    preset: str = DEFAULT_PRESET
    structure: StructureSpec | None = None
    # Sampling steps of the generative pipelines (None: the generator's default).
    steps: int | None = None
    # What the catalog knows in words ("long sleeves", "midi dress"): evidence for retrieval
    # beside the photo (models.hints), checked by models.hints.check_hint.
    hint: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "hint", check_hint(self.hint))  # frozen: set once here
        if self.steps is not None and not 1 <= self.steps <= MAX_STEPS:
            raise ValueError(f"steps {self.steps} is outside 1–{MAX_STEPS}")
        check_output_size(self.output_size)
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
    # Where the delivered pixels are re-drawn (the generator's pipelines): the photo's own
    # texture, W and the alpha of its known garment pixels, both (S, S) on the canonical
    # canvas. The pattern attribute is read from it, as a generation washes prints out.
    texture: tuple[np.ndarray, np.ndarray] | None = None
    # What the request's text hint did (models.hints.hint_outcome), where it had one.
    hint: dict[str, Any] | None = None
    # (L, 2) the photo's own landmarks, parsed as `category` (isotropic photo frame), where
    # the pipeline decided the structure itself: the neckline attribute is read from them,
    # as the fused structure averages the neighbours' necklines into a scoop.
    photo_landmarks: np.ndarray | None = None

    def structure_json(self) -> dict[str, Any] | None:
        if self.category is None or self.landmarks is None:
            return None
        from models.garments import landmark_names

        out = StructureSpec(self.category, self.landmarks).to_json()
        out["names"] = list(landmark_names(self.category))
        out["frame"] = self.frame
        if self.category_confidence is not None:
            out["category_confidence"] = round(float(self.category_confidence), 4)
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

    from models.io import PNG_SAVE

    def png(array: np.ndarray, mode: str) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(array, mode).save(buf, "PNG", **PNG_SAVE)
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


# Where the retrieval pipelines find their structure bank (the worker points it at the
# service's runtime bank; None: the shipped default bank).
_BANK_DIR: list[Path | None] = [None]


def configure(bank_dir: Path | None) -> None:
    """Point the retrieval pipelines at the bank in `bank_dir` (before they load)."""
    _BANK_DIR[0] = Path(bank_dir) if bank_dir is not None else None


def configured_bank_dir() -> Path | None:
    return _BANK_DIR[0]


# name → "module:factory"; imported only when the pipeline is built.
_REGISTRY: dict[str, str] = {
    "cutout": "models.pipelines.cutout:CutoutPipeline",
    "flatten": "models.pipelines.flatten:FlattenPipeline",
    "nearest": "models.pipelines.flatten:NearestPipeline",
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
