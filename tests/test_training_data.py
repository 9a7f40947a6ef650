"""The processes that make training data (`models.train.common.render_pool`)."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from models.train.common import render_map


def _blas_threads(_: int) -> list[int]:
    np.ones((64, 64)) @ np.ones((64, 64))  # BLAS loaded and used in this process
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_render_processes_compute_on_one_thread_each() -> None:
    # As many processes as cores: BLAS's own threads in each would contend and spin
    # (generator pairs were made at 4.5 a second so, against 10.1 on one thread each).
    seen = render_map(_blas_threads, list(range(4)), 2, "threads")
    assert all(threads and set(threads) == {1} for threads in seen), seen
