"""No lost jobs, with real processes and real faults: a worker killed with SIGKILL in the
middle of a job, a job that kills its worker every time, a worker asked to stop, the real
Redis server restarted (losing every message) while 50 jobs wait, and `flatlay serve` killed
with SIGKILL (its worker must not live on, unsupervised)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from service.multiproc import pid_alive
from service.store import JobStore
from tests.pipelines import SLOW_SECONDS_ENV, TEST_PIPELINES
from tests.support import ServiceProcesses, encode, free_port, garment_photo, wait_for_job

pytestmark = pytest.mark.slow

# The command .ci/run starts Redis with (nothing kept on disk: a restart loses every message).
REDIS_START = ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "-::1", "--port",
               "6379", "--save", "", "--appendonly", "no", "--dir", "/var/lib/redis",
               "--logfile", "/var/log/redis/ci.log"]


def fault_env(data_dir: Path, **extra: str) -> dict[str, str]:
    """Fast heartbeats and reconciling, the test pipelines, the local demo's auth."""
    return {
        "FLATLAY_DATA_DIR": str(data_dir),
        "FLATLAY_EXTRA_PIPELINES": TEST_PIPELINES,
        "FLATLAY_WORKER_HEARTBEAT_S": "1",
        "FLATLAY_RECONCILE_INTERVAL_S": "1",
        "FLATLAY_REQUEUE_QUEUED_AFTER_S": "4",
        "FLATLAY_AUTH_ENABLED": "false",
        "FLATLAY_RATE_LIMIT_PER_S": "0",
        **extra,
    }


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def submit(c: httpx.Client, photo: bytes, pipeline: str) -> str:
    r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
               data={"pipeline": pipeline, "output_size": "256"})
    assert r.status_code == 202, r.text
    return r.json()["id"]


def wait_running(c: httpx.Client, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.get(f"/assets/{job_id}").json()
        if status["status"] == "running" and status["progress"]["stage"] == "wait":
            return status
        assert status["status"] in ("queued", "running"), status
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never started: {status}")


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    root = tmp_path_factory.mktemp("faults")
    port = free_port()
    env = fault_env(root / "data", FLATLAY_MAX_ATTEMPTS="2", **{SLOW_SECONDS_ENV: "4"})
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=env, port=port,
                                 log_dir=root)
    svc.data_dir = root / "data"  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def test_kill_9_of_the_worker_mid_job_still_ends_succeeded_with_one_result(
    embedded: ServiceProcesses, photo: bytes
) -> None:
    with embedded.client() as c:
        job_id = submit(c, photo, "test-slow")
        running = wait_running(c, job_id)
        # The job row names the process that holds it ("host:pid").
        store = JobStore(f"sqlite:///{embedded.data_dir / 'jobs.sqlite3'}")  # type: ignore[attr-defined]
        worker_pid = int(store.get(job_id).worker.rsplit(":", 1)[1])
        store.dispose()
        assert running["attempts"] == 1
        os.killpg(os.getpgid(worker_pid), signal.SIGKILL)  # the worker and its pool child
        status = wait_for_job(c, job_id, timeout=120)
        assert status["status"] == "succeeded", (status, embedded.log_text())
        assert status["attempts"] == 2
        assert c.get(f"/assets/{job_id}/result").status_code == 200
    folder = embedded.data_dir / "blobs" / "assets" / job_id  # type: ignore[attr-defined]
    results = [p.name for p in folder.iterdir() if p.name.startswith("result")]
    assert len(results) == 1, results


def test_a_job_that_kills_its_worker_each_time_ends_worker_crashed(
    embedded: ServiceProcesses, photo: bytes
) -> None:
    with embedded.client() as c:
        job_id = submit(c, photo, "test-crash")
        status = wait_for_job(c, job_id, timeout=120)
        assert status["status"] == "failed", status
        assert status["error"]["code"] == "worker_crashed" and status["attempts"] == 2
        # The worker came back: a good job still goes through.
        assert wait_for_job(c, submit(c, photo, "cutout"))["status"] == "succeeded"


