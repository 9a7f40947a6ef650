"""Presets, compliance, side outputs and structure control through the service, in process:
the real API against a real SQLite store, file queue and blob folder, and the real worker
code (`workers.jobs.run_job`) running the jobs it enqueued."""

from __future__ import annotations

import datetime as dt
import io
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import update

from models.garments import generate, num_landmarks
from service.app import create_app
from service.auth import create_key
from service.reconciler import reconcile_once
from service.settings import Settings
from service.store import Job, migrate
from tests.support import encode, garment_photo
from workers.jobs import WorkerContext, _run_claimed, run_job

STRUCTURED = "test-structured=tests.pipelines:StructuredCutoutPipeline"
SKIRT = generate(1_150_000, size=128, category="skirt").flat_landmarks


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # cutout by default here: fast, and these tests are about the service's handling.
    s = Settings(data_dir=tmp_path / "data", extra_pipelines=STRUCTURED,
                 default_pipeline="cutout")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {create_key(c.app.state.ctx.store, 'acme').key}"
        yield c


@pytest.fixture
def worker(settings: Settings) -> Iterator[WorkerContext]:
    ctx = WorkerContext.build(settings, "test-worker")
    yield ctx
    ctx.close()


@pytest.fixture(scope="module")
def photo() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def _post(c: TestClient, photo: bytes, **form: str):  # noqa: ANN202
    return c.post("/assets", files={"file": ("shirt.jpg", photo, "image/jpeg")}, data=form)


def _done(c: TestClient, worker: WorkerContext, photo: bytes, **form: str) -> dict:
    r = _post(c, photo, **form)
    assert r.status_code == 202, r.text
    assert run_job(worker, r.json()["id"]) == "succeeded"
    return c.get(f"/assets/{r.json()['id']}").json()


def _files(settings: Settings, job_id: str) -> list[str]:
    folder = settings.resolved_blob_dir / "assets" / job_id
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def _structure(landmarks: np.ndarray | list, category: str = "skirt") -> str:
    return json.dumps({"category": category, "landmarks": np.asarray(landmarks).tolist()})


