"""The HTTP API in process, against a real SQLite store and the real file-based queue
(no worker here: what is enqueued is read back from the queue folder)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service.app import create_app
from service.auth import create_key
from service.errors import ERROR_CODES
from service.reconciler import reconcile_once
from service.settings import Settings
from service.store import Job, migrate
from tests.support import encode, garment_photo
from tests.test_io import _png_with_size


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", max_upload_bytes=2_000_000)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        key = create_key(c.app.state.ctx.store, "acme").key
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def _queued_job_ids(settings: Settings) -> list[str]:
    ids = []
    for path in sorted(settings.queue_dir.glob("*.msg")):
        message = json.loads(path.read_text())
        body = json.loads(base64.b64decode(message["body"]))
        ids.append(body[0][0])  # Celery protocol 2: (args, kwargs, embed)
    return ids


def test_post_stores_the_job_and_enqueues_only_its_id(
    client: TestClient, settings: Settings, photo: bytes
) -> None:
    r = client.post("/assets", files={"file": ("shirt.jpg", photo, "image/jpeg")},
                    data={"output_size": "512", "background": "#eeeeee", "format": "webp",
                          "seed": "7", "steps": "4"})
    assert r.status_code == 202, r.text
    body = r.json()
    job_id = body["id"]
    assert body["status"] == "queued" and body["links"]["result"] == f"/assets/{job_id}/result"
    assert r.headers["location"] == f"/assets/{job_id}"
    assert _queued_job_ids(settings) == [job_id]
    assert max(p.stat().st_size for p in settings.queue_dir.glob("*.msg")) < 4096

    status = client.get(f"/assets/{job_id}").json()
    assert status["status"] == "queued" and status["pipeline"] == settings.default_pipeline
    assert status["options"] == {"preset": "square-white", "output_size": 512,
                                 "background": "#eeeeee", "format": "webp", "seed": 7,
                                 "structure": None, "steps": 4, "hint": None}
    assert status["side_outputs"] == {} and status["compliance"] is None
    assert status["input"]["width"] == 320 and status["input"]["content_type"] == "image/jpeg"
    assert status["progress"] == {"stage": None, "percent": 0}

    r = client.get(f"/assets/{job_id}/result")
    assert r.status_code == 409 and r.json()["error"]["code"] == "asset_not_ready"
    stored = settings.resolved_blob_dir / "assets" / job_id / "input.jpg"
    assert stored.read_bytes() == photo


def test_unknown_ids_are_404(client: TestClient) -> None:
    for path in ("/assets/nope", "/assets/nope/result", "/assets/" + "x" * 500):
        r = client.get(path)
        assert r.status_code == 404 and r.json()["error"]["code"] == "asset_not_found"


def _rgb() -> np.ndarray:
    return garment_photo(200, 150)[0]


BAD_UPLOADS = [
    ("empty", b"", 422, "empty_file"),
    ("text named .jpg", b"just some text, not a photo\n" * 20, 415, "unsupported_media_type"),
    ("truncated jpeg", encode(_rgb(), "JPEG")[:900], 422, "corrupt_image"),
    ("1x1 image", encode(np.zeros((1, 1, 3), np.uint8), "PNG"), 422, "image_too_small"),
    ("100000x100000 header", _png_with_size(100_000, 100_000), 413, "image_too_many_pixels"),
    ("gif", encode(_rgb(), "GIF"), 415, "unsupported_media_type"),
    ("tiff", encode(_rgb(), "TIFF"), 415, "unsupported_media_type"),
    ("over the byte limit", b"\xff\xd8" + b"\0" * 2_100_000, 413, "file_too_large"),
]


@pytest.mark.parametrize("name,data,status,code", BAD_UPLOADS, ids=[b[0] for b in BAD_UPLOADS])
def test_bad_uploads_get_typed_4xx(
    client: TestClient, settings: Settings, name: str, data: bytes, status: int, code: str
) -> None:
    r = client.post("/assets", files={"file": ("photo.jpg", data, "image/jpeg")})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["field"] == "file" and err["message"]
    assert _queued_job_ids(settings) == []  # nothing was enqueued


@pytest.mark.parametrize(
    "form,field,code",
    [
        ({"pipeline": "magic"}, "pipeline", "unknown_pipeline"),
        ({"output_size": "100"}, "output_size", "validation_error"),
        ({"output_size": "4096"}, "output_size", "validation_error"),
        ({"output_size": "big"}, "output_size", "validation_error"),
        ({"background": "blue-ish"}, "background", "validation_error"),
        ({"format": "gif"}, "format", "validation_error"),
        ({"format": "jpeg", "background": "transparent"}, "background", "validation_error"),
        ({"seed": "-1"}, "seed", "validation_error"),
        ({"steps": "0"}, "steps", "validation_error"),
        ({"steps": "51"}, "steps", "validation_error"),
        ({"hint": "long sleeves " * 20}, "hint", "validation_error"),
        ({"hint": "midi\x00dress"}, "hint", "validation_error"),
        ({"hint": "midi\x1b[31mdress"}, "hint", "validation_error"),
    ],
)
def test_bad_options_name_their_field(
    client: TestClient, photo: bytes, form: dict, field: str, code: str
) -> None:
    r = client.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")}, data=form)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["field"] == field


def test_missing_file_field(client: TestClient) -> None:
    r = client.post("/assets", data={"output_size": "512"})
    assert r.status_code == 422
    assert r.json()["error"] == {"code": "validation_error", "field": "file",
                                 "message": "the field 'file' is required"}


def test_unknown_route_and_method_are_typed(client: TestClient) -> None:
    assert client.get("/nothing").json()["error"]["code"] == "not_found"
    r = client.delete("/healthz")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_health_readiness_and_docs(client: TestClient, settings: Settings) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"job_store": "ok", "blob_store": "ok",
                                      "blob_store_write": "ok", "broker": "ok"}
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/assets"]["post"]
    described = json.dumps(post["responses"])
    for code in ("unsupported_media_type", "file_too_large", "corrupt_image", "unknown_pipeline"):
        assert code in described
    assert set(ERROR_CODES) >= {"asset_not_ready", "asset_not_found"}
    assert client.get("/pipelines").json()["default"] == settings.default_pipeline


def test_readyz_reports_a_broken_store(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d", database_url=f"sqlite:///{tmp_path}/no/such/dir/x.db")
    with TestClient(create_app(s)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["job_store"].startswith("error")


def test_broker_outage_loses_no_job(tmp_path: Path, photo: bytes) -> None:
    # A Redis URL where nothing listens: the job is stored and stays queued for the reconciler.
    # The rate limiter shares that Redis; "allow" lets the request through to the broker
    # (the default with keys, deny, is tested in test_ratelimit_outage).
    s = Settings(data_dir=tmp_path / "d", broker_url="redis://127.0.0.1:1/0",
                 rate_limit_on_error="allow")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    with TestClient(create_app(s)) as c:
        c.headers["Authorization"] = f"Bearer {create_key(c.app.state.ctx.store, 't').key}"
        r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert r.status_code == 202
        assert c.get(f"/assets/{r.json()['id']}").json()["status"] == "queued"
        assert c.get("/readyz").status_code == 503


def test_reconciler_requeues_a_job_whose_worker_died(
    client: TestClient, settings: Settings, photo: bytes
) -> None:
    job_id = client.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")}).json()["id"]
    ctx = client.app.state.ctx
    assert ctx.store.claim(job_id, "doomed-worker") is not None
    for p in settings.queue_dir.glob("*.msg"):
        p.unlink()  # the file transport lost the message with the worker
    assert reconcile_once(ctx).requeued_running == 0  # not stale yet
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.running_stale_after_s + 5)
    with ctx.store._session() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(started_at=long_ago))
    report = reconcile_once(ctx)
    assert report.requeued_running == 1
    assert client.get(f"/assets/{job_id}").json()["status"] == "queued"
    assert _queued_job_ids(settings) == [job_id]
