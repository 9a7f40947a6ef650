"""Named pipelines with one signature: RGB photo + options → flat-lay canvas.

Every pipeline, baseline or not, is called the same way, so the service, the CLI and the
benchmarks can swap them by name. The registry maps names to import paths and imports a
pipeline only when it is built, so listing names costs nothing (the API validates them
without loading any model).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from models.compose import parse_background, place_on_canvas
from models.parser import classical_garment_mask

ProgressFn = Callable[[str, int], None]


class PipelineError(ValueError):
    """A photo the pipeline cannot turn into a flat-lay; `code` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class PipelineOptions:
    """Per-request options shared by every pipeline.

    output_size: canvas side in px (256–2048). background: 'transparent' or a hex colour.
    seed: for pipelines that sample; deterministic pipelines ignore it.
    """

    output_size: int = 1024
    background: str = "#ffffff"
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 256 <= self.output_size <= 2048:
            raise ValueError(f"output_size {self.output_size} is outside 256–2048")
        parse_background(self.background)


@dataclass
class FlatLayResult:
    """image: (S, S, 4) uint8 RGBA canvas. side_outputs: named extras (masks, landmarks, …).
    timings: seconds per stage, in stage order."""

    image: np.ndarray
    side_outputs: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


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


class CutoutPipeline:
    """Baseline: mask from a border colour model, tight crop, centered on the canvas.

    What a background remover gives: no flattening, no structure. Later pipelines must
    beat it on the quality benchmark.
    """

    name = "cutout"
    stages = ["parse", "compose"]

    def load(self) -> None:
        return None

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        clock = StageClock(self.stages, progress)
        with clock.stage("parse"):
            try:
                alpha = classical_garment_mask(rgb)
            except ValueError as exc:
                raise PipelineError("garment_not_found", str(exc)) from None
        with clock.stage("compose"):
            canvas = place_on_canvas(
                rgb, alpha, options.output_size, parse_background(options.background)
            )
        return FlatLayResult(image=canvas, side_outputs={"mask": alpha}, timings=clock.timings)


# name → "module:factory"; imported only when the pipeline is built.
_REGISTRY: dict[str, str] = {
    "cutout": "models.pipeline:CutoutPipeline",
}
_INSTANCES: dict[str, Pipeline] = {}


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
    """Build and load pipelines (all by default); returns seconds spent per pipeline."""
    spent: dict[str, float] = {}
    for name in names or pipeline_names():
        start = time.perf_counter()
        get_pipeline(name).load()
        spent[name] = round(time.perf_counter() - start, 3)
    return spent
