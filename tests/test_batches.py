"""Batches in process (real SQLite store and file queue; no worker): files, a ZIP with
hostile members, JSON and CSV manifests, status per SKU, the results ZIP, idempotency,
tenants; and the URL fetcher against a real local HTTP server."""

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

from service.app import create_app
from service.auth import create_key
from service.fetch import AllowList, FetchError, FetchLimits, fetch_image
from service.reconciler import reconcile_once
from service.settings import Settings
from service.store import migrate
from tests.http_fixtures import local_http
from tests.support import encode, garment_photo


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings(data_dir=tmp_path / "data", max_upload_bytes=3_000_000,
                 fetch_allow_hosts="127.0.0.1")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    return s


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        c.headers["Authorization"] = f"Bearer {create_key(c.app.state.ctx.store, 'acme').key}"
        yield c


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    return encode(garment_photo(320, 240)[0], "JPEG", quality=90)


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


def test_a_batch_of_files(client: TestClient, jpeg: bytes) -> None:
    files = [("files", ("red shirt.jpg", jpeg, "image/jpeg")),
             ("files", ("blue.png", encode(garment_photo(200, 150)[0], "PNG"), "image/png")),
             ("files", ("notes.txt", b"hello", "text/plain")),
             ("files", ("red shirt.jpg", jpeg, "image/jpeg"))]
    r = client.post("/batches", files=files, data={"output_size": "512", "format": "webp"})
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["counts"] == {"total": 4, "queued": 3, "running": 0, "succeeded": 0,
                              "failed": 0, "canceled": 0, "rejected": 1}
    assert body["rejected"][0]["name"] == "notes.txt"
    assert body["rejected"][0]["code"] == "unsupported_media_type"
    status = client.get(body["links"]["self"]).json()
    assert sorted(i["sku"] for i in status["items"]) == ["blue", "red shirt", "red shirt-2"]
    assert status["status"] == "processing" and status["source"] == "files"
    asset = client.get(f"/assets/{status['items'][0]['asset_id']}").json()
    assert asset["options"]["output_size"] == 512 and asset["batch_id"] == body["id"]


def test_a_zip_with_hostile_members_rejects_each_with_a_reason(
    client: TestClient, jpeg: bytes
) -> None:
    bomb = b"\0" * (20 * 1024 * 1024)
    archive = _zip({
        "good/one.jpg": jpeg,
        "two.jpg": jpeg,
        "../../etc/evil.jpg": jpeg,
        "/abs/path.jpg": jpeg,
        "C:/windows/x.jpg": jpeg,
        "bomb.png": bomb,
        "inner.zip": _zip({"a.jpg": jpeg}),
        "sneaky.jpg": _zip({"a.jpg": jpeg}),  # an archive named like a photo
        "readme.txt": b"text",
        "__MACOSX/._two.jpg": b"\0\5\26\7",
        "folder/": b"",
    })
    r = client.post("/batches", files={"archive": ("catalog.zip", archive, "application/zip")})
    assert r.status_code == 202, r.text
    reasons = {x["name"]: x["code"] for x in r.json()["rejected"]}
    assert reasons == {
        "../../etc/evil.jpg": "unsafe_member_name", "/abs/path.jpg": "unsafe_member_name",
        "C:/windows/x.jpg": "unsafe_member_name", "bomb.png": "zip_bomb",
        "inner.zip": "nested_archive", "sneaky.jpg": "nested_archive",
        "readme.txt": "unsupported_media_type",
    }
    assert r.json()["counts"]["queued"] == 2
    r = client.post("/batches", files={"archive": ("x.zip", b"PK\3\4 not really", "x")})
    assert r.status_code == 422 and r.json()["error"]["code"] == "corrupt_archive"


