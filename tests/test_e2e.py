"""End to end with real processes: `flatlay serve` (embedded: SQLite + file queue) and
`flatlay api` + `flatlay worker` (distributed: PostgreSQL + Redis)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from service.settings import Settings
from tests.support import (
    ServiceProcesses,
    create_key,
    encode,
    free_port,
    garment_photo,
    wait_for_job,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    root = tmp_path_factory.mktemp("embedded")
    port = free_port()
    env = {"FLATLAY_MAX_UPLOAD_BYTES": "2000000", "FLATLAY_DATA_DIR": str(root / "data")}
    svc = ServiceProcesses.start(
        [["serve", "--port", str(port)]], env=env, port=port, log_dir=root,
        api_key=create_key(env, "e2e"),
    )
    yield svc
    svc.stop()


def _samples(text: str) -> dict[tuple[str, ...], float]:
    """Prometheus text → {(sample name, *label values): value}."""
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _check_result(data: bytes, content_type: str, size: int, fmt: str, background: str) -> None:
    assert content_type == f"image/{fmt}"
    img = Image.open(io.BytesIO(data))
    assert img.format == fmt.upper() and img.size == (size, size)
    rgba = np.asarray(img.convert("RGBA")).astype(int)
    if background == "transparent":
        assert rgba[0, 0, 3] == 0 and rgba[-1, -1, 3] == 0
        garment = rgba[..., 3] > 127
    else:
        bg = np.array([int(background[i : i + 2], 16) for i in (1, 3, 5)])
        tol = 3 if fmt == "png" else 12  # lossy formats move colours a little
        for corner in (rgba[0, 0], rgba[0, -1], rgba[-1, 0], rgba[-1, -1]):
            assert np.abs(corner[:3] - bg).max() <= tol
        garment = np.abs(rgba[..., :3] - bg).max(axis=-1) > 40
    ys, xs = np.nonzero(garment)
    assert garment.mean() > 0.15
    assert abs((xs.min() + xs.max()) / 2 - size / 2) < 0.03 * size
    assert abs((ys.min() + ys.max()) / 2 - size / 2) < 0.03 * size


def _round_trip(svc: ServiceProcesses, fmt: str, background: str, size: int) -> dict:
    photo = encode(garment_photo(480, 360, offset=(0.1, 0.0))[0], "JPEG", quality=92)
    with svc.client() as c:
        r = c.post("/assets", files={"file": ("shirt.jpg", photo, "image/jpeg")},
                   data={"output_size": str(size), "format": fmt, "background": background})
        assert r.status_code == 202, r.text
        status = wait_for_job(c, r.json()["id"])
        assert status["status"] == "succeeded", status
        assert status["progress"] == {"stage": "done", "percent": 100}
        assert {"decode", "parse", "compose", "encode"} <= set(status["timings"])
        result = c.get(r.json()["links"]["result"])
        assert result.status_code == 200
        _check_result(result.content, result.headers["content-type"], size, fmt, background)
        # The worker process stored the side outputs and checked the delivered bytes.
        assert status["compliance"]["preset"] == "square-white"
        size_check = next(x for x in status["compliance"]["checks"] if x["name"] == "size")
        assert size_check["passed"] == (size == 1024)
        mask = c.get(status["side_outputs"]["mask"])
        assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(mask.content)).size == (size, size)
    return status


@pytest.mark.parametrize(
    "fmt,background,size",
    [("png", "#ffffff", 512), ("jpeg", "#102030", 1024), ("webp", "transparent", 256),
     ("png", "transparent", 2048)],
)
def test_embedded_round_trip(
    embedded: ServiceProcesses, fmt: str, background: str, size: int
) -> None:
    _round_trip(embedded, fmt, background, size)


def test_embedded_bad_input_never_hurts_the_worker(embedded: ServiceProcesses) -> None:
    from tests.test_api import BAD_UPLOADS

    with embedded.client() as c:
        for name, data, status, code in BAD_UPLOADS:
            r = c.post("/assets", files={"file": ("x.jpg", data, "image/jpeg")})
            assert r.status_code == status and r.json()["error"]["code"] == code, name
        r = c.post("/assets", data={"pipeline": "cutout"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "file"
        # A valid image with no garment in it fails in the worker, with a code.
        blank = encode(np.full((300, 400, 3), 90, np.uint8), "PNG")
        failed = wait_for_job(c, c.post("/assets", files={"file": ("b.png", blank)}).json()["id"])
        assert failed["status"] == "failed"
        assert failed["error"]["code"] == "garment_not_found"
        r = c.get(f"/assets/{failed['id']}/result")
        assert r.status_code == 409 and r.json()["error"]["code"] == "asset_failed"
    # The worker is alive and well: a good photo still goes through.
    _round_trip(embedded, "png", "#ffffff", 256)


@pytest.mark.redis
@pytest.mark.postgres
def test_distributed_round_trip(redis_url: str, postgres_url: str, tmp_path: Path) -> None:
    port, metrics_port = free_port(), free_port()
    queue = f"flatlay.test.{uuid.uuid4().hex[:8]}"
    env = {
        "FLATLAY_DATA_DIR": str(tmp_path / "data"),
        "FLATLAY_DATABASE_URL": postgres_url,
        "FLATLAY_BROKER_URL": redis_url,
        "FLATLAY_QUEUE_NAME": queue,
        "FLATLAY_WORKER_METRICS_PORT": str(metrics_port),
    }
    svc = ServiceProcesses.start(
        [["api", "--port", str(port)], ["worker"]], env=env, port=port, log_dir=tmp_path,
        api_key=create_key(env, "distributed"),
    )
    try:
        with svc.client() as c:
            ready = c.get("/readyz").json()
            assert ready["checks"]["broker"] == "ok"
        _round_trip(svc, "png", "#ffffff", 512)
        _round_trip(svc, "webp", "transparent", 256)
        # The worker serves its own series; the API's /metrics has the job store's view.
        worker = _samples(httpx.get(f"http://127.0.0.1:{metrics_port}/metrics").text)
        default = Settings().default_pipeline
        assert worker[("flatlay_stage_seconds_count", default, "parse")] == 2
        assert worker[("flatlay_jobs_processed_total", default, "succeeded")] == 2
        with svc.client() as c:
            api = _samples(c.get("/metrics").text)
        assert not any(name == "flatlay_stage_seconds_count" for name, *_ in api)
        assert api[("flatlay_jobs", "succeeded")] >= 2
        assert api[("flatlay_broker_queue_depth", queue)] == 0
    finally:
        svc.stop()
