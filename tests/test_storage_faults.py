"""A blob store that fails its writes: the attempt fails with `storage_unavailable` and is
retried; once storage works again the job succeeds exactly once, with its blob; if it keeps
failing the job ends `failed` with that code, never `succeeded` without its result; uploads
are refused with a 503 that keeps nothing; /readyz reports it.

The fault is in the storage, not in the job system: a real filesystem blob store whose
writes fail as a full disk's do (ENOSPC from the write), run by the real worker code on a
real job store; and, with real processes, S3 (moto) behind a proxy that answers 503 to PUTs.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import boto3
import pytest
from fastapi.testclient import TestClient
from moto.server import ThreadedMotoServer

from service.app import create_app
from service.blobs import LocalBlobStore
from service.settings import Settings
from service.store import JobStore, migrate
from tests.pipelines import SLOW_SECONDS_ENV, TEST_PIPELINES
from tests.support import ServiceProcesses, encode, free_port, garment_photo, wait_for_job
from workers.jobs import WorkerContext, run_job


class FullDisk(LocalBlobStore):
    """The filesystem blob store on a disk that is full while `full` is set: each write
    fails with ENOSPC where the kernel would raise it."""

    full = False

    def _write(self, path: Path, data: bytes) -> None:  # type: ignore[override]
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        LocalBlobStore._write(path, data)


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def _settings(tmp_path: Path, **values: object) -> Settings:
    s = Settings(data_dir=tmp_path / "data", auth_enabled=False, rate_limit_per_s=0,
                 storage_retry_s=0.5, **values)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return s


class Worker:
    """The real worker code (workers.jobs) on the service's job store and a FullDisk blob
    store; what it sends again is recorded instead of going through a broker."""

    def __init__(self, settings: Settings) -> None:
        self.blobs = FullDisk(settings.resolved_blob_dir)
        self.store = JobStore(settings.resolved_database_url)
        self.sent: list[tuple[str, float]] = []
        self.ctx = WorkerContext(settings=settings, store=self.store, blobs=self.blobs,
                                 name="test-worker")
        self.ctx.send_job = lambda job_id, countdown: self.sent.append((job_id, countdown))

    def results_of(self, job_id: str) -> list[str]:
        folder = self.blobs.root / "assets" / job_id
        return sorted(p.name for p in folder.iterdir() if p.name != "input.jpg")


def _submit(c: TestClient, photo: bytes) -> str:
    r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
               data={"pipeline": "cutout", "output_size": "256"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def test_a_failed_write_is_retried_and_succeeds_once_storage_is_back(
    tmp_path: Path, photo: bytes
) -> None:
    s = _settings(tmp_path, max_attempts=3)
    worker = Worker(s)
    with TestClient(create_app(s)) as c:
        job_id = _submit(c, photo)
        worker.blobs.full = True
        assert run_job(worker.ctx, job_id) == "retried"
        status = c.get(f"/assets/{job_id}").json()
        assert status["status"] == "queued" and status["attempts"] == 1, status
        assert status["error"]["code"] == "storage_unavailable", status
        assert "No space left on device" in status["error"]["message"]
        assert status["progress"]["stage"] == "retrying"
        assert worker.sent == [(job_id, 0.5)]
        assert worker.results_of(job_id) == []  # nothing half-written is left

        worker.blobs.full = False
        assert run_job(worker.ctx, job_id) == "succeeded"
        assert run_job(worker.ctx, job_id) == "skipped"  # a duplicate delivery: still once
        status = c.get(f"/assets/{job_id}").json()
        assert status["status"] == "succeeded" and status["attempts"] == 2, status
        assert status["error"] is None
        result = c.get(f"/assets/{job_id}/result")
        assert result.status_code == 200 and result.content[:4] == b"\x89PNG"
        assert [r for r in worker.results_of(job_id) if r.startswith("result")] == \
            ["result-a2.png"]
        assert worker.sent == [(job_id, 0.5)]
    worker.store.dispose()


def test_storage_that_keeps_failing_ends_the_job_failed_with_a_typed_code(
    tmp_path: Path, photo: bytes
) -> None:
    s = _settings(tmp_path, max_attempts=2)
    worker = Worker(s)
    with TestClient(create_app(s)) as c:
        job_id = _submit(c, photo)
        worker.blobs.full = True
        assert run_job(worker.ctx, job_id) == "retried"
        assert run_job(worker.ctx, job_id) == "failed"
        status = c.get(f"/assets/{job_id}").json()
        assert status["status"] == "failed" and status["attempts"] == 2, status
        assert status["error"]["code"] == "storage_unavailable"
        assert c.get(f"/assets/{job_id}/result").json()["error"]["code"] == "asset_failed"
        assert worker.store.get(job_id).result_blob is None
        assert worker.results_of(job_id) == []
        assert worker.sent == [(job_id, 0.5)]  # the last attempt is not sent again
    worker.store.dispose()


def test_readyz_and_uploads_under_a_full_disk(tmp_path: Path, photo: bytes) -> None:
    s = _settings(tmp_path)
    with TestClient(create_app(s)) as c:
        assert c.get("/readyz").json()["checks"]["blob_store_write"] == "ok"
        blobs = FullDisk(s.resolved_blob_dir)
        c.app.state.ctx.blobs = blobs
        blobs.full = True
        r = c.get("/readyz")
        assert r.status_code == 503, r.text
        checks = r.json()["checks"]
        assert checks["blob_store"] == "ok"  # reachable, but it takes no writes
        assert checks["blob_store_write"].startswith("error: StorageError"), checks
        r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
        assert r.json()["error"]["code"] == "storage_unavailable"
        assert "/" not in r.json()["error"]["message"]  # no server path in the answer
        assert sum(c.app.state.ctx.store.count_by_status().values()) == 0  # no job kept
        assert not (s.resolved_blob_dir / "assets").exists()
        blobs.full = False
        assert c.get("/readyz").status_code == 200
    assert sorted(p.name for p in s.resolved_blob_dir.iterdir()) == []  # probes removed


def _assets_files(blob_dir: Path) -> list[Path]:
    return sorted(p for p in (blob_dir / "assets").rglob("*") if p.is_file()) \
        if (blob_dir / "assets").exists() else []


def test_a_job_store_outage_answers_503_and_keeps_no_upload(
        tmp_path: Path, photo: bytes, postgres_url: str) -> None:
    """PostgreSQL refusing connections while uploads arrive (as when it restarts): the
    photo was stored before its job row, so the row's failed write must remove it again
    (the soak found such orphans) and the answer is a retryable 503, not a 500."""
    import psycopg

    from tests.conftest import POSTGRES_ADMIN

    s = _settings(tmp_path, database_url=postgres_url)
    name = postgres_url.rsplit("/", 1)[1]
    with TestClient(create_app(s)) as c, \
            psycopg.connect(POSTGRES_ADMIN, autocommit=True) as admin:
        assert _submit(c, photo)  # the store works: one job, one input
        assert len(_assets_files(s.resolved_blob_dir)) == 1
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = %s AND pid <> pg_backend_pid()", (name,))
        r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert r.status_code == 503 and r.headers["Retry-After"] == "5", r.text
        assert r.json()["error"]["code"] == "service_unavailable"
        r = c.post("/batches", files=[("files", (f"{i}.jpg", photo, "image/jpeg"))
                                      for i in range(3)])
        assert r.status_code == 503 and r.json()["error"]["code"] == "service_unavailable"
        assert len(_assets_files(s.resolved_blob_dir)) == 1  # nothing of the refused ones
        admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        assert _submit(c, photo)  # back: the retry is taken
        assert len(_assets_files(s.resolved_blob_dir)) == 2
        c.app.state.ctx.store.dispose()


# S3 answering 503 -----------------------------------------------------------------------------

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}
UNAVAILABLE = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>ServiceUnavailable'
               b'</Code><Message>injected fault</Message></Error>')


class FaultyS3:
    """A proxy in front of an S3 server that answers 503 ServiceUnavailable to the PUTs
    whose path matches `fail` (None: everything passes)."""

    def __init__(self, upstream_port: int) -> None:
        self.fail: re.Pattern[str] | None = None
        self.refused = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def _forward(self) -> None:
                body = self._body()
                if self.command == "PUT" and proxy.fail and proxy.fail.search(self.path):
                    proxy.refused += 1
                    self.send_response(503)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(UNAVAILABLE)))
                    self.end_headers()
                    self.wfile.write(UNAVAILABLE)
                    return
                headers = {k: v for k, v in self.headers.items()
                           if k.lower() not in ("transfer-encoding", "expect", "connection")}
                if body or self.command in ("PUT", "POST"):
                    headers["Content-Length"] = str(len(body))
                conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=30)
                try:
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                length = resp.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def faulty_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FaultyS3, str]]:
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    proxy = FaultyS3(port)
    bucket = "flatlay-faults"
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}").create_bucket(Bucket=bucket)
    try:
        yield proxy, bucket
    finally:
        proxy.close()
        moto.stop()


def _objects(proxy: FaultyS3, bucket: str, job_id: str) -> list[str]:
    listed = boto3.client("s3", endpoint_url=proxy.url).list_objects_v2(
        Bucket=bucket, Prefix=f"assets/{job_id}/")
    return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", [])
                  if "/outputs-" not in o["Key"])


def _wait_status(c, job_id: str, want: str, attempts: int = 0,  # noqa: ANN001
                 timeout: float = 90.0) -> dict:
    """The job's status once it is `want` after at least `attempts` attempts."""
    deadline = time.monotonic() + timeout
    while ((status := c.get(f"/assets/{job_id}").json())["status"] != want
           or status["attempts"] < attempts):
        assert time.monotonic() < deadline, status
        time.sleep(0.1)
    return status


