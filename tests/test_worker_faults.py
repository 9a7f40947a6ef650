"""Faults the soak benchmark (bench/soak.py) found around the worker, with the real worker
code (workers.jobs) on a real job store and a real blob store:

- a job store outage during an attempt (a PostgreSQL restart): the store here is the real
  one whose database calls raise OperationalError for a while, as SQLAlchemy raises it when
  the server refuses or drops connections; the attempt is requeued, or its outcome recorded,
  once the store answers again, never left `running` nor failed for good;
- what a killed attempt leaves in the blob store (its outputs, the temp file of a write
  killed before its rename): gone once the job has ended, so a succeeded job has exactly the
  blobs its row names; DELETE and the retention sweep remove temp files too;
- the Celery setting that lets a new pool child take its time loading the models.
"""

from __future__ import annotations

import inspect
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from celery.concurrency import prefork
from fastapi.testclient import TestClient
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from service.app import create_app
from service.blobs import LocalBlobStore
from service.outputs import result_key, side_output_key
from service.queue import WORKER_PROC_ALIVE_TIMEOUT_S, celery_config, make_celery
from service.reconciler import reconcile_once
from service.rows import JobView
from service.settings import Settings
from service.store import STORE_OUTAGE_ERRORS, JobStore, migrate
from tests.support import REPO, encode, free_port, garment_photo
from tests.test_storage_faults import FullDisk
from workers import jobs
from workers.jobs import WorkerContext, run_job


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


@pytest.fixture(autouse=True)
def quick_store_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(jobs, "STORE_WAIT_FIRST_S", 0.02)
    monkeypatch.setattr(jobs, "STORE_WAIT_MAX_S", 0.05)


class FlakyStore(JobStore):
    """The real job store, down for a while: once the call named by `outage_at` is made (with
    `stage`, for set_progress), that call and the next `calls - 1` calls that reach the
    database raise OperationalError. With `commit_first`, the first call commits before its
    connection drops (the worker cannot tell it did)."""

    def __init__(self, database_url: str) -> None:
        super().__init__(database_url)
        self.outage_at: tuple[str, str | None] | None = None
        self.calls = 0
        self.commit_first = False
        self.failing = 0  # database calls still to fail
        self.failed = 0

    def _refuse(self) -> None:
        if self.failing > 0:
            self.failing -= 1
            self.failed += 1
            raise OperationalError("SELECT 1", None,
                                   ConnectionRefusedError(111, "Connection refused"))

    def _session(self) -> Session:
        self._refuse()
        return super()._session()

    def ping(self) -> None:
        self._refuse()
        super().ping()

    def _outage(self, method: str, stage: str | None, call: Any) -> Any:
        if self.outage_at != (method, stage):
            return call()
        self.outage_at = None
        if self.commit_first:
            call()  # committed; the answer is lost with the connection
            self.failing = self.calls - 1
            self.failed += 1
            raise OperationalError("COMMIT", None, ConnectionResetError(104, "reset by peer"))
        self.failing = self.calls
        return call()

    def claim(self, job_id: str, worker: str) -> JobView | None:
        return self._outage("claim", None, lambda: super(FlakyStore, self).claim(job_id, worker))

    def set_progress(self, job_id: str, stage: str, percent: int,
                     worker: str | None = None) -> bool:
        return self._outage("set_progress", stage, lambda: super(FlakyStore, self).set_progress(
            job_id, stage, percent, worker=worker))

    def succeed(self, job_id: str, **values: Any) -> bool:
        return self._outage("succeed", None,
                            lambda: super(FlakyStore, self).succeed(job_id, **values))


def _settings(tmp_path: Path, **values: object) -> Settings:
    s = Settings(data_dir=tmp_path / "data", auth_enabled=False, rate_limit_per_s=0,
                 reconcile_interval_s=3600, **values)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return s


class Worker:
    """The real worker code on a FlakyStore; what it sends again is recorded instead of going
    through a broker."""

    def __init__(self, settings: Settings, blobs: LocalBlobStore | None = None) -> None:
        self.store = FlakyStore(settings.resolved_database_url)
        self.blobs = blobs or LocalBlobStore(settings.resolved_blob_dir)
        self.sent: list[tuple[str, float]] = []
        self.ctx = WorkerContext(settings=settings, store=self.store, blobs=self.blobs,
                                 name="test-worker")
        self.ctx.send_job = lambda job_id, countdown: self.sent.append((job_id, countdown))

    def outage(self, method: str, calls: int, stage: str | None = None,
               commit_first: bool = False) -> None:
        self.store.outage_at, self.store.calls = (method, stage), calls
        self.store.commit_first = commit_first

    def files(self, job_id: str) -> set[str]:
        """Every file under the job's folder, as blob keys (temp files included)."""
        folder = self.blobs.root / "assets" / job_id
        return {p.relative_to(self.blobs.root).as_posix() for p in folder.rglob("*")
                if p.is_file()}


def referenced(job: JobView) -> set[str]:
    return {k for k in (job.input_blob, job.result_blob, *(job.side_outputs or {}).values())
            if k}


