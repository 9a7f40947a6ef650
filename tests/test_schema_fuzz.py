"""Schema fuzzing: schemathesis generates requests from the app's own OpenAPI document
(valid and invalid ones) for every route; none may answer 5xx."""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.auth import create_key
from service.settings import Settings
from service.store import migrate

DATA_DIR = Path(__file__).resolve().parent / ".fuzz-data"


def _app():  # noqa: ANN202
    import shutil

    shutil.rmtree(DATA_DIR, ignore_errors=True)
    s = Settings(data_dir=DATA_DIR, rate_limit_per_s=0, max_upload_bytes=200_000)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return create_app(s)


app = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def auth() -> dict[str, str]:
    # Run the app's lifespan (its context: store, blobs, queue) for the whole module.
    client = TestClient(app)
    client.__enter__()
    key = create_key(app.state.ctx.store, "fuzz").key
    yield {"Authorization": f"Bearer {key}"}
    client.__exit__(None, None, None)
    import shutil

    shutil.rmtree(DATA_DIR, ignore_errors=True)


@pytest.mark.slow
@schema.parametrize()
@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.filter_too_much])
def test_no_route_answers_5xx(case: schemathesis.Case, auth: dict[str, str]) -> None:
    for headers in (dict(auth), None):  # with the key, and as the fuzzer made it (often 401)
        response = case.call(headers=headers)
        assert response.status_code < 500, (case.method, case.path, response.text[:500])
        if response.status_code >= 400 and case.path != "/metrics":
            body = response.json()  # every error is typed JSON
            assert set(body) == {"error"} and {"code", "message"} <= set(body["error"]), body