@pytest.mark.slow
def test_s3_answering_503_through_flatlay_serve(
    faulty_s3: tuple[FaultyS3, str], tmp_path: Path, photo: bytes
) -> None:
    proxy, bucket = faulty_s3
    port = free_port()
    env = {**CREDENTIALS, "FLATLAY_DATA_DIR": str(tmp_path / "data"),
           "FLATLAY_BLOB_URL": f"s3://{bucket}", "FLATLAY_S3_ENDPOINT_URL": proxy.url,
           "FLATLAY_AUTH_ENABLED": "false", "FLATLAY_RATE_LIMIT_PER_S": "0",
           "FLATLAY_EXTRA_PIPELINES": TEST_PIPELINES,
           "FLATLAY_PRELOAD_PIPELINES": "cutout,test-slow", SLOW_SECONDS_ENV: "1.5",
           "FLATLAY_MAX_ATTEMPTS": "3", "FLATLAY_STORAGE_RETRY_S": "3",
           "FLATLAY_WORKER_HEARTBEAT_S": "1", "FLATLAY_RECONCILE_INTERVAL_S": "1"}
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=env, port=port,
                                 log_dir=tmp_path)
    outputs = re.compile(r"/assets/[^/]+/(result|outputs)-")
    files = {"file": ("a.jpg", photo, "image/jpeg")}
    form = {"pipeline": "test-slow", "output_size": "256"}
    try:
        with svc.client() as c:
            # Every PUT fails: not ready, and an upload is refused with nothing kept.
            proxy.fail = re.compile(".")
            ready = c.get("/readyz")
            assert ready.status_code == 503, ready.text
            assert ready.json()["checks"]["blob_store_write"].startswith("error"), ready.text
            r = c.post("/assets", files=files, data=form)
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "storage_unavailable"

            # The first attempt's result cannot be stored; the retry's can. The fault names
            # the first attempt's keys, so the retry passes however late the poll below sees
            # the job `queued` between them (a window of the 3 s retry delay: CI's load once
            # made a 0.1 s poll miss a 0.5 s window).
            proxy.fail = None
            assert c.get("/readyz").status_code == 200
            refused = proxy.refused
            proxy.fail = re.compile(r"/assets/[^/]+/(result|outputs)-a1")
            job_id = c.post("/assets", files=files, data=form).json()["id"]
            waiting = _wait_status(c, job_id, "queued", attempts=1)
            assert waiting["error"]["code"] == "storage_unavailable", waiting
            status = wait_for_job(c, job_id)
            assert status["status"] == "succeeded" and status["attempts"] == 2, status
            assert proxy.refused > refused
            assert c.get(f"/assets/{job_id}/result").content[:4] == b"\x89PNG"
            assert _objects(proxy, bucket, job_id) == ["input.jpg", "result-a2.png"]

            # Storage that stays down: failed with the code after every attempt, no result.
            proxy.fail = outputs
            doomed = c.post("/assets", files=files, data=form).json()["id"]
            status = wait_for_job(c, doomed)
            assert status["status"] == "failed" and status["attempts"] == 3, status
            assert status["error"]["code"] == "storage_unavailable", status
            assert _objects(proxy, bucket, doomed) == ["input.jpg"]
            assert c.get("/readyz").status_code == 200  # the probe's key is not an output
        assert proxy.refused > 0
    finally:
        svc.stop()