def _submit(c: TestClient, photo: bytes) -> str:
    r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
               data={"pipeline": "cutout", "output_size": "256"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


# The job store going down during an attempt ---------------------------------------------------


def test_a_store_outage_mid_attempt_requeues_it_once_the_store_is_back(
    tmp_path: Path, photo: bytes
) -> None:
    s = _settings(tmp_path, max_attempts=1)  # the outage spends no attempt of the budget
    worker = Worker(s)
    with TestClient(create_app(s)) as c:
        job_id = _submit(c, photo)
        # Down from the progress update before the outputs are stored: the failure record
        # (store.fail) that used to follow raised too and left the job `running`.
        worker.outage("set_progress", calls=4, stage="store")
        assert run_job(worker.ctx, job_id) == "retried"
        assert worker.store.failed == 4 and worker.store.failing == 0
        status = c.get(f"/assets/{job_id}").json()
        assert status["status"] == "queued" and status["attempts"] == 1, status
        assert status["error"]["code"] == "service_unavailable", status
        assert worker.sent == [(job_id, 0.0)]
        assert worker.files(job_id) == {f"assets/{job_id}/input.jpg"}  # no outputs stored

        assert run_job(worker.ctx, job_id) == "succeeded"
        status = c.get(f"/assets/{job_id}").json()
        assert status["status"] == "succeeded" and status["attempts"] == 2, status
        assert status["error"] is None
        assert worker.files(job_id) == referenced(worker.store.get(job_id))
    worker.store.dispose()


@pytest.mark.parametrize("method", ["claim", "succeed"])
@pytest.mark.parametrize("commit_first", [False, True], ids=["refused", "commit-hidden"])
def test_a_store_outage_at_claim_or_success_still_succeeds_once_with_its_result(
    tmp_path: Path, photo: bytes, method: str, commit_first: bool
) -> None:
    s = _settings(tmp_path)
    worker = Worker(s)
    with TestClient(create_app(s)) as c:
        job_id = _submit(c, photo)
        worker.outage(method, calls=3, commit_first=commit_first)
        assert run_job(worker.ctx, job_id) == "succeeded"
        assert worker.store.failed == 3
        assert run_job(worker.ctx, job_id) == "skipped"
        status = c.get(f"/assets/{job_id}").json()
        assert status["status"] == "succeeded" and status["attempts"] == 1, status
        result = c.get(f"/assets/{job_id}/result")
        assert result.status_code == 200 and result.content[:4] == b"\x89PNG"
        # The outputs stored before the outage are the recorded ones, and the only ones.
        job = worker.store.get(job_id)
        assert job.result_blob == result_key(job_id, 1, "png")
        assert worker.files(job_id) == referenced(job)
    worker.store.dispose()


def test_a_store_that_stays_down_leaves_the_job_to_the_reconciler(
    tmp_path: Path, photo: bytes
) -> None:
    s = _settings(tmp_path, task_soft_time_limit_s=1, task_time_limit_s=2)
    worker = Worker(s)
    with TestClient(create_app(s)) as c:
        job_id = _submit(c, photo)
        worker.outage("set_progress", calls=10**6, stage="store")
        start = time.monotonic()
        assert run_job(worker.ctx, job_id) == "abandoned"
        assert time.monotonic() - start < 10
        worker.store.failing = 0
        job = worker.store.get(job_id)
        assert job.status == "running" and job.worker == "test-worker"  # stale, later
    worker.store.dispose()


def test_postgresql_refusing_connections_is_what_the_worker_waits_out() -> None:
    # The error a stopped or restarting server gives is the one the worker takes for an
    # outage (rather than a crash of the job).
    store = JobStore(f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
                     "?connect_timeout=2")
    with pytest.raises(STORE_OUTAGE_ERRORS):
        store.set_progress("job", "store", 98, worker="w")
    store.dispose()


# What killed attempts leave ------------------------------------------------------------------


def _killed_mid_write(root: Path, key: str) -> None:
    """LocalBlobStore.put in a process SIGKILLed between its temp file and the rename."""
    script = ("import os, signal, sys\n"
              "from service.blobs import LocalBlobStore\n"
              "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
              "LocalBlobStore(sys.argv[1]).put(sys.argv[2], b'half' * 1000)\n")
    done = subprocess.run([sys.executable, "-c", script, str(root), key], cwd=REPO,
                          timeout=60)
    assert done.returncode == -9


def _dead_attempt(worker: Worker, job_id: str, max_attempts: int) -> None:
    """An attempt whose worker was killed after it stored its outputs (and while it wrote
    one more), released by the reconciler's rule."""
    store = JobStore(worker.ctx.settings.resolved_database_url)
    job = store.claim(job_id, "dead-worker")
    assert job is not None
    worker.blobs.put(result_key(job_id, job.attempts, "png"), b"old result")
    worker.blobs.put(side_output_key(job_id, job.attempts, "mask"), b"old mask")
    _killed_mid_write(worker.blobs.root, side_output_key(job_id, job.attempts, "overlay"))
    assert store.release(job_id, max_attempts) in ("queued", "failed")
    store.dispose()


def test_a_succeeded_job_keeps_only_the_blobs_its_row_names(
    tmp_path: Path, photo: bytes
) -> None:
    s = _settings(tmp_path)
    worker = Worker(s)
    with TestClient(create_app(s)) as c:
        job_id = _submit(c, photo)
        _dead_attempt(worker, job_id, s.max_attempts)
        assert any(".tmp-" in f for f in worker.files(job_id))
        assert run_job(worker.ctx, job_id) == "succeeded"
        job = worker.store.get(job_id)
        assert job.attempts == 2
        assert worker.files(job_id) == referenced(job)
        assert [f for f in worker.files(job_id) if "/result" in f] == \
            [result_key(job_id, 2, "png")]
        assert not (worker.blobs.root / "assets" / job_id / "outputs-a1").exists()
    worker.store.dispose()


def test_a_job_failed_for_good_keeps_only_its_input(
    tmp_path: Path, photo: bytes
) -> None:
    s = _settings(tmp_path, max_attempts=2, storage_retry_s=0.5)
    disk = FullDisk(s.resolved_blob_dir)
    worker = Worker(s, blobs=disk)
    with TestClient(create_app(s)) as c:
        # By the worker: attempt 2 fails for good (the disk is full) after a killed attempt.
        job_id = _submit(c, photo)
        _dead_attempt(worker, job_id, s.max_attempts)
        disk.full = True
        assert run_job(worker.ctx, job_id) == "failed"
        disk.full = False
        assert worker.files(job_id) == {f"assets/{job_id}/input.jpg"}

        # By the reconciler: the last attempt's worker died (no heartbeat) mid-write.
        job_id = _submit(c, photo)
        _dead_attempt(worker, job_id, s.max_attempts)
        store = JobStore(s.resolved_database_url)
        store.claim(job_id, "dead-worker")
        store.dispose()
        ctx = c.app.state.ctx
        ctx.settings = s.model_copy(update={"worker_heartbeat_s": 0.1})
        time.sleep(0.5)
        assert reconcile_once(ctx).failed_crashed == 1
        assert c.get(f"/assets/{job_id}").json()["error"]["code"] == "worker_crashed"
        assert worker.files(job_id) == {f"assets/{job_id}/input.jpg"}
    worker.store.dispose()


def test_delete_and_the_retention_sweep_remove_temp_files(
    tmp_path: Path, photo: bytes
) -> None:
    s = _settings(tmp_path)
    blobs = LocalBlobStore(s.resolved_blob_dir)
    with TestClient(create_app(s)) as c:
        deleted, expiring = _submit(c, photo), _submit(c, photo)
        for job_id in (deleted, expiring):
            _killed_mid_write(blobs.root, f"assets/{job_id}/result-a1.png")
            _killed_mid_write(blobs.root, side_output_key(job_id, 1, "mask"))
        assert c.delete(f"/assets/{deleted}").status_code == 204
        assert not (blobs.root / "assets" / deleted).exists()

        ctx = c.app.state.ctx
        c.post(f"/assets/{expiring}/cancel")
        ctx.settings = s.model_copy(update={"result_retention_s": 0.01})
        time.sleep(0.05)
        assert reconcile_once(ctx).expired == 1
        assert not (blobs.root / "assets" / expiring).exists()


def test_temp_files_go_only_under_the_prefix_named(tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path)
    blobs.put("assets/a/input.jpg", b"a")
    blobs.put("assets/b/input.jpg", b"b")
    _killed_mid_write(tmp_path, "assets/a/outputs-a1/mask.png")
    _killed_mid_write(tmp_path, "assets/a/result-a1.png")
    _killed_mid_write(tmp_path, "assets/b/result-a1.png")
    assert blobs.delete_temp_files("assets/a/") == 2
    assert not (tmp_path / "assets" / "a" / "outputs-a1").exists()  # emptied, pruned
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")
                  if p.is_file() and "/b/" not in p.as_posix()) == ["assets/a/input.jpg"]
    assert len(list((tmp_path / "assets" / "b").glob(".tmp-*"))) == 1
    assert blobs.delete_temp_files("assets/missing/") == 0


# Celery's pool ------------------------------------------------------------------------------


def test_a_new_pool_child_may_take_minutes_to_load_the_models(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert WORKER_PROC_ALIVE_TIMEOUT_S >= 300
    assert celery_config(settings)["worker_proc_alive_timeout"] == WORKER_PROC_ALIVE_TIMEOUT_S
    assert make_celery(settings).conf.worker_proc_alive_timeout == WORKER_PROC_ALIVE_TIMEOUT_S
    # What Celery's prefork pool hands its children (the module global
    # asynpool.PROC_ALIVE_TIMEOUT is only the fallback without an app).
    assert "app.conf.worker_proc_alive_timeout" in inspect.getsource(prefork.TaskPool.on_start)
