"""Signed webhooks end to end: a real `flatlay serve` (its worker consumes the CPU queue
too) delivering to a real HTTP receiver on 127.0.0.1 that checks every signature."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.webhooks import sign, verify
from tests.http_fixtures import LocalHTTP, local_http
from tests.support import (
    ServiceProcesses,
    encode,
    free_port,
    garment_photo,
    keys_create_output,
    stored_delivery,
    wait_for_job,
)


def test_signature_matches_the_standard_webhooks_test_vector() -> None:
    secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    body = b'{"test": 2432232314}'
    assert sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body) == \
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    now = int(time.time())
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(now),
               "webhook-signature": sign(secret, "msg_1", now, body)}
    assert verify(secret, headers, body)
    assert not verify(secret, headers, body + b" ")
    assert not verify(secret, {**headers, "webhook-timestamp": str(now - 3600),
                               "webhook-signature": sign(secret, "msg_1", now - 3600, body)},
                      body)


@pytest.fixture(scope="module")
def receiver() -> Iterator[LocalHTTP]:
    with local_http({}) as srv:
        yield srv


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory,
           receiver: LocalHTTP) -> Iterator[tuple[ServiceProcesses, dict]]:
    root = tmp_path_factory.mktemp("webhooks")
    port = free_port()
    env = {"FLATLAY_DATA_DIR": str(root / "data"), "FLATLAY_FETCH_ALLOW_HOSTS": "127.0.0.1",
           "FLATLAY_WEBHOOK_BACKOFF_S": "0.5", "FLATLAY_WEBHOOK_MAX_ATTEMPTS": "3"}
    keys = {}
    for tenant in ("acme", "globex"):
        out = keys_create_output(env, tenant, "--webhook-url", f"{receiver.url}/{tenant}")
        keys[tenant] = {"key": out.strip().splitlines()[-1],
                        "secret": re.search(r"whsec_\S+", out).group(0)}
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=env, port=port,
                                 log_dir=root, api_key=keys["acme"]["key"])
    yield svc, keys
    svc.stop()


def _wait_deliveries(c, n: int, **params: str) -> list[dict]:  # noqa: ANN001
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        found = c.get("/webhooks/deliveries", params=params).json()["deliveries"]
        if len(found) >= n and all(d["status"] != "pending" for d in found):
            return found
        time.sleep(0.3)
    raise TimeoutError(found)


@pytest.mark.slow
def test_signed_events_with_retries_recorded_and_visible(
    served: tuple[ServiceProcesses, dict], receiver: LocalHTTP
) -> None:
    svc, keys = served
    photo = encode(garment_photo(320, 240)[0], "JPEG", quality=90)
    receiver.received.clear()
    receiver.post_statuses[:] = [503]  # the first attempt fails: one retry after backoff
    with svc.client() as c:
        job_id = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")}).json()["id"]
        assert wait_for_job(c, job_id)["status"] == "succeeded"
        (delivery,) = _wait_deliveries(c, 1, asset_id=job_id)
        assert delivery["event"] == "asset.succeeded" and delivery["status"] == "succeeded"
        assert [a["status_code"] for a in delivery["attempts"]] == [503, 200]
        assert c.get(f"/webhooks/deliveries/{delivery['id']}").json()["id"] == delivery["id"]
        # Another tenant sees none of it.
        theirs = svc.client(keys["globex"]["key"])
        assert theirs.get(f"/webhooks/deliveries/{delivery['id']}").status_code == 404
        assert theirs.get("/webhooks/deliveries").json()["deliveries"] == []

        # A batch with its own URL: one event per item and batch.completed.
        blank = encode(garment_photo(200, 150)[0] * 0 + 90, "PNG")
        files = [("files", ("good.jpg", photo, "image/jpeg")),
                 ("files", ("blank.png", blank, "image/png"))]
        batch = c.post("/batches", files=files,
                       data={"webhook_url": f"{receiver.url}/batch-hook"}).json()
        found = _wait_deliveries(c, 3, batch_id=batch["id"])
        assert sorted(d["event"] for d in found) == ["asset.failed", "asset.succeeded",
                                                     "batch.completed"]
        metrics = c.get("/metrics").text
        assert re.search(r'flatlay_webhook_deliveries_total\{event="asset.succeeded",'
                         r'outcome="retry"\} 1\.0', metrics), metrics

    assert len(receiver.received) == 5
    for path, headers, body in receiver.received:
        assert verify(keys["acme"]["secret"], headers, body), (path, headers)
        assert not verify(keys["globex"]["secret"], headers, body)
    by_path = {}
    for path, _, body in receiver.received:
        by_path.setdefault(path, []).append(json.loads(body))
    assert [e["type"] for e in by_path["/acme"]] == ["asset.succeeded"] * 2  # one retry
    completed = next(e for e in by_path["/batch-hook"] if e["type"] == "batch.completed")
    assert completed["data"]["counts"] == {"rejected": 0, "succeeded": 1, "failed": 1}
    # The same webhook-id on the retry, so receivers can drop duplicates.
    ids = [h["webhook-id"] for p, h, _ in receiver.received if p == "/acme"]
    assert ids[0] == ids[1]


def test_webhook_url_needs_a_secret_without_auth(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.settings import Settings
    from service.store import migrate

    s = Settings(data_dir=tmp_path / "d", auth_enabled=False)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    photo = encode(garment_photo(320, 240)[0], "JPEG", quality=90)
    with TestClient(create_app(s)) as c:
        for url, needle in (("http://hooks.example:9/x", "FLATLAY_LOCAL_WEBHOOK_SECRET"),
                            ("file:///etc/passwd", "http")):
            r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
                       data={"webhook_url": url})
            assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url"
            assert needle in r.json()["error"]["message"]


# --- Hostile webhook URLs ---------------------------------------------------------------------

# Literal private, loopback, link-local and metadata addresses in the spellings a resolver
# reads without DNS: refused at submission, as manifest URLs are.
PRIVATE_LITERALS = ("http://169.254.169.254/latest/meta-data/", "http://[::1]/", "http://127.1/",
                    "http://0x7f.1/", "http://0177.0.0.1/", "http://2130706433/",
                    "http://10.0.0.1:8080/hook", "http://[::ffff:192.168.0.1]/")


@pytest.fixture
def keyed_client(tmp_path: Path) -> Iterator:
    from fastapi.testclient import TestClient

    from service.app import create_app
    from service.auth import create_key
    from service.settings import Settings
    from service.store import migrate

    s = Settings(data_dir=tmp_path / "d", default_pipeline="cutout")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    with TestClient(create_app(s)) as c:
        c.headers["Authorization"] = f"Bearer {create_key(c.app.state.ctx.store, 'acme').key}"
        yield c


@pytest.mark.parametrize("url", PRIVATE_LITERALS)
def test_a_literal_private_webhook_url_is_refused_at_submission(keyed_client, url: str) -> None:  # noqa: ANN001
    photo = encode(garment_photo(160, 120)[0], "JPEG", quality=85)
    r = keyed_client.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
                          data={"webhook_url": url})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "webhook_url" and "private" in error["message"]
    r = keyed_client.post("/batches", files=[("files", ("a.jpg", photo, "image/jpeg"))],
                          data={"webhook_url": url})
    assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url"
    assert sum(keyed_client.app.state.ctx.store.count_by_status().values()) == 0


def test_a_public_webhook_url_by_name_or_address_is_accepted(keyed_client) -> None:  # noqa: ANN001
    photo = encode(garment_photo(160, 120)[0], "JPEG", quality=85)
    for url in ("http://hooks.example/x", "https://93.184.215.14/hook"):
        r = keyed_client.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
                              data={"webhook_url": url})
        assert r.status_code == 202, r.text


@pytest.mark.parametrize(("url", "code"), [("http://0177.0.0.1/", "url_invalid"),
                                           ("http://169.254.169.254/", "url_refused"),
                                           ("http://127.1/", "url_refused")])
def test_a_delivery_that_can_never_succeed_fails_at_once_with_its_attempt_recorded(
    tmp_path: Path, url: str, code: str
) -> None:
    from service.webhooks import attempt_delivery

    store, settings, delivery_id = stored_delivery(tmp_path, url, webhook_max_attempts=8)
    try:
        # No retry is scheduled although 7 of the 8 attempts are left.
        assert attempt_delivery(store, settings, delivery_id) is None
        delivery = store.get_delivery(delivery_id)
    finally:
        store.dispose()
    assert delivery.status == "failed"
    assert len(delivery.attempts) == 1
    assert delivery.attempts[0]["error"].startswith(f"{code}: ")


def test_keys_create_refuses_a_private_default_webhook_url(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.support import REPO, _python_env

    r = subprocess.run([sys.executable, "-m", "cli", "keys", "create", "--tenant", "acme",
                        "--webhook-url", "http://0x7f.1/"], cwd=REPO, capture_output=True,
                       text=True, timeout=120,
                       env=_python_env({"FLATLAY_DATA_DIR": str(tmp_path / "d")}))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "--webhook-url" in r.stderr and "127.0.0.1" in r.stderr


def test_an_event_lost_with_its_worker_is_recorded_by_the_reconciler(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak found one: a worker killed between recording a job's end and recording its
    `asset.succeeded` event. The reconciler makes the event after its grace period, once."""
    from fastapi.testclient import TestClient
    from sqlalchemy import update

    import workers.jobs
    from service.app import create_app
    from service.reconciler import reconcile_once
    from service.settings import Settings
    from service.store import Job, migrate
    from tests.support import WEBHOOK_TEST_SECRET
    from workers.jobs import WorkerContext, run_job

    s = Settings(data_dir=tmp_path / "data", auth_enabled=False, rate_limit_per_s=0,
                 local_webhook_secret=WEBHOOK_TEST_SECRET, default_pipeline="cutout",
                 fetch_allow_hosts="hooks.example.com")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    photo = encode(garment_photo(320, 240)[0], "JPEG", quality=90)

    class WorkerKilled(BaseException):
        """Stands for the SIGKILL: nothing after this point of the worker runs."""

    def killed(*_: object) -> None:
        raise WorkerKilled

    with TestClient(create_app(s)) as c:
        ctx = c.app.state.ctx
        r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
                   data={"webhook_url": "https://hooks.example.com/flatlay",
                         "output_size": "256"})
        assert r.status_code == 202, r.text
        job_id = r.json()["id"]
        worker = WorkerContext.build(s, "test-worker")
        monkeypatch.setattr(workers.jobs, "job_ended", killed)
        with pytest.raises(WorkerKilled):
            run_job(worker, job_id)
        worker.close()
        assert ctx.store.get(job_id).status == "succeeded"
        assert ctx.store.list_deliveries("local", asset_id=job_id) == []
        assert reconcile_once(ctx).recovered_events == 0  # within the grace period
        with ctx.store._session() as session, session.begin():  # the grace period passes
            session.execute(update(Job).where(Job.id == job_id).values(
                finished_at=dt.datetime.now(dt.UTC) - dt.timedelta(
                    seconds=s.requeue_queued_after_s + 1)))
        assert reconcile_once(ctx).recovered_events == 1
        (delivery,) = ctx.store.list_deliveries("local", asset_id=job_id)
        assert delivery.event == "asset.succeeded"
        assert reconcile_once(ctx).recovered_events == 0  # once
        assert len(ctx.store.list_deliveries("local", asset_id=job_id)) == 1
