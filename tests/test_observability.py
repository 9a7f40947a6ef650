"""Metrics, structured logs, worker heartbeats, `flatlay status` and `flatlay generate`.

The end-to-end part runs a real `flatlay serve` (API + Celery worker child, multiprocess
metrics); the rest runs in process against a real SQLite store.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import update

from cli import main
from models.pipeline import pipeline_names
from service.app import create_app
from service.logs import JsonFormatter, _ContextIds, log_context
from service.settings import Settings
from service.store import JobStore, WorkerRow, downgrade, migrate, utcnow
from tests.support import ServiceProcesses, encode, free_port, garment_photo, wait_for_job

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def _scrape(client: httpx.Client | TestClient) -> tuple[Samples, set[str]]:
    """(sample name, sorted labels) → value, and the metric family names."""
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    families = set()
    for family in text_string_to_metric_families(r.text):
        families.add(family.name)
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, families


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# --- A real `flatlay serve` ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServiceProcesses, Path]]:
    root = tmp_path_factory.mktemp("observed")
    port = free_port()
    svc = ServiceProcesses.start(
        [["serve", "--port", str(port), "--data-dir", str(root / "data")]],
        env={"FLATLAY_WORKER_HEARTBEAT_S": "1", "FLATLAY_AUTH_ENABLED": "false"},
        port=port, log_dir=root,
    )
    yield svc, root / "data"
    svc.stop()


@pytest.mark.slow
def test_one_job_moves_the_counters_and_histograms(
    served: tuple[ServiceProcesses, Path],
) -> None:
    svc, _ = served
    photo = encode(garment_photo(480, 360)[0], "JPEG", quality=90)
    with svc.client() as c:
        before, _ = _scrape(c)
        r = c.post("/assets", files={"file": ("shirt.jpg", photo, "image/jpeg")},
                   data={"output_size": "512"}, headers={"X-Request-ID": "req-metrics-1"})
        assert r.status_code == 202 and r.headers["x-request-id"] == "req-metrics-1"
        status = wait_for_job(c, r.json()["id"])
        assert status["status"] == "succeeded"
        after, families = _scrape(c)

    assert all(name.startswith("flatlay_") for name in families), families
    moved = lambda name, **labels: _value(after, name, **labels) - _value(before, name, **labels)  # noqa: E731
    assert moved("flatlay_http_requests_total", route="/assets", method="POST", status="202") == 1
    # Polls are counted under the route template, never under the asset's own path.
    assert moved("flatlay_http_requests_total", route="/assets/{asset_id}", method="GET",
                 status="200") >= 1
    assert not any(status["id"] in str(labels) for _, labels in after)
    assert moved("flatlay_http_request_duration_seconds_count", route="/assets",
                 method="POST") == 1
    # The worker's series, summed into the API's /metrics from the shared multiprocess folder.
    default = status["pipeline"]
    assert default == Settings().default_pipeline
    for stage in status["timings"]:
        assert moved("flatlay_stage_seconds_count", pipeline=default, stage=stage) == 1, stage
        assert _value(after, "flatlay_stage_seconds_sum", pipeline=default, stage=stage) > 0
    assert moved("flatlay_jobs_processed_total", pipeline=default, status="succeeded") == 1
    for name in pipeline_names():  # the worker loads every registered pipeline
        assert ("flatlay_model_load_seconds", (("pipeline", name),)) in after
    # Read from the job store at scrape time.
    assert _value(after, "flatlay_jobs", state="succeeded") >= 1
    assert _value(after, "flatlay_queue_depth") == 0
    assert _value(after, "flatlay_workers_live") >= 1
    assert _value(after, "flatlay_job_store_up") == 1
    assert ("flatlay_broker_queue_depth", (("queue", "flatlay.gpu"),)) in after


@pytest.mark.slow
def test_the_request_id_reaches_the_worker_logs(served: tuple[ServiceProcesses, Path]) -> None:
    svc, _ = served
    photo = encode(garment_photo(400, 300)[0], "JPEG", quality=90)
    with svc.client() as c:
        r = c.post("/assets", files={"file": ("shirt.jpg", photo, "image/jpeg")},
                   headers={"X-Request-ID": "req-logs-42"})
        job_id = r.json()["id"]
        assert wait_for_job(c, job_id)["status"] == "succeeded"
        generated = c.get("/healthz").headers["x-request-id"]
        assert len(generated) == 32 and int(generated, 16) >= 0
        # An id with characters outside [A-Za-z0-9._:-] is replaced, not echoed.
        odd = 'a b";{"level":"forged'
        assert c.get("/healthz", headers={"X-Request-ID": odd}).headers["x-request-id"] != odd

    lines = [json.loads(line) for line in svc.logs[0].read_text().splitlines()
             if line.startswith("{")]
    assert lines and all({"ts", "level", "logger", "message"} <= set(e) for e in lines)
    api = [e for e in lines if e["logger"] == "flatlay.http" and e.get("request_id") ==
           "req-logs-42"]
    assert api and api[0]["status"] == 202 and api[0]["route"] == "/assets"
    worker = [e for e in lines if e["logger"] == "flatlay.worker" and e.get("job_id") == job_id]
    assert worker, "the worker logged nothing with the job id"
    assert all(e.get("request_id") == "req-logs-42" for e in worker)
    assert worker[-1]["message"] == "job succeeded" and "parse" in worker[-1]["timings"]


@pytest.mark.slow
def test_status_shows_the_live_worker(
    served: tuple[ServiceProcesses, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, data_dir = served
    # The heartbeat (every second here) names the job in hand; the last job just ended.
    deadline = time.monotonic() + 30  # a busy CI machine delays heartbeats
    while True:
        assert main(["status", "--json", "--data-dir", str(data_dir)]) == 0
        status = json.loads(capsys.readouterr().out)
        if status["workers"] and status["workers"][0]["current_job"] is None:
            break
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status["queue_depth"] == 0 and set(status["jobs"]) == {
        "queued", "running", "succeeded", "failed", "canceled"}
    assert len(status["workers"]) == 1
    worker = status["workers"][0]
    assert worker["pipelines"] == pipeline_names() and worker["last_seen_s"] < 3

    assert main(["status", "--data-dir", str(data_dir)]) == 0
    table = capsys.readouterr().out
    assert "workers      1 live" in table and worker["name"] in table and "idle" in table


# --- In process ---------------------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", auth_enabled=False)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return s


def test_metrics_in_one_process_use_route_templates(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        before, _ = _scrape(client)
        client.get("/assets/abc")
        client.get("/assets/def")
        client.get("/no/such/route")
        after, families = _scrape(client)
    assert all(name.startswith("flatlay_") for name in families), families
    assert _value(after, "flatlay_http_requests_total", route="/assets/{asset_id}", method="GET",
                  status="404") - _value(before, "flatlay_http_requests_total",
                                         route="/assets/{asset_id}", method="GET",
                                         status="404") == 2
    assert _value(after, "flatlay_http_requests_total", route="unmatched", method="GET",
                  status="404") >= 1
    # No job has run in this process: the job store says so, with no worker alive.
    assert _value(after, "flatlay_jobs", state="succeeded") == 0
    assert _value(after, "flatlay_workers_live") == 0


def test_json_log_lines_carry_the_ids() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(_ContextIds())
    logger = logging.getLogger("flatlay.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        logger.warning("outside")
        with log_context(request_id="r1", job_id="j1"):
            logger.info("inside %s", "ctx", extra={"stage": "parse"})
    finally:
        logger.removeHandler(handler)
    outside, inside = (json.loads(line) for line in stream.getvalue().splitlines())
    assert outside["level"] == "warning" and "request_id" not in outside
    assert inside["message"] == "inside ctx" and inside["logger"] == "flatlay.test.json"
    assert (inside["request_id"], inside["job_id"], inside["stage"]) == ("r1", "j1", "parse")


def test_status_refuses_bad_data_dirs(
    tmp_path: Path, settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--data-dir", str(tmp_path / "nowhere")]) == 2
    assert "no job store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()  # looking created nothing

    downgrade(settings.resolved_database_url, "0001")
    assert main(["status", "--data-dir", str(settings.data_dir)]) == 2
    assert "run `flatlay migrate`" in capsys.readouterr().err


def test_status_counts_only_workers_with_a_recent_heartbeat(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    store = JobStore(settings.resolved_database_url)
    store.heartbeat("h:1", hostname="h", pid=1, pipelines=["cutout"], current_job="abc")
    store.heartbeat("h:2", hostname="h", pid=2, pipelines=["cutout"], current_job=None)
    with store.engine.begin() as conn:  # h:2 went silent a minute ago
        conn.execute(update(WorkerRow).where(WorkerRow.name == "h:2")
                     .values(last_seen_at=utcnow() - dt.timedelta(seconds=60)))
    store.dispose()
    assert main(["status", "--json", "--data-dir", str(settings.data_dir)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [w["name"] for w in status["workers"]] == ["h:1"]
    assert status["workers"][0]["current_job"] == "abc"


def test_generate_writes_flatlays_and_reports_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    photos = tmp_path / "in"
    (photos / "more").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(encode(garment_photo(320, 240)[0], "JPEG"))
    (photos / "more" / "b.png").write_bytes(encode(garment_photo(320, 240)[0], "PNG"))
    notes = tmp_path / "notes.jpg"
    notes.write_text("not a photo")
    out = tmp_path / "out"
    code = main(["generate", str(photos), str(notes), "-o", str(out), "--output-size", "256",
                 "--format", "webp", "--background", "transparent"])
    captured = capsys.readouterr()
    assert code == 1  # one photo failed; the others were written
    assert "2 flat-lay(s)" in captured.out and "1 photo(s) failed" in captured.out
    assert "unsupported_media_type" in captured.err
    assert sorted(p.name for p in out.glob("*.webp")) == ["a-flatlay.webp", "b-flatlay.webp"]
    # Each with its side outputs and compliance check beside it.
    assert {"a-flatlay.mask.png", "a-flatlay.compliance.json", "b-flatlay.overlay.png"} <= \
        {p.name for p in out.iterdir()}
    image = Image.open(out / "a-flatlay.webp")
    assert image.size == (256, 256) and image.convert("RGBA").getpixel((0, 0))[3] == 0


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--pipeline", "magic"], "unknown pipeline 'magic'"),
        (["--output-size", "64"], "--size must be within 256–2048"),
        (["--background", "blue-ish"], "--background"),
        (["--format", "jpeg", "--background", "transparent"], "JPEG has no alpha channel"),
    ],
)
def test_generate_refuses_bad_options(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    (tmp_path / "a.jpg").write_bytes(encode(garment_photo(320, 240)[0], "JPEG"))
    assert main(["generate", str(tmp_path / "a.jpg"), "-o", str(tmp_path / "o"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_generate_refuses_missing_inputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", str(tmp_path / "missing.jpg")]) == 2
    assert "no such file or folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["generate", str(tmp_path / "empty")]) == 2
    assert "no JPEG, PNG or WebP photos" in capsys.readouterr().err
