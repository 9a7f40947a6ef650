"""Pipelines for the fault-injection tests, registered only where a test names them in
FLATLAY_EXTRA_PIPELINES (e.g. "test-slow=tests.pipelines:SlowCutoutPipeline").

They are real pipelines run by the real worker, not mocks: `test-slow` is the cutout
baseline that takes its time (so that a test can kill or stop a worker in the middle of a
job), `test-crash` kills the worker process that runs it (as an out-of-memory kill or a
segfault in native code would), `test-structured` is the cutout baseline that returns the
structure it was given as its landmarks, `test-staged` is the cutout baseline after four
timed stages that write down each stage they begin (so that a test sees which ran).
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from models.pipeline import FlatLayResult, PipelineOptions, ProgressFn, StageClock
from models.pipelines.cutout import CutoutPipeline

# Seconds `test-slow` spends before its cutout (the tests' environment may set it).
SLOW_SECONDS_ENV = "FLATLAY_TEST_SLOW_SECONDS"
# `test-staged`: seconds per stage, and the file each begun stage is appended to.
STAGE_SECONDS_ENV = "FLATLAY_TEST_STAGE_SECONDS"
STAGE_LOG_ENV = "FLATLAY_TEST_STAGE_LOG"


class SlowCutoutPipeline(CutoutPipeline):
    name = "test-slow"

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        seconds = float(os.environ.get(SLOW_SECONDS_ENV, "4"))
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if progress is not None:
                progress("wait", int(100 * (1 - left / max(seconds, 1e-9)) * 0.5))
            time.sleep(min(0.25, left))
        return super().__call__(rgb, options, progress)


class CrashingPipeline(CutoutPipeline):
    name = "test-crash"

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        os.kill(os.getpid(), signal.SIGKILL)
        raise AssertionError("unreachable")


class StructuredCutoutPipeline(CutoutPipeline):
    """The cutout baseline that lays out the structure it was given as its result's
    landmarks (what a retrieval pipeline does with `structure`), so that the structure's way
    through the service (form field, job row, worker, landmarks side output) is tested
    without model weights."""

    name = "test-structured"

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        result = super().__call__(rgb, options, progress)
        if options.structure is not None:
            result.category = options.structure.category
            result.landmarks = options.structure.landmarks
            result.canvas_landmarks = options.structure.landmarks
            result.frame = "canonical"
        return result


class StagedCutoutPipeline(CutoutPipeline):
    """Stages one to four (each sleeps), then the cutout's parse and compose. Every stage,
    once begun (its progress report returned), appends "<seed> <stage>" to the file named
    by FLATLAY_TEST_STAGE_LOG: the seed tells the jobs apart."""

    name = "test-staged"
    stages = ["one", "two", "three", "four", "parse", "compose"]

    def __call__(
        self, rgb: np.ndarray, options: PipelineOptions, progress: ProgressFn | None = None
    ) -> FlatLayResult:
        seconds = float(os.environ.get(STAGE_SECONDS_ENV, "1"))
        log = os.environ.get(STAGE_LOG_ENV)

        def begun(stage: str) -> None:
            if log:
                with open(log, "a") as fh:
                    fh.write(f"{options.seed} {stage}\n")

        clock = StageClock(self.stages, progress)
        for stage in self.stages[:4]:
            with clock.stage(stage):
                begun(stage)
                time.sleep(seconds)

        def rest(stage: str, percent: int) -> None:
            if progress is not None:
                progress(stage, 67 + percent // 3)  # the cutout's stages are the last third
            begun(stage)

        return super().__call__(rgb, options, rest)


def stages_begun(log: str | os.PathLike, seed: int) -> list[str]:
    """The stages `test-staged` began for the job with this seed, in order."""
    try:
        with open(log) as fh:
            lines = fh.read().splitlines()
    except FileNotFoundError:
        return []
    return [stage for s, _, stage in (line.partition(" ") for line in lines) if s == str(seed)]


STAGED_PIPELINE = "test-staged=tests.pipelines:StagedCutoutPipeline"

TEST_PIPELINES = ("test-slow=tests.pipelines:SlowCutoutPipeline,"
                  "test-crash=tests.pipelines:CrashingPipeline")