def test_side_outputs_are_stored_listed_and_served(
    client: TestClient, worker: WorkerContext, settings: Settings, photo: bytes
) -> None:
    job_id = _post(client, photo).json()["id"]  # square-white: 1024 px PNG
    queued = client.get(f"/assets/{job_id}").json()
    assert queued["side_outputs"] == {} and queued["compliance"] is None
    r = client.get(f"/assets/{job_id}/outputs/mask")
    assert r.status_code == 409 and r.json()["error"]["code"] == "asset_not_ready"

    assert run_job(worker, job_id) == "succeeded"
    status = client.get(f"/assets/{job_id}").json()
    # cutout gives the mask, the overlay and the attributes (landmarks too once parser
    # weights are there).
    assert {"mask", "overlay", "attributes"} <= set(status["side_outputs"]) <= {
        "mask", "overlay", "landmarks", "attributes"}
    assert status["side_outputs"]["mask"] == f"/assets/{job_id}/outputs/mask"
    assert {"check", "encode"} <= set(status["timings"])
    compliance = status["compliance"]
    assert compliance["preset"] == "square-white" and compliance["passed"] is True
    assert all(isinstance(c["passed"], bool) for c in compliance["checks"])
    assert {c["name"] for c in compliance["checks"]} >= {"size", "format", "background_purity"}
    assert _files(settings, job_id) == sorted(
        ["input.jpg", "result-a1.png",
         *(f"outputs-a1/{n}.{'json' if n in ('landmarks', 'attributes') else 'png'}"
           for n in status["side_outputs"])])

    mask = client.get(status["side_outputs"]["mask"])
    assert mask.status_code == 200 and mask.headers["content-type"] == "image/png"
    mask_img = Image.open(io.BytesIO(mask.content))
    assert mask_img.size == (1024, 1024) and mask_img.mode == "L"
    # The mask is where the garment is in the delivered image.
    result = np.asarray(Image.open(io.BytesIO(client.get(f"/assets/{job_id}/result").content))
                        .convert("RGB")).astype(int)
    alpha = np.asarray(mask_img)
    assert 0.1 < (alpha > 127).mean() < 0.9
    # Where the mask says no garment at all (not even its anti-aliased edge), white.
    assert (np.abs(result[alpha == 0] - 255).max(axis=-1) <= 3).mean() > 0.995
    overlay = client.get(status["side_outputs"]["overlay"])
    assert overlay.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(overlay.content)).size == (1024, 1024)

    for name in ("nope", "neighbours"):  # never a side output; not one cutout gives
        r = client.get(f"/assets/{job_id}/outputs/{name}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_output"
        assert "mask" in r.json()["error"]["message"]
    with TestClient(client.app) as other:  # another tenant sees nothing
        other.headers["Authorization"] = \
            f"Bearer {create_key(client.app.state.ctx.store, 'globex').key}"
        r = other.get(f"/assets/{job_id}/outputs/mask")
        assert r.status_code == 404 and r.json()["error"]["code"] == "asset_not_found"


def test_amazon_main_defaults_to_a_2000_px_jpeg_and_checks_it(
    client: TestClient, worker: WorkerContext, photo: bytes
) -> None:
    status = _done(client, worker, photo, preset="amazon-main")
    assert status["options"] == {"preset": "amazon-main", "output_size": 2000,
                                 "background": "#ffffff", "format": "jpeg", "seed": None,
                                 "structure": None, "steps": None, "hint": None}
    result = client.get(f"/assets/{status['id']}/result")
    assert result.headers["content-type"] == "image/jpeg"
    image = Image.open(io.BytesIO(result.content))
    assert image.format == "JPEG" and image.size == (2000, 2000)
    compliance = status["compliance"]
    assert compliance["preset"] == "amazon-main"
    checks = {c["name"]: c for c in compliance["checks"]}
    assert set(checks) == {"size", "format", "background_purity", "background_colour",
                           "fill_ratio"}
    assert all(isinstance(c["passed"], bool) for c in checks.values())
    assert compliance["passed"] == all(c["passed"] for c in checks.values())
    for name in ("size", "format", "background_colour", "fill_ratio"):
        assert checks[name]["passed"], checks[name]
    assert checks["fill_ratio"]["value"] >= 0.85
    mask = Image.open(io.BytesIO(client.get(status["side_outputs"]["mask"]).content))
    assert mask.size == (2000, 2000)


def test_compliance_fails_what_the_preset_refuses(
    client: TestClient, worker: WorkerContext, photo: bytes
) -> None:
    # A size and a format amazon-main does not allow are accepted; the check says so.
    status = _done(client, worker, photo, preset="amazon-main", output_size="1024",
                   format="webp")
    assert status["status"] == "succeeded"
    compliance = status["compliance"]
    assert compliance["passed"] is False
    checks = {c["name"]: c for c in compliance["checks"]}
    assert checks["size"] == {"name": "size", "value": [1024, 1024],
                              "required": [2000, 2000], "passed": False}
    assert checks["format"]["passed"] is False and checks["format"]["value"] == "webp"
    # The transparent preset as it comes passes, and checks the transparency it delivered.
    status = _done(client, worker, photo, preset="transparent")
    assert (status["options"]["background"], status["options"]["format"]) == \
        ("transparent", "png")
    assert status["compliance"]["passed"] is True, status["compliance"]
    checks = {c["name"]: c for c in status["compliance"]["checks"]}
    assert checks["background_transparent"]["passed"] is True


def test_unknown_preset_is_refused_with_the_list(client: TestClient, photo: bytes) -> None:
    r = _post(client, photo, preset="etsy")
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["code"] == "validation_error" and err["field"] == "preset"
    assert "amazon-main" in err["message"] and "square-white" in err["message"]
    # A preset's background that JPEG cannot carry, with JPEG asked for: the format is wrong.
    r = _post(client, photo, preset="transparent", format="jpeg")
    assert r.status_code == 422 and r.json()["error"]["field"] == "format"


def _bad(change: str) -> np.ndarray:
    lm = SKIRT.copy()
    if change == "count":
        return lm[:-1]
    if change == "outside":
        lm[3] = (1.2, 0.5)
    elif change == "cross":
        lm[[1, 2]] = lm[[2, 1]]
    return lm


@pytest.mark.parametrize(
    "structure,code,field,words",
    [
        (_structure(_bad("count")), "invalid_structure", "structure.landmarks",
         f"a skirt has {num_landmarks('skirt')} landmarks"),
        (_structure(_bad("outside")), "invalid_structure", "structure.landmarks[3]",
         "outside the canvas"),
        (_structure(_bad("cross")), "invalid_structure", "structure.landmarks[",
         "crosses itself"),
        (_structure(SKIRT, "kilt"), "invalid_structure", "structure.category",
         "unknown category 'kilt'"),
        ('{"category": "skirt", "landmarks": [[0.1, 0.2]', "validation_error", "structure",
         "not valid JSON"),
        ("[1, 2, 3]", "invalid_structure", "structure", "a structure is a JSON object"),
    ],
    ids=["count", "outside", "cross", "category", "json", "not-an-object"],
)
def test_a_bad_structure_names_the_bad_point(
    client: TestClient, settings: Settings, photo: bytes, structure: str, code: str,
    field: str, words: str,
) -> None:
    r = _post(client, photo, structure=structure)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code and words in err["message"], err
    assert err["field"].startswith(field) if field.endswith("[") else err["field"] == field
    assert not list(settings.queue_dir.glob("*.msg"))  # nothing was enqueued


def test_a_structure_is_stored_used_and_comes_back_as_landmarks(
    client: TestClient, worker: WorkerContext, photo: bytes
) -> None:
    status = _done(client, worker, photo, pipeline="test-structured", output_size="256",
                   structure=_structure(SKIRT))
    given = status["options"]["structure"]
    assert given["category"] == "skirt"
    assert np.allclose(given["landmarks"], SKIRT, atol=1e-6)
    # The pipeline laid it out: the landmarks side output is the structure it was given.
    landmarks = client.get(status["side_outputs"]["landmarks"])
    assert landmarks.headers["content-type"] == "application/json"
    doc = landmarks.json()
    assert doc["category"] == "skirt" and doc["frame"] == "canonical"
    assert len(doc["names"]) == num_landmarks("skirt")
    assert np.allclose(doc["landmarks"], SKIRT, atol=1e-6)
    # …and it goes back in as `structure` as it is (a retry, or an edit, of the layout).
    again = _done(client, worker, photo, pipeline="test-structured", output_size="256",
                  structure=landmarks.text)
    assert again["options"]["structure"] == given
    assert client.get(again["side_outputs"]["landmarks"]).json()["landmarks"] == \
        doc["landmarks"]


def test_failed_and_dropped_attempts_leave_no_outputs(
    client: TestClient, worker: WorkerContext, settings: Settings, photo: bytes
) -> None:
    blank = encode(np.full((300, 400, 3), 90, np.uint8), "PNG")
    r = client.post("/assets", files={"file": ("b.png", blank, "image/png")})
    assert run_job(worker, r.json()["id"]) == "failed"
    status = client.get(f"/assets/{r.json()['id']}").json()
    assert status["error"]["code"] == "garment_not_found"
    assert status["side_outputs"] == {} and status["compliance"] is None
    assert client.get(f"/assets/{r.json()['id']}/outputs/mask").status_code == 409
    assert _files(settings, r.json()["id"]) == ["input.png"]

    # Canceled while the worker ran it: it stops at its first stage boundary, and no output
    # is left behind.
    job_id = _post(client, photo, output_size="256").json()["id"]
    job = worker.store.claim(job_id, worker.name)
    assert client.post(f"/assets/{job_id}/cancel").json()["status"] == "canceled"
    assert _run_claimed(worker, job, {}) == "canceled"
    assert _files(settings, job_id) == ["input.jpg"]
    assert not (settings.resolved_blob_dir / "assets" / job_id / "outputs-a1").exists()
    r = client.get(f"/assets/{job_id}/outputs/mask")
    assert r.status_code == 409 and r.json()["error"]["code"] == "asset_canceled"


def test_delete_and_retention_remove_side_outputs(
    client: TestClient, worker: WorkerContext, settings: Settings, photo: bytes
) -> None:
    deleted = _done(client, worker, photo, output_size="256")
    assert len(_files(settings, deleted["id"])) >= 4
    assert client.delete(f"/assets/{deleted['id']}").status_code == 204
    assert not (settings.resolved_blob_dir / "assets" / deleted["id"]).exists()

    kept = _done(client, worker, photo, output_size="256")
    ctx = client.app.state.ctx
    long_ago = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.result_retention_s + 60)
    with ctx.store._session() as s, s.begin():
        s.execute(update(Job).where(Job.id == kept["id"]).values(finished_at=long_ago))
    assert reconcile_once(ctx).expired == 1
    assert not (settings.resolved_blob_dir / "assets" / kept["id"]).exists()
    r = client.get(kept["side_outputs"]["mask"])
    assert r.status_code == 410 and r.json()["error"]["code"] == "asset_expired"


