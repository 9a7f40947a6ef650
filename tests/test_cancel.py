"""Cancel stops the work, with real processes: a running job that is canceled (or deleted)
stops at its next stage boundary, keeps no result and frees its worker for the next job;
in distributed mode a queued one's message is revoked, so no worker even takes it.

`test-staged` (tests/pipelines.py) writes down every stage it begins, so the tests see
which stages ran; the worker runs one job at a time, so the next job can only start once
the canceled one has let go of the worker.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.pipelines import (
    STAGE_LOG_ENV,
    STAGE_SECONDS_ENV,
    STAGED_PIPELINE,
    stages_begun,
)
from tests.support import ServiceProcesses, encode, free_port, garment_photo, wait_for_job

pytestmark = pytest.mark.slow

STAGES = ["one", "two", "three", "four", "parse", "compose"]


def cancel_env(root: Path, **extra: str) -> dict[str, str]:
    return {
        "FLATLAY_DATA_DIR": str(root / "data"),
        "FLATLAY_EXTRA_PIPELINES": STAGED_PIPELINE,
        "FLATLAY_PRELOAD_PIPELINES": "cutout,test-staged",
        "FLATLAY_WORKER_HEARTBEAT_S": "1",
        "FLATLAY_RECONCILE_INTERVAL_S": "1",
        "FLATLAY_AUTH_ENABLED": "false",
        "FLATLAY_RATE_LIMIT_PER_S": "0",
        STAGE_SECONDS_ENV: "1.5",
        STAGE_LOG_ENV: str(root / "stages.log"),
        **extra,
    }


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def submit(c: httpx.Client, photo: bytes, pipeline: str, seed: int = 0) -> str:
    r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
               data={"pipeline": pipeline, "output_size": "256", "seed": str(seed)})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_begun(log: Path, seed: int, stage: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while stage not in stages_begun(log, seed):
        assert time.monotonic() < deadline, f"stage {stage} never began: {stages_begun(log, seed)}"
        time.sleep(0.05)


def assert_stopped_at_boundary(log: Path, seed: int, begun_at_cancel: list[str]) -> str:
    """The stages that ran are those begun when the cancel was answered, or one more (its
    progress update may have been committed just before the cancel); none after. Returns
    the stage it stopped before."""
    ran = stages_begun(log, seed)
    assert ran[:len(begun_at_cancel)] == begun_at_cancel, ran
    assert len(ran) <= len(begun_at_cancel) + 1, (begun_at_cancel, ran)
    assert "compose" not in ran, ran
    return STAGES[len(ran)]


def started_after(status: dict, at: float) -> float:
    """Seconds from the wall-clock time `at` to the job's start (same machine, same clock)."""
    started = dt.datetime.fromisoformat(status["started_at"]).timestamp()
    return round(started - at, 3)


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    root = tmp_path_factory.mktemp("cancel")
    port = free_port()
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=cancel_env(root),
                                 port=port, log_dir=root)
    svc.root = root  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def test_a_canceled_running_job_stops_at_its_next_stage_and_frees_the_worker(
    embedded: ServiceProcesses, photo: bytes
) -> None:
    root: Path = embedded.root  # type: ignore[attr-defined]
    log = root / "stages.log"
    with embedded.client() as c:
        running = submit(c, photo, "test-staged", seed=1)
        wait_begun(log, 1, "two")
        following = submit(c, photo, "cutout")  # waits for the one worker
        r = c.post(f"/assets/{running}/cancel")
        canceled_at = time.time()
        begun = stages_begun(log, 1)
        assert r.status_code == 200 and r.json()["status"] == "canceled", r.text

        after = wait_for_job(c, following)
        assert after["status"] == "succeeded", (after, embedded.log_text())
        print(f"\ncancel → next job started: {started_after(after, canceled_at)} s "
              f"(test-staged, 1.5 s stages)")
        stopped_before = assert_stopped_at_boundary(log, 1, begun)

        status = c.get(f"/assets/{running}").json()
        assert status["status"] == "canceled"
        # How far it got: the stage it did not start, and what it had measured.
        assert status["progress"]["stage"] == stopped_before, status
        assert "decode" in status["timings"], status
        assert c.get(f"/assets/{running}/result").json()["error"]["code"] == "asset_canceled"
    folder = root / "data" / "blobs" / "assets" / running
    assert sorted(p.name for p in folder.iterdir()) == ["input.jpg"]  # no result kept


def test_deleting_a_running_asset_stops_its_work(
    embedded: ServiceProcesses, photo: bytes
) -> None:
    root: Path = embedded.root  # type: ignore[attr-defined]
    log = root / "stages.log"
    with embedded.client() as c:
        running = submit(c, photo, "test-staged", seed=2)
        wait_begun(log, 2, "one")
        following = submit(c, photo, "cutout")
        assert c.delete(f"/assets/{running}").status_code == 204
        begun = stages_begun(log, 2)
        assert wait_for_job(c, following)["status"] == "succeeded"
        assert_stopped_at_boundary(log, 2, begun)
        assert c.get(f"/assets/{running}").status_code == 404
    assert not (root / "data" / "blobs" / "assets" / running).exists()


@pytest.mark.redis
@pytest.mark.postgres
def test_distributed_cancel_revokes_a_queued_job_and_stops_a_running_one(
    redis_url: str, postgres_url: str, tmp_path: Path, photo: bytes
) -> None:
    port = free_port()
    env = cancel_env(tmp_path, FLATLAY_BROKER_URL=redis_url, FLATLAY_DATABASE_URL=postgres_url,
                     FLATLAY_QUEUE_NAME=f"flatlay.test.{uuid.uuid4().hex[:8]}")
    log = tmp_path / "stages.log"
    svc = ServiceProcesses.start([["api", "--port", str(port)], ["worker"]], env=env,
                                 port=port, log_dir=tmp_path)
    try:
        with svc.client() as c:
            running = submit(c, photo, "test-staged", seed=1)
            wait_begun(log, 1, "one")
            queued = submit(c, photo, "cutout")
            last = submit(c, photo, "cutout")
            assert c.post(f"/assets/{queued}/cancel").json()["status"] == "canceled"
            assert c.post(f"/assets/{running}/cancel").json()["status"] == "canceled"
            canceled_at = time.time()
            begun = stages_begun(log, 1)
            after = wait_for_job(c, last)
            assert after["status"] == "succeeded", (after, svc.log_text())
            print(f"\ncancel → next job started: {started_after(after, canceled_at)} s "
                  "(distributed, test-staged, 1.5 s stages)")
            assert_stopped_at_boundary(log, 1, begun)
            assert c.get(f"/assets/{queued}").json()["status"] == "canceled"
        worker_log = svc.logs[1].read_text(errors="replace")
        # The revoked message was dropped by Celery: the job was never handed to run_job.
        assert f"Discarding revoked task: flatlay.process_asset[{queued}]" in worker_log
        assert f"job {queued} is not queued" not in worker_log
    finally:
        svc.stop()
