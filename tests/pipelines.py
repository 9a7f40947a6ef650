"""Pipelines for the fault-injection tests, registered only where a test names them in
FLATLAY_EXTRA_PIPELINES (e.g. "test-slow=tests.pipelines:SlowCutoutPipeline").

They are real pipelines run by the real worker, not mocks: `test-slow` is the cutout
baseline that takes its time (so that a test can kill or stop a worker in the middle of a
job), `test-crash` kills the worker process that runs it (as an out-of-memory kill or a
segfault in native code would), `test-structured` is the cutout baseline that returns the
structure it was given as its landmarks.
"""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from models.pipeline import CutoutPipeline, FlatLayResult, PipelineOptions, ProgressFn

# Seconds `test-slow` spends before its cutout (the tests' environment may set it).
SLOW_SECONDS_ENV = "FLATLAY_TEST_SLOW_SECONDS"


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


TEST_PIPELINES = ("test-slow=tests.pipelines:SlowCutoutPipeline,"
                  "test-crash=tests.pipelines:CrashingPipeline")