def test_batch_and_manifest_items_take_presets_and_structures(client: TestClient) -> None:
    items = [
        {"sku": "plain", "image_url": "https://shop.example/plain.jpg"},
        {"sku": "amazon", "image_url": "https://shop.example/a.jpg",
         "options": {"preset": "amazon-main"}},
        {"sku": "shaped", "image_url": "https://shop.example/s.jpg",
         "options": {"structure": {"category": "skirt", "landmarks": SKIRT.tolist()}}},
        {"sku": "bad-shape", "image_url": "https://shop.example/b.jpg",
         "options": {"structure": {"category": "skirt", "landmarks": _bad("outside").tolist()}}},
        {"sku": "bad-preset", "image_url": "https://shop.example/c.jpg",
         "options": {"preset": "etsy"}},
    ]
    r = client.post("/batches", data={"preset": "transparent", "output_size": "512"},
                    files={"manifest": ("m.json", json.dumps(items), "application/json")})
    assert r.status_code == 202, r.text
    rejected = {x["sku"]: x for x in r.json()["rejected"]}
    assert rejected["bad-shape"]["code"] == "invalid_structure"
    assert "landmark 3" in rejected["bad-shape"]["message"]
    assert rejected["bad-preset"]["code"] == "validation_error"
    batch = client.get(r.json()["links"]["self"]).json()
    assert batch["options"]["preset"] == "transparent"
    options = {i["sku"]: client.get(f"/assets/{i['asset_id']}").json()["options"]
               for i in batch["items"]}
    # The batch's preset and size; an item's own preset gives its defaults where the batch
    # gave nothing (the batch's explicit size still applies).
    assert options["plain"] == {"preset": "transparent", "output_size": 512,
                                "background": "transparent", "format": "png", "seed": None,
                                "structure": None, "steps": None, "hint": None}
    assert options["amazon"]["preset"] == "amazon-main"
    assert (options["amazon"]["format"], options["amazon"]["background"]) == ("jpeg", "#ffffff")
    assert options["amazon"]["output_size"] == 512
    assert options["shaped"]["structure"]["category"] == "skirt"

    r = client.post("/batches", data={"structure": _structure(_bad("outside"))},
                    files={"manifest": ("m.json", json.dumps(items[:1]), "application/json")})
    assert r.status_code == 422
    assert r.json()["error"]["field"] == "structure.landmarks[3]"