def test_manifests_json_and_csv_with_item_options_overriding(client: TestClient) -> None:
    items = [
        {"sku": "A-1", "image_url": "https://example.com/a.jpg"},
        {"sku": "A-2", "image_url": "https://example.com/b.jpg",
         "options": {"output_size": 512, "format": "webp"}},
        {"sku": "A-3", "image_url": "ftp://example.com/c.jpg"},
        {"sku": "A-4", "image_url": "http://169.254.169.254/latest/meta-data"},
        {"sku": "A-5", "image_url": "http://10.1.2.3/x.jpg"},
        {"sku": "A-6", "image_url": "https://example.com/d.jpg", "options": {"format": "gif"}},
        {"sku": "A-7", "image_url": "https://user:pw@example.com/e.jpg"},
        {"sku": "A-1", "image_url": "https://example.com/dup.jpg"},
        {"image_url": "https://example.com/nosku.jpg"},
        "not an object",
        {"sku": "A-8", "image_url": "https://example.com/f.jpg", "options": {"evil": 1}},
    ]
    r = client.post("/batches", files={"manifest": ("m.json", json.dumps(items), "x")},
                    data={"output_size": "256"})
    assert r.status_code == 202, r.text
    codes = [(x["name"], x["code"]) for x in r.json()["rejected"]]
    assert codes == [("row 3", "url_invalid"), ("row 4", "url_refused"),
                     ("row 5", "url_refused"), ("row 6", "validation_error"),
                     ("row 7", "url_invalid"), ("row 8", "duplicate_sku"),
                     ("row 9", "invalid_item"), ("row 10", "invalid_item"),
                     ("row 11", "validation_error")]
    status = client.get(r.json()["links"]["self"]).json()
    by_sku = {i["sku"]: i["asset_id"] for i in status["items"]}
    assert set(by_sku) == {"A-1", "A-2"}
    a1 = client.get(f"/assets/{by_sku['A-1']}").json()
    a2 = client.get(f"/assets/{by_sku['A-2']}").json()
    assert a1["options"]["output_size"] == 256 and a1["options"]["format"] == "png"
    assert a2["options"]["output_size"] == 512 and a2["options"]["format"] == "webp"
    assert a1["input"]["source_url"] == "https://example.com/a.jpg"

    csv_text = "sku,image_url,output_size,hint\nC-1,https://example.com/a.jpg,,midi  dress\n" \
               "C-2,https://example.com/b.jpg,2048,\nC-3,https://example.com/b.jpg,99999,\n" \
               f"C-4,https://example.com/c.jpg,,{'x' * 201}\n"
    r = client.post("/batches", files={"manifest": ("m.csv", csv_text, "text/csv")})
    assert r.status_code == 202, r.text
    assert r.json()["counts"]["queued"] == 2
    assert [x["code"] for x in r.json()["rejected"]] == ["validation_error"] * 2
    assert "hint" in r.json()["rejected"][1]["message"]
    items = client.get(r.json()["links"]["self"]).json()["items"]
    c1 = client.get(f"/assets/{next(i for i in items if i['sku'] == 'C-1')['asset_id']}").json()
    assert c1["options"]["hint"] == "midi dress"
    for bad in (b"{\"items\": 3}", b"\xff\xfe", b"name,url\nx,y\n", b"[]", b"[[[[" * 5000):
        r = client.post("/batches", files={"manifest": ("m", bad, "x")})
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_manifest", bad[:20]


