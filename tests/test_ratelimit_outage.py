"""The rate limiter under a broken Redis: FLATLAY_RATE_LIMIT_ON_ERROR=deny answers 503
`rate_limiter_unavailable` with Retry-After, allow serves the request; each outage logs one
line when it starts and one when it ends, and counts once. Against real Redis servers: a
closed port, and a private redis-server that the test stops and starts again."""

from __future__ import annotations

import logging
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import create_key
from service.metrics import REGISTRY
from service.settings import Settings
from service.store import migrate
from tests.support import free_port

DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1


class RedisServer:
    """A redis-server of the test's own, on a free port, that it can stop and start."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.tmp = tmp
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.tmp)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(20)
            self.proc = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


def _client(tmp_path: Path, broker_url: str, **settings: object) -> TestClient:
    s = Settings(data_dir=tmp_path / "d", broker_url=broker_url,
                 queue_name=f"flatlay.test.{uuid.uuid4().hex[:8]}", **settings)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return TestClient(create_app(s))


def _auth(c: TestClient) -> dict[str, str]:
    return {"Authorization": f"Bearer {create_key(c.app.state.ctx.store, 'acme').key}"}


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_deny_answers_503_with_retry_after_while_redis_is_down(tmp_path: Path) -> None:
    # Auth on (the default): deny is the default.
    with _client(tmp_path, DEAD_REDIS) as c:
        assert c.app.state.ctx.settings.resolved_rate_limit_on_error == "deny"
        r = c.get("/assets/none", headers=_auth(c))
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "rate_limiter_unavailable"
        assert "127.0.0.1:1" not in r.json()["error"]["message"]  # internals stay in the log
        assert r.headers["retry-after"] == "5"
        # Health is never limited; the OpenAPI document lists the code with every limit.
        assert c.get("/healthz").status_code == 200
        post = c.get("/openapi.json").json()["paths"]["/assets"]["post"]["responses"]
        assert "rate_limiter_unavailable" in post["503"]["description"]


@pytest.mark.parametrize("settings", [{"rate_limit_on_error": "allow"},
                                      {"auth_enabled": False}])
def test_allow_serves_requests_while_redis_is_down(tmp_path: Path, settings: dict) -> None:
    allowed = _metric("flatlay_rate_limiter_unchecked_requests_total", decision="allowed")
    with _client(tmp_path, DEAD_REDIS, **settings) as c:
        headers = _auth(c) if c.app.state.ctx.settings.auth_enabled else {}
        assert [c.get("/assets/none", headers=headers).status_code for _ in range(3)] == [404] * 3
    assert _metric("flatlay_rate_limiter_unchecked_requests_total", decision="allowed") == \
        allowed + 3


def test_bad_on_error_value_is_refused() -> None:
    with pytest.raises(ValueError, match="'allow' or 'deny'"):
        Settings(rate_limit_on_error="maybe")


@pytest.mark.redis
def test_each_outage_logs_once_when_it_starts_and_once_when_it_ends(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="flatlay.ratelimit")
    outages = _metric("flatlay_rate_limiter_outages_total", backend="redis")

    def lines() -> list[tuple[int, str]]:
        return [(r.levelno, r.getMessage()) for r in caplog.records
                if r.name == "flatlay.ratelimit"]

    with _client(tmp_path, redis_server.url) as c:
        headers = _auth(c)
        assert c.get("/assets/none", headers=headers).status_code == 404
        assert _metric("flatlay_rate_limiter_up", backend="redis") == 1
        for n in (1, 2):
            redis_server.stop()
            codes = [c.get("/assets/none", headers=headers).status_code for _ in range(5)]
            assert codes == [503] * 5
            assert _metric("flatlay_rate_limiter_up", backend="redis") == 0
            assert _metric("flatlay_rate_limiter_outages_total", backend="redis") == outages + n
            redis_server.start()
            assert c.get("/assets/none", headers=headers).status_code == 404
            assert c.get("/assets/none", headers=headers).status_code == 404
            assert _metric("flatlay_rate_limiter_up", backend="redis") == 1
        metrics = c.get("/metrics").text
        assert 'flatlay_rate_limiter_outages_total{backend="redis"}' in metrics
    logged = lines()
    assert [level for level, _ in logged] == [logging.WARNING, logging.INFO] * 2, logged
    assert "rate limiter unavailable" in logged[0][1] and "refused with 503" in logged[0][1]
    assert logged[1][1].startswith("rate limiter available again")
