"""API keys and tenants: keys are stored hashed, every route but health and metrics needs
one, and a tenant never sees another tenant's assets (404, as if they did not exist)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from cli import main
from service.app import create_app
from service.auth import create_key
from service.settings import Settings
from service.store import migrate
from tests.support import REPO, encode, garment_photo


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return s


@pytest.fixture
def app_client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_create_prints_the_key_alone_on_the_last_line_and_stores_its_hash(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = str(settings.data_dir)
    assert main(["keys", "create", "--tenant", "acme", "--name", "pim sync",
                 "--data-dir", data_dir]) == 0
    out = capsys.readouterr().out
    key = out.strip().splitlines()[-1]
    assert key.startswith("fl_") and len(key) >= 40 and " " not in key
    assert "whsec_" in out
    from sqlalchemy import create_engine

    engine = create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        dump = " ".join(str(v) for row in conn.execute(text("SELECT * FROM api_keys"))
                        for v in row)
    engine.dispose()
    assert key not in dump and hashlib.sha256(key.encode()).hexdigest() in dump

    assert main(["keys", "list", "--data-dir", data_dir]) == 0
    listing = capsys.readouterr().out
    assert key[:11] in listing and key not in listing and "acme" in listing

    with TestClient(create_app(settings)) as c:
        assert c.get("/pipelines", headers=_auth(key)).status_code == 200
        assert main(["keys", "revoke", key[:11], "--data-dir", data_dir]) == 0
        r = c.get("/pipelines", headers=_auth(key))
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_keys_create_refuses_a_bad_tenant(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "create", "--tenant", "../etc", "--data-dir",
                 str(settings.data_dir)]) == 2
    assert "tenant" in capsys.readouterr().err


def test_every_route_but_health_and_metrics_needs_a_key(app_client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/", "/openapi.json"):
        assert app_client.get(path).status_code == 200, path
    for method, path in (("GET", "/pipelines"), ("GET", "/assets/x"),
                         ("GET", "/assets/x/result"), ("POST", "/assets")):
        for headers in ({}, _auth("fl_not-a-real-key"), {"Authorization": "Basic Zm9vOmJhcg=="},
                        _auth("no-prefix")):
            r = app_client.request(method, path, headers=headers)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == "Bearer"
    spec = app_client.get("/openapi.json").json()
    assert "HTTPBearer" in spec["components"]["securitySchemes"]
    assert "unauthorized" in str(spec["paths"]["/assets"]["post"]["responses"])


def test_a_tenant_sees_only_its_own_assets(app_client: TestClient, photo: bytes) -> None:
    store = app_client.app.state.ctx.store
    key_a = create_key(store, "tenant-a").key
    key_b = create_key(store, "tenant-b").key
    key_a2 = create_key(store, "tenant-a").key  # a second key of the same tenant
    r = app_client.post("/assets", headers=_auth(key_a),
                        files={"file": ("a.jpg", photo, "image/jpeg")})
    assert r.status_code == 202
    job_id = r.json()["id"]
    assert store.get(job_id).tenant_id == "tenant-a"
    assert app_client.get(f"/assets/{job_id}", headers=_auth(key_a2)).status_code == 200
    for path in (f"/assets/{job_id}", f"/assets/{job_id}/result"):
        r = app_client.get(path, headers=_auth(key_b))
        assert r.status_code == 404 and r.json()["error"]["code"] == "asset_not_found"


def test_auth_off_is_refused_off_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="loopback"):
        create_app(Settings(data_dir=tmp_path / "d", auth_enabled=False, host="0.0.0.0"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATLAY_")}
    env.update(FLATLAY_AUTH_ENABLED="false", FLATLAY_DATA_DIR=str(tmp_path / "d"))
    run = subprocess.run([sys.executable, "-m", "cli", "api", "--host", "0.0.0.0", "--port",
                          "1"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "loopback" in run.stderr


def test_auth_off_on_loopback_serves_the_local_tenant(tmp_path: Path, photo: bytes) -> None:
    s = Settings(data_dir=tmp_path / "d", auth_enabled=False)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    with TestClient(create_app(s)) as c:
        r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert r.status_code == 202
        assert c.get(f"/assets/{r.json()['id']}").json()["status"] == "queued"
        assert c.app.state.ctx.store.get(r.json()["id"]).tenant_id == "local"