def test_exactly_one_source(client: TestClient, jpeg: bytes) -> None:
    r = client.post("/batches", data={"output_size": "512"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "validation_error"
    r = client.post("/batches", files=[("files", ("a.jpg", jpeg, "image/jpeg")),
                                       ("manifest", ("m.json", b"[]", "x"))])
    assert r.status_code == 422 and r.json()["error"]["field"] == "manifest"


def test_results_zip_and_completion(client: TestClient, jpeg: bytes) -> None:
    files = [("files", (f"{n}.jpg", jpeg, "image/jpeg")) for n in ("SKU-1", "SKU/2", "SKU-3")]
    files.append(("files", ("bad.jpg", b"nope", "image/jpeg")))
    batch = client.post("/batches", files=files, data={"format": "png"}).json()
    ctx = client.app.state.ctx
    items = client.get(f"/batches/{batch['id']}").json()["items"]
    ok, failed, canceled = (i["asset_id"] for i in items)
    ctx.store.claim(ok, "w")
    ctx.blobs.put(f"assets/{ok}/result.png", b"the png")
    ctx.store.succeed(ok, result_blob=f"assets/{ok}/result.png", content_type="image/png",
                      timings={})
    ctx.store.claim(failed, "w")
    ctx.store.fail(failed, code="garment_not_found", message="no garment")
    assert not ctx.store.complete_batch_if_done(batch["id"])
    assert client.post(f"/assets/{canceled}/cancel").status_code == 200
    status = client.get(f"/batches/{batch['id']}").json()
    assert status["status"] == "completed" and status["completed_at"]
    assert status["counts"]["succeeded"] == 1 and status["counts"]["failed"] == 1
    assert reconcile_once(ctx).batches_completed == 0  # completed once only

    r = client.get(f"/batches/{batch['id']}/results")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.testzip() is None
        names = zf.namelist()
        rows = list(csv.DictReader(io.StringIO(zf.read("manifest.csv").decode())))
        ok_sku = next(i["sku"] for i in items if i["asset_id"] == ok)
        ok_file = next(n for n in names if n != "manifest.csv")
        assert zf.read(ok_file) == b"the png"
    assert len(names) == 2
    assert {r["sku"]: (r["status"], r["error_code"], r["file"]) for r in rows} == {
        ok_sku: ("succeeded", "", ok_file),
        next(i["sku"] for i in items if i["asset_id"] == failed):
            ("failed", "garment_not_found", ""),
        next(i["sku"] for i in items if i["asset_id"] == canceled): ("canceled", "", ""),
        "bad": ("rejected", "unsupported_media_type", ""),
    }


def test_batches_are_per_tenant_and_idempotent(client: TestClient, jpeg: bytes) -> None:
    files = [("files", ("a.jpg", jpeg, "image/jpeg"))]
    headers = {"Idempotency-Key": "nightly-2026-12-08"}
    first = client.post("/batches", files=files, headers=headers)
    again = client.post("/batches", files=files, headers=headers)
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    other = client.post("/batches", files=files, data={"output_size": "512"}, headers=headers)
    assert other.status_code == 409
    other_key = create_key(client.app.state.ctx.store, "globex").key
    theirs = {"Authorization": f"Bearer {other_key}"}
    bid = first.json()["id"]
    for path in (f"/batches/{bid}", f"/batches/{bid}/results"):
        r = client.get(path, headers=theirs)
        assert r.status_code == 404 and r.json()["error"]["code"] == "batch_not_found"
    asset = client.get(f"/batches/{bid}").json()["items"][0]["asset_id"]
    for method, path in (("GET", f"/assets/{asset}"), ("GET", f"/assets/{asset}/result"),
                         ("POST", f"/assets/{asset}/cancel"), ("DELETE", f"/assets/{asset}")):
        assert client.request(method, path, headers=theirs).status_code == 404
    assert client.get(f"/assets/{asset}").json()["status"] == "queued"


# --- The URL fetcher against a real local server ------------------------------------------------


def test_fetcher_limits(jpeg: bytes) -> None:
    files = {"/shirt.jpg": ("image/jpeg", jpeg), "/page": ("text/html", b"<html>"),
             "/big.jpg": ("image/jpeg", jpeg * 40)}
    with local_http(files) as srv:
        limits = FetchLimits(max_bytes=len(jpeg) * 10, timeout_s=2.0, max_redirects=2,
                             allow=AllowList.parse("127.0.0.1"))
        data, content_type = fetch_image(f"{srv.url}/shirt.jpg", limits)
        assert data == jpeg and content_type == "image/jpeg"
        assert fetch_image(f"{srv.url}/redirect-ok", limits)[0] == jpeg
        for path, code in (("/page", "url_bad_content_type"), ("/big.jpg", "url_too_large"),
                           ("/endless", "url_too_large"), ("/missing", "url_fetch_failed"),
                           ("/redirect-loop", "url_too_many_redirects"),
                           ("/redirect-private", "url_refused"), ("/slow", "url_fetch_failed")):
            with pytest.raises(FetchError) as err:
                fetch_image(f"{srv.url}{path}", limits)
            assert err.value.code == code, path
        # Loopback is refused unless the allow-list names it.
        closed = FetchLimits(limits.max_bytes, 2.0, 2, AllowList.parse(""))
        for url in (f"{srv.url}/shirt.jpg", f"http://localhost:{srv.url.rsplit(':', 1)[1]}/x",
                    "http://[::1]/x", "http://0.0.0.0/x", "http://[::ffff:127.0.0.1]/x"):
            with pytest.raises(FetchError) as err:
                fetch_image(url, closed)
            assert err.value.code == "url_refused", url


def test_blank_image_zip_members_are_photos_too(client: TestClient) -> None:
    png = encode(np.full((64, 64, 3), 200, np.uint8), "PNG")
    r = client.post("/batches", files={"archive": ("a.zip", _zip({"p.png": png}), "x")})
    assert r.json()["counts"]["queued"] == 1
