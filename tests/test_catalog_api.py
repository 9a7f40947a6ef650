"""Idempotency keys, cancel, delete, retention and rate limits, in process against a real
SQLite store and the real file queue (and the real Redis for the shared rate limit)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def _client(settings: Settings, tenant: str = "acme") -> TestClient:
    settings.ensure_dirs()
    migrate(settings.resolved_database_url)
    return TestClient(create_app(settings))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with _client(settings) as c:
        c.headers["Authorization"] = f"Bearer {create_key(c.app.state.ctx.store, 'acme').key}"
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def _post(c: TestClient, photo: bytes, headers: dict | None = None, **form: str):  # noqa: ANN202
    return c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")}, data=form,
                  headers=headers or {})


def test_same_idempotency_key_and_body_return_the_same_job(
    client: TestClient, photo: bytes
) -> None:
    first = _post(client, photo, {"Idempotency-Key": "sku-123-v1"}, output_size="512")
    again = _post(client, photo, {"Idempotency-Key": "sku-123-v1"}, output_size="512")
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    assert client.app.state.ctx.store.count_by_status()["queued"] == 1
    # Another body under the same key is a conflict; nothing new is made.
    other = _post(client, photo, {"Idempotency-Key": "sku-123-v1"}, output_size="1024")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["field"] == "Idempotency-Key"
    # Without a key, the same body makes a new job.
    assert _post(client, photo, output_size="512").json()["id"] != first.json()["id"]
    # Keys are per tenant: another tenant's same key is its own.
    other_key = create_key(client.app.state.ctx.store, "globex").key
    theirs = _post(client, photo, {"Idempotency-Key": "sku-123-v1",
                                   "Authorization": f"Bearer {other_key}"}, output_size="512")
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]
    long_key = _post(client, photo, {"Idempotency-Key": "k" * 300})
    assert long_key.status_code == 422
    assert long_key.json()["error"]["field"] == "Idempotency-Key"


def test_cancel_a_queued_asset(client: TestClient, photo: bytes) -> None:
    job_id = _post(client, photo).json()["id"]
    r = client.post(f"/assets/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "canceled"
    assert client.post(f"/assets/{job_id}/cancel").json()["status"] == "canceled"
    r = client.get(f"/assets/{job_id}/result")
    assert r.status_code == 409 and r.json()["error"]["code"] == "asset_canceled"
    # A job that already finished cannot be canceled.
    done = _post(client, photo).json()["id"]
    store = client.app.state.ctx.store
    store.claim(done, "w")
    store.succeed(done, result_blob="x.png", content_type="image/png", timings={})
    r = client.post(f"/assets/{done}/cancel")
    assert r.status_code == 409 and r.json()["error"]["code"] == "asset_not_cancelable"
    assert client.post("/assets/nope/cancel").status_code == 404


def test_delete_removes_the_blobs_and_the_asset(
    client: TestClient, settings: Settings, photo: bytes
) -> None:
    job_id = _post(client, photo).json()["id"]
    ctx = client.app.state.ctx
    ctx.store.claim(job_id, "w")
    ctx.blobs.put(f"assets/{job_id}/result.png", b"png bytes")
    ctx.store.succeed(job_id, result_blob=f"assets/{job_id}/result.png",
                      content_type="image/png", timings={})
    folder = settings.resolved_blob_dir / "assets" / job_id
    assert sorted(p.name for p in folder.iterdir()) == ["input.jpg", "result.png"]
    assert client.delete(f"/assets/{job_id}").status_code == 204
    assert not folder.exists()  # emptied, then removed
    assert client.get(f"/assets/{job_id}").status_code == 404
    assert client.delete(f"/assets/{job_id}").status_code == 404
    # A worker that was running it finds no row to record a result in.
    assert not ctx.store.succeed(job_id, result_blob="r", content_type="image/png", timings={})


def test_retention_expires_results(client: TestClient, settings: Settings, photo: bytes) -> None:
    job_id = _post(client, photo).json()["id"]
    ctx = client.app.state.ctx
    ctx.store.claim(job_id, "w")
    ctx.blobs.put(f"assets/{job_id}/result.png", b"png bytes")
    ctx.store.succeed(job_id, result_blob=f"assets/{job_id}/result.png",
                      content_type="image/png", timings={})
    assert reconcile_once(ctx).expired == 0  # finished just now
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.result_retention_s + 60)
    with ctx.store._session() as s, s.begin():
        s.execute(update(Job).where(Job.id == job_id).values(finished_at=long_ago))
    assert reconcile_once(ctx).expired == 1
    assert not (settings.resolved_blob_dir / "assets" / job_id).exists()
    status = client.get(f"/assets/{job_id}").json()
    assert status["status"] == "succeeded" and status["expired_at"]
    r = client.get(f"/assets/{job_id}/result")
    assert r.status_code == 410 and r.json()["error"]["code"] == "asset_expired"
    assert reconcile_once(ctx).expired == 0


def _exhaust(c: TestClient, headers: dict) -> list:
    return [c.get("/assets/none", headers=headers) for _ in range(4)]


@pytest.mark.parametrize("broker", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_rate_limit_answers_429_with_retry_after(
    tmp_path: Path, broker: str, request: pytest.FixtureRequest
) -> None:
    extra = {}
    if broker == "redis":
        extra = {"broker_url": request.getfixturevalue("redis_url"),
                 "queue_name": f"flatlay.test.{uuid.uuid4().hex[:8]}"}
    s = Settings(data_dir=tmp_path / "d", rate_limit_per_s=0.5, rate_limit_burst=2, **extra)
    with _client(s) as c:
        store = c.app.state.ctx.store
        key_a = {"Authorization": f"Bearer {create_key(store, 'a').key}"}
        key_b = {"Authorization": f"Bearer {create_key(store, 'b').key}"}
        codes = [r.status_code for r in _exhaust(c, key_a)]
        assert codes == [404, 404, 429, 429]
        r = c.get("/assets/none", headers=key_a)
        assert r.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(r.headers["retry-after"]) <= 2
        # Another key has its own bucket; health and metrics are never limited.
        assert c.get("/assets/none", headers=key_b).status_code == 404
        assert all(c.get("/healthz").status_code == 200 for _ in range(5))


def test_openapi_lists_the_new_codes(client: TestClient) -> None:
    spec = str(client.get("/openapi.json").json())
    for code in ("idempotency_key_reused", "rate_limited", "asset_not_cancelable",
                 "asset_expired", "unauthorized"):
        assert code in ERROR_CODES and code in spec, code
