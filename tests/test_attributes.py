"""Catalog attributes: the functions on the garment world's truths (models.attributes), and
a succeeded job's attributes in its status, side output, webhook payload, batch manifest and
the OpenAPI document (in process: real API, SQLite store, blob folder, `run_job`)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.attributes import (
    CLOSURE_CHOICES,
    CLOSURES,
    LENGTHS,
    NECKLINES,
    PATTERNS,
    SLEEVE_LENGTHS,
    dominant_colors,
    garment_attributes,
    garment_length,
    neckline,
    sleeve_length,
    world_closure,
)
from models.garments import generate
from service.app import create_app
from service.auth import create_key
from service.batch_results import ATTRIBUTE_COLUMNS
from service.settings import Settings
from service.store import migrate
from service.webhooks import job_ended
from tests.support import encode, garment_photo
from workers.jobs import WorkerContext, run_job

TEST_SEEDS = range(1_100_000, 1_100_010)
HELDOUT_SEEDS = range(1_200_000, 1_200_010)


def _samples(category: str, seeds: range) -> list:  # noqa: ANN401 (GarmentSample)
    return [generate(seed, size=32, category=category) for seed in seeds]


# ---- structure attributes on true landmarks ------------------------------------------------


@pytest.mark.parametrize("category", ["tshirt", "long_sleeve_top", "shirt", "hoodie",
                                      "sweater", "jacket", "dress"])
def test_sleeve_length_of_true_landmarks_is_the_world_s_sleeve(category: str) -> None:
    for s in _samples(category, TEST_SEEDS):
        # The world draws long, short or (dresses) no sleeves in the standard family.
        assert sleeve_length(category, s.flat_landmarks) == s.attributes["shape"]["sleeve"], (
            s.seed)


def test_held_out_three_quarter_sleeves_and_sleeveless_tops() -> None:
    # long_sleeve_top's held-out family has three-quarter sleeves (HELDOUT): its true
    # landmarks say so, though the world still files them under "long".
    for s in _samples("long_sleeve_top", HELDOUT_SEEDS):
        assert sleeve_length(s.category, s.flat_landmarks) == "three-quarter", s.seed
    for s in _samples("tank_top", TEST_SEEDS):
        assert sleeve_length("tank_top", s.flat_landmarks) == "none"
    assert sleeve_length("jeans", _samples("jeans", TEST_SEEDS)[0].flat_landmarks) is None


def test_length_of_true_landmarks() -> None:
    for cat, want in (("trousers", {"full"}), ("jeans", {"full"}), ("shorts", {"shorts"})):
        for s in _samples(cat, TEST_SEEDS):
            assert garment_length(cat, s.flat_landmarks) in want, (cat, s.seed)
    # Held-out skirts are maxi length (0.64–0.70 below the waist); standard ones shorter.
    assert {garment_length("skirt", s.flat_landmarks)
            for s in _samples("skirt", HELDOUT_SEEDS)} == {"maxi"}
    standard = [garment_length("skirt", s.flat_landmarks) for s in _samples("skirt",
                                                                              TEST_SEEDS)]
    assert "maxi" not in standard and "mini" in standard
    for s in _samples("skirt", TEST_SEEDS):  # the length the world drew decides the class
        drawn = s.attributes["shape"]["length"]
        got = garment_length("skirt", s.flat_landmarks)
        # The hem's centre sags below the drawn length by at most 0.015 (flare).
        want = "mini" if drawn < 0.385 else "knee" if 0.40 <= drawn < 0.535 else got
        assert got == want, (s.seed, drawn)
    assert garment_length("tshirt", _samples("tshirt", TEST_SEEDS)[0].flat_landmarks) is None


@pytest.mark.parametrize("category", ["tshirt", "long_sleeve_top", "sweater", "tank_top",
                                      "dress"])
def test_neckline_of_true_landmarks_is_the_world_s_neckline(category: str) -> None:
    for s in _samples(category, range(1_100_000, 1_100_016)):
        truth = s.attributes["shape"]["neckline"]
        # A henley is a crew neck with a placket, which landmarks do not show.
        want = "crew" if truth == "henley" else truth
        assert neckline(category, s.flat_landmarks) == want, (s.seed, truth)


def test_neckline_by_category_and_where_the_structure_cannot_tell() -> None:
    assert neckline("shirt", _samples("shirt", TEST_SEEDS)[0].flat_landmarks) == "collar"
    assert neckline("hoodie", _samples("hoodie", TEST_SEEDS)[0].flat_landmarks) == "hood"
    assert neckline("jacket", _samples("jacket", TEST_SEEDS)[0].flat_landmarks) is None
    assert neckline("skirt", _samples("skirt", TEST_SEEDS)[0].flat_landmarks) is None


def test_the_neckline_is_read_from_the_photo_s_own_landmarks_where_given() -> None:
    """The fused structure averages necklines, so a pipeline that parsed the photo reads the
    neckline from the parse (any frame: depths scale by the garment's width); the lengths
    still come from the delivered structure."""
    tops = _samples("tshirt", range(1_100_000, 1_100_040))
    v = next(s for s in tops if s.attributes["shape"]["neckline"] == "v")
    other = next(s for s in tops if neckline("tshirt", s.flat_landmarks) not in ("v", None))
    rgb, alpha = np.zeros((8, 8, 3), np.uint8), np.ones((8, 8))
    attrs = garment_attributes("tshirt", other.flat_landmarks, rgb, alpha,
                               photo_landmarks=v.flat_landmarks * 300 + 40)
    assert attrs["neckline"] == "v"
    assert attrs["sleeve_length"] == sleeve_length("tshirt", other.flat_landmarks)
    assert garment_attributes("tshirt", other.flat_landmarks, rgb, alpha)["neckline"] == \
        neckline("tshirt", other.flat_landmarks)


def test_the_world_s_closures_are_among_their_category_s_choices() -> None:
    """Every category's truth is one of its choices; where the choice is the pixels', both
    sides occur (a head that always answered one would be wrong on the rest)."""
    seen: dict[str, set[str]] = {}
    for seed in range(1_100_000, 1_100_240):
        s = generate(seed, size=32)
        closure = world_closure(s.category, s.attributes["shape"])
        assert closure in CLOSURE_CHOICES[s.category], (seed, s.category, closure)
        seen.setdefault(s.category, set()).add(closure)
    assert set(CLOSURE_CHOICES) == set(seen)
    assert seen["jacket"] == {"zip", "button"} and seen["hoodie"] == {"pull-on", "zip"}
    assert set().union(*seen.values()) <= set(CLOSURES)


def test_canvas_frame_lengths_follow_the_garment_s_own_width() -> None:
    """Landmarks in another frame (cutout's canvas: any scale and offset) are scaled by the
    garment's width instead of the category's canonical scale: independent of the frame's
    scale, and mostly the canonical answer (a garment's width varies ±12%, so not always)."""
    agree = []
    for cat in ("tshirt", "long_sleeve_top", "skirt", "trousers", "dress", "shorts"):
        for s in _samples(cat, range(1_100_000, 1_100_006)):
            for fn in (sleeve_length, garment_length):
                canvas = fn(cat, s.flat_landmarks, "canvas")
                assert fn(cat, s.flat_landmarks * 0.7 + 0.1, "canvas") == canvas
                if fn(cat, s.flat_landmarks) is not None:
                    agree.append(canvas == fn(cat, s.flat_landmarks))
    assert np.mean(agree) >= 0.75, np.mean(agree)


def test_unreadable_landmarks_give_no_structure_attributes() -> None:
    lm = _samples("tshirt", TEST_SEEDS)[0].flat_landmarks.copy()
    lm[3] = np.nan
    attrs = garment_attributes("tshirt", lm, np.zeros((8, 8, 3), np.uint8), np.ones((8, 8)))
    assert attrs["category"] == {"value": "tshirt", "confidence": None}
    assert "sleeve_length" not in attrs and "neckline" not in attrs
    # A schema that does not fit the category (a pipeline's bug) is not a crash either.
    attrs = garment_attributes("skirt", lm, np.zeros((8, 8, 3), np.uint8), np.ones((8, 8)))
    assert set(attrs) == {"category", "colors"}


# ---- colours --------------------------------------------------------------------------------


def _garment(colours: list[tuple[int, int, int]], size: int = 256
             ) -> tuple[np.ndarray, np.ndarray]:
    """A garment-world silhouette painted in vertical bands of `colours` on white."""
    mask = generate(1_100_001, size=size, category="tshirt").flat_mask
    rgb = np.full((size, size, 3), 255, np.uint8)
    xs = np.nonzero(mask.any(0))[0]
    edges = np.linspace(xs.min(), xs.max() + 1, len(colours) + 1).astype(int)
    for colour, x0, x1 in zip(colours, edges[:-1], edges[1:], strict=True):
        rgb[:, x0:x1][mask[:, x0:x1]] = colour
    return rgb, mask


def test_a_solid_red_garment_is_red_with_share_one() -> None:
    rgb, mask = _garment([(200, 20, 28)])
    (red,) = dominant_colors(rgb, mask)
    assert red.name == "red" and red.share == pytest.approx(1.0, abs=0.01)
    assert red.hex == "#c8141c"  # the garment's own colour; the name is the vocabulary's


def test_two_colours_are_both_found_with_their_shares() -> None:
    rgb, mask = _garment([(200, 20, 28), (20, 30, 110)])
    colours = dominant_colors(rgb, mask)
    assert [c.name for c in colours] == sorted([c.name for c in colours],
                                              key=lambda n: n != colours[0].name)
    assert {c.name for c in colours} == {"red", "navy"}
    assert sum(c.share for c in colours) == pytest.approx(1.0, abs=0.02)
    assert all(0.3 < c.share < 0.7 for c in colours)
    # The white around the garment never counts: alpha says where the garment is.
    assert "white" not in {c.name for c in colours}


def test_shading_is_one_colour_and_no_garment_is_no_colour() -> None:
    rgb, mask = _garment([(30, 120, 40)])
    shade = np.linspace(0.9, 1.1, rgb.shape[0])[:, None, None]
    shaded = np.where(mask[..., None], np.clip(rgb * shade, 0, 255), rgb).astype(np.uint8)
    assert [c.name for c in dominant_colors(shaded, mask)] == ["green"]
    assert dominant_colors(rgb, np.zeros(mask.shape)) == []


# ---- through the service ------------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # cutout: fast; the attributes are computed by the worker whatever the pipeline.
    s = Settings(data_dir=tmp_path / "data", default_pipeline="cutout",
                 fetch_allow_hosts="127.0.0.1")
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


def test_a_succeeded_job_carries_attributes_in_status_side_output_and_webhook(
    client: TestClient, worker: WorkerContext
) -> None:
    photo = encode(garment_photo(320, 240, colour=(200, 30, 30))[0], "JPEG", quality=92)
    r = client.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
                    data={"webhook_url": "http://127.0.0.1:9/hook"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert client.get(f"/assets/{job_id}").json()["attributes"] is None
    assert run_job(worker, job_id) == "succeeded"
    status = client.get(f"/assets/{job_id}").json()
    attrs = status["attributes"]
    assert attrs is not None and attrs["colors"], attrs
    # The photo's stripes are (200, 30, 30) and 0.6 of it + 40: red and a darker red.
    assert attrs["colors"][0]["name"] in {"red", "burgundy", "maroon", "rust"}
    assert attrs["pattern"] == "striped"  # the fixture's t-shirt is striped
    assert all(0 < c["share"] <= 1 for c in attrs["colors"])
    assert sum(c["share"] for c in attrs["colors"]) <= 1.0001
    if attrs.get("category"):
        assert 0 <= attrs["category"]["confidence"] <= 1
    assert "attributes" in status["timings"]

    # The side output and the webhook carry what the worker computed; the status also
    # names the fields that do not apply (null).
    stored = {k: v for k, v in attrs.items() if v is not None}
    side = client.get(status["side_outputs"]["attributes"])
    assert side.status_code == 200 and side.headers["content-type"] == "application/json"
    assert side.json() == stored

    (delivery,) = client.get("/webhooks/deliveries", params={"asset_id": job_id}
                             ).json()["deliveries"]
    assert delivery["event"] == "asset.succeeded"
    assert delivery["payload"]["data"]["attributes"] == stored


def test_manifest_csv_has_one_column_per_attribute(client: TestClient) -> None:
    jpeg = encode(garment_photo(320, 240)[0], "JPEG", quality=90)
    files = [("files", (f"{n}.jpg", jpeg, "image/jpeg")) for n in ("SKU-1", "SKU-2")]
    batch = client.post("/batches", files=files, data={"format": "png"}).json()
    ctx = client.app.state.ctx
    ok, failed = (i["asset_id"] for i in client.get(f"/batches/{batch['id']}").json()["items"])
    attrs = {"category": {"value": "dress", "confidence": 0.8731},
             "sleeve_length": "short", "length": "midi", "neckline": "v", "pattern": "striped",
             "closure": "button", "colors": [{"name": "navy", "hex": "#1a2040", "share": 0.71},
                        {"name": "white", "hex": "#f4f4f2", "share": 0.2}],
             "hint": {"text": "midi dress, short sleeves", "category": "dress",
                      "confidence": 0.97, "photo_category": "skirt", "decided": "dress",
                      "won": "hint", "why": "the hint was surer than the photo"}}
    ctx.store.claim(ok, "w")
    ctx.blobs.put(f"assets/{ok}/result.png", b"the png")
    ctx.store.succeed(ok, result_blob=f"assets/{ok}/result.png", content_type="image/png",
                      timings={}, attributes=attrs)
    ctx.store.claim(failed, "w")
    ctx.store.fail(failed, code="garment_not_found", message="no garment")
    r = client.get(f"/batches/{batch['id']}/results")
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        reader = csv.DictReader(io.StringIO(zf.read("manifest.csv").decode()))
        rows = {row["sku"]: row for row in reader}
    assert reader.fieldnames == ["sku", "status", "error_code", "file", *ATTRIBUTE_COLUMNS]
    assert {k: rows["SKU-1"][k] for k in ATTRIBUTE_COLUMNS} == {
        "category": "dress", "category_confidence": "0.8731", "sleeve_length": "short",
        "length": "midi", "neckline": "v", "pattern": "striped", "closure": "button",
        "color": "navy/white",
        "color_hex": "#1a2040/#f4f4f2", "color_share": "0.710/0.200",
        "hint": "midi dress, short sleeves", "hint_category": "dress", "hint_won": "hint"}
    assert all(rows["SKU-2"][k] == "" for k in ATTRIBUTE_COLUMNS)


def test_openapi_documents_the_attributes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    status = schemas["AssetStatus"]["properties"]["attributes"]
    assert "catalog attributes" in status["description"]
    attrs = schemas["Attributes"]["properties"]
    assert set(attrs) == {"category", "sleeve_length", "length", "neckline", "pattern",
                          "closure", "colors", "hint"}
    for field, values in (("sleeve_length", SLEEVE_LENGTHS), ("length", LENGTHS),
                          ("neckline", NECKLINES), ("pattern", PATTERNS),
                          ("closure", CLOSURES)):
        described = attrs[field]["description"]
        assert all(v in described for v in values), (field, described)
    for name in ("CategoryAttribute", "ColorAttribute"):
        assert all(p.get("description") for p in schemas[name]["properties"].values()), name
    assert json.dumps(schemas["ColorAttribute"]).count("share") >= 1


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["ragdiffusion", "noretrieval"])
def test_generator_jobs_carry_the_category_confidence(client: TestClient, worker: WorkerContext,
                                                      pipeline: str) -> None:
    # Every pipeline returns through one helper (`models.pipelines.stages.deliver`): the
    # generator's pipelines used to drop the confidence that `flatten` passed on.
    sample = generate(1_000_011, size=384)
    r = client.post("/assets", files={"file": ("a.jpg", sample.wild_jpeg, "image/jpeg")},
                    data={"pipeline": pipeline, "output_size": "256"})
    assert r.status_code == 202, r.text
    assert run_job(worker, r.json()["id"]) == "succeeded"
    status = client.get(f"/assets/{r.json()['id']}").json()
    category = status["attributes"]["category"]
    assert category["value"] and 0 < category["confidence"] <= 1, category
    assert status["attributes"]["pattern"] in PATTERNS
    rows = client.get("/assets/" + r.json()["id"] + "/outputs/attributes").json()
    assert rows["category"]["confidence"] == category["confidence"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--n", "0"], "n must be in"), (["--size", "100"], "size must be within 256–2048"),
    (["--pipeline", "nope"], "unknown pipeline 'nope'"), (["--split", "nope"], "unknown split"),
    (["--heldout", "--split", "val"], "--heldout contradicts"),
])
def test_bench_attributes_refuses_bad_arguments(argv: list[str], message: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main

    assert main(["bench", "attributes", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("confidence", "below", "flagged"),
                         [(0.41, 0.6, True), (0.93, 0.6, False), (0.93, 0.95, True)])
def test_a_doubtful_category_suggests_review_in_status_and_webhook(
    tmp_path: Path, confidence: float, below: float, flagged: bool
) -> None:
    s = Settings(data_dir=tmp_path / "data", default_pipeline="cutout", review_confidence=below,
                 fetch_allow_hosts="127.0.0.1")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    with TestClient(create_app(s)) as c:
        c.headers["Authorization"] = f"Bearer {create_key(c.app.state.ctx.store, 'acme').key}"
        jpeg = encode(garment_photo(320, 240)[0], "JPEG", quality=90)
        job_id = c.post("/assets", files={"file": ("a.jpg", jpeg, "image/jpeg")},
                        data={"webhook_url": "http://127.0.0.1:9/hook"}).json()["id"]
        assert c.get(f"/assets/{job_id}").json()["review_suggested"] is None  # queued
        ctx = c.app.state.ctx
        ctx.store.claim(job_id, "w")
        ctx.blobs.put(f"assets/{job_id}/result.png", b"the png")
        ctx.store.succeed(job_id, result_blob=f"assets/{job_id}/result.png",
                          content_type="image/png", timings={},
                          attributes={"category": {"value": "shirt", "confidence": confidence},
                                      "colors": []})
        assert c.get(f"/assets/{job_id}").json()["review_suggested"] is flagged
        job_ended(ctx.store, lambda delivery_id: None, job_id, s.review_confidence)
        (delivery,) = c.get("/webhooks/deliveries", params={"asset_id": job_id}
                            ).json()["deliveries"]
        assert delivery["payload"]["data"]["review_suggested"] is flagged
    spec = create_app(s).openapi()["components"]["schemas"]["AssetStatus"]["properties"]
    assert "FLATLAY_REVIEW_CONFIDENCE" in spec["review_suggested"]["description"]


def test_the_landmarks_output_carries_the_category_confidence() -> None:
    from models.pipeline import FlatLayResult, StructureSpec

    s = generate(1_000_011, size=64)
    result = FlatLayResult(image=np.zeros((8, 8, 4), np.uint8), alpha=np.zeros((8, 8), np.float32),
                           category=s.category, landmarks=s.flat_landmarks,
                           category_confidence=0.73219)
    out = result.structure_json()
    assert out is not None and out["category_confidence"] == 0.7322
    # It still goes back in as a `structure` unchanged.
    assert StructureSpec.parse(out).category == s.category