def test_a_worker_asked_to_stop_finishes_its_job(tmp_path: Path, photo: bytes) -> None:
    port = free_port()
    env = fault_env(tmp_path / "data", **{SLOW_SECONDS_ENV: "3"})
    svc = ServiceProcesses.start([["api", "--port", str(port)], ["worker"]], env=env,
                                 port=port, log_dir=tmp_path)
    try:
        with svc.client() as c:
            job_id = submit(c, photo, "test-slow")
            wait_running(c, job_id)
            worker = svc.procs[1]
            worker.send_signal(signal.SIGTERM)  # Celery's warm shutdown
            assert worker.wait(60) == 0
            status = c.get(f"/assets/{job_id}").json()
            assert status["status"] == "succeeded" and status["attempts"] == 1, status
    finally:
        svc.stop()


def _descendants(pid: int) -> list[int]:
    """The processes under `pid` (children, grandchildren…), from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        kids = parents.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def test_kill_9_of_serve_takes_its_worker_along(tmp_path: Path) -> None:
    port = free_port()
    env = fault_env(tmp_path / "data", FLATLAY_PRELOAD_PIPELINES="cutout")
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=env, port=port,
                                 log_dir=tmp_path)
    serve = svc.procs[0]
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 90
        while len(workers := _descendants(serve.pid)) < 2:  # the worker and its pool child
            assert time.monotonic() < deadline, (workers, svc.log_text())
            time.sleep(0.2)
        os.kill(serve.pid, signal.SIGKILL)
        serve.wait()
        deadline = time.monotonic() + 5
        while (alive := [p for p in workers if pid_alive(p)]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert alive == [], svc.log_text()
    finally:
        for pid in workers:  # what this test started, should it have outlived serve
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        svc.stop()


def test_serve_asked_to_stop_lets_its_worker_finish_the_job(tmp_path: Path,
                                                             photo: bytes) -> None:
    # The worker's death signal must not fire on a stop that is asked for: it waits for the
    # warm shutdown (the job in hand ends `succeeded`).
    port = free_port()
    env = fault_env(tmp_path / "data", FLATLAY_PRELOAD_PIPELINES="cutout,test-slow",
                    **{SLOW_SECONDS_ENV: "3"})
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=env, port=port,
                                 log_dir=tmp_path)
    try:
        with svc.client() as c:
            job_id = submit(c, photo, "test-slow")
            wait_running(c, job_id)
        svc.procs[0].send_signal(signal.SIGTERM)
        assert svc.procs[0].wait(60) == 0, svc.log_text()
        store = JobStore(f"sqlite:///{tmp_path / 'data' / 'jobs.sqlite3'}")
        job = store.get(job_id)
        store.dispose()
        assert job.status == "succeeded" and job.attempts == 1, (job, svc.log_text())
    finally:
        svc.stop()


def _redis_up(timeout: float = 30.0) -> None:
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.ping()
            return
        except redis.RedisError:
            time.sleep(0.2)
    raise TimeoutError("Redis did not come back")


def restart_redis() -> None:
    """Shut the real server down without saving (every queued message is lost), start it
    again the way .ci/run does."""
    subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", "6379", "shutdown", "nosave"],
                   capture_output=True, timeout=30)
    Path("/var/lib/redis").mkdir(parents=True, exist_ok=True)
    Path("/var/log/redis").mkdir(parents=True, exist_ok=True)
    subprocess.run(REDIS_START, check=True, timeout=30)
    _redis_up()


@pytest.mark.redis
@pytest.mark.postgres
def test_redis_restarted_while_50_jobs_wait_loses_none(
    redis_url: str, postgres_url: str, tmp_path: Path, photo: bytes
) -> None:
    port = free_port()
    queue = f"flatlay.test.{uuid.uuid4().hex[:8]}"
    env = fault_env(tmp_path / "data", FLATLAY_BROKER_URL=redis_url,
                    FLATLAY_DATABASE_URL=postgres_url, FLATLAY_QUEUE_NAME=queue,
                    **{SLOW_SECONDS_ENV: "0.2"})
    svc = ServiceProcesses.start([["api", "--port", str(port)], ["worker"]], env=env,
                                 port=port, log_dir=tmp_path)
    try:
        with svc.client() as c:
            ids = [submit(c, photo, "test-slow") for _ in range(50)]
            waiting = redis.Redis.from_url(redis_url).llen(queue)
            assert waiting > 10, "the worker took the jobs before Redis went down"
            restart_redis()
            assert redis.Redis.from_url(redis_url).llen(queue) == 0  # every message is gone
            deadline = time.monotonic() + 240
            statuses = {}
            for job_id in ids:
                statuses[job_id] = wait_for_job(c, job_id, timeout=deadline - time.monotonic())
        lost = [j for j, s in statuses.items() if s["status"] != "succeeded"]
        assert lost == [], (lost, svc.log_text())
    finally:
        _redis_up()
        svc.stop()


def test_api_restarted_mid_batch_loses_nothing(tmp_path: Path, photo: bytes) -> None:
    """A manifest batch (images fetched by the worker from a real local HTTP server); the
    API is killed with SIGKILL half-way and started again."""
    import io
    import zipfile

    from PIL import Image

    from tests.http_fixtures import local_http

    with local_http({f"/p{i}.jpg": ("image/jpeg", photo) for i in range(8)}) as srv:
        items = [{"sku": f"SKU-{i}", "image_url": f"{srv.url}/p{i}.jpg"} for i in range(8)]
        items[3]["options"] = {"output_size": 512, "format": "webp"}
        port = free_port()
        env = fault_env(tmp_path / "data", FLATLAY_FETCH_ALLOW_HOSTS="127.0.0.1",
                        **{SLOW_SECONDS_ENV: "0.5"})
        svc = ServiceProcesses.start([["api", "--port", str(port)], ["worker"]], env=env,
                                     port=port, log_dir=tmp_path)
        api2 = None
        try:
            with svc.client() as c:
                import json

                r = c.post("/batches", files={"manifest": ("m.json", json.dumps(items), "x")},
                           data={"pipeline": "test-slow", "output_size": "256"})
                assert r.status_code == 202, r.text
                assert r.json()["counts"]["total"] == 8 and not r.json()["rejected"], r.text
                batch_id = r.json()["id"]
                deadline = time.monotonic() + 60
                while c.get(f"/batches/{batch_id}").json()["counts"]["succeeded"] < 1:
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
            os.killpg(svc.procs[0].pid, signal.SIGKILL)
            svc.procs[0].wait()
            (tmp_path / "again").mkdir()
            api2 = ServiceProcesses.start([["api", "--port", str(port)]], env=env, port=port,
                                          log_dir=tmp_path / "again")
            with api2.client() as c:
                deadline = time.monotonic() + 120
                while (status := c.get(f"/batches/{batch_id}").json())["status"] != "completed":
                    assert time.monotonic() < deadline, status
                    time.sleep(0.3)
                assert status["counts"]["succeeded"] == 8, status
                results = c.get(f"/batches/{batch_id}/results")
            with zipfile.ZipFile(io.BytesIO(results.content)) as zf:
                names = sorted(zf.namelist())
                assert names == sorted([f"SKU-{i}.png" for i in range(8) if i != 3]
                                       + ["SKU-3.webp", "manifest.csv"])
                assert Image.open(io.BytesIO(zf.read("SKU-3.webp"))).size == (512, 512)
                assert Image.open(io.BytesIO(zf.read("SKU-0.png"))).size == (256, 256)
        finally:
            if api2 is not None:
                api2.stop()
            svc.stop()