def test_openapi_documents_presets_outputs_and_structure(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    outputs = spec["paths"]["/assets/{asset_id}/outputs/{name}"]["get"]
    described = json.dumps(outputs["responses"])
    for code in ("unknown_output", "asset_not_ready", "asset_not_found", "asset_expired"):
        assert code in described
    post = spec["paths"]["/assets"]["post"]
    assert "invalid_structure" in json.dumps(post["responses"])
    assert "compliance" in post["description"] and "accepted" in post["description"]
    presets = client.get("/presets").json()
    assert presets["default"] == "square-white"
    amazon = next(p for p in presets["presets"] if p["name"] == "amazon-main")
    assert amazon["size"] == 2000 and amazon["formats"][0] == "jpeg"


def test_flatten_round_trip_through_the_service(
    client: TestClient, worker: WorkerContext
) -> None:
    """`flatten` (the service's default) gives all five side outputs; its landmarks, edited
    (hem moved down), come back as `structure` and the new result follows them."""
    s = generate(1_100_002, size=512)
    photo = encode(s.wild_image, "JPEG", quality=92)
    first = _done(client, worker, photo, output_size="512", pipeline="flatten")
    assert first["pipeline"] == "flatten"
    assert set(first["side_outputs"]) == {"mask", "landmarks", "neighbours", "overlay",
                                          "attributes"}
    landmarks = client.get(first["side_outputs"]["landmarks"]).json()
    neighbours = client.get(first["side_outputs"]["neighbours"]).json()
    assert neighbours["category"] == landmarks["category"]
    assert sum(n["weight"] for n in neighbours["neighbours"]) == pytest.approx(1, abs=1e-3)
    edited = np.array(landmarks["landmarks"])
    hem = edited[:, 1] > np.median(edited[:, 1])
    edited[hem, 1] = np.minimum(edited[hem, 1] + 0.05, 0.99)
    second = _done(client, worker, photo, output_size="512", pipeline="flatten",
                   structure=_structure(edited, landmarks["category"]))
    again = client.get(second["side_outputs"]["landmarks"]).json()
    assert np.allclose(again["landmarks"], edited, atol=1e-5)

    def bottom(status: dict) -> int:
        mask = np.asarray(Image.open(io.BytesIO(client.get(status["side_outputs"]["mask"])
                                                .content)))
        return int(np.nonzero((mask > 127).any(1))[0].max())

    assert bottom(second) > bottom(first) + 0.03 * 512
