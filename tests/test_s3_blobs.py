"""The S3 blob store against a real S3-compatible server (moto in server mode, on a free
loopback port): the interface alone, then a whole job through `flatlay serve`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from models.pipeline import SIDE_OUTPUTS
from service.blobs import BlobNotFound, S3BlobStore, make_blob_store
from service.settings import Settings
from tests.support import ServiceProcesses, encode, free_port, garment_photo, wait_for_job

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
               "AWS_DEFAULT_REGION": "us-east-1"}


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
           ) -> str:
    for k, v in CREDENTIALS.items():
        monkeypatch.setenv(k, v)
    name = f"flatlay-{request.node.name[:20].lower().replace('_', '-')}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name


def test_s3_blob_store_interface(s3_endpoint: str, bucket: str, tmp_path: Path) -> None:
    store = make_blob_store(Settings(data_dir=tmp_path, blob_url=f"s3://{bucket}/blobs",
                                     s3_endpoint_url=s3_endpoint))
    assert isinstance(store, S3BlobStore)
    store.ping()
    assert not store.exists("assets/a/input.jpg")
    store.put("assets/a/input.jpg", b"\xff\xd8 bytes")
    assert store.exists("assets/a/input.jpg")
    assert store.get("assets/a/input.jpg") == b"\xff\xd8 bytes"
    keys = [o["Key"] for o in boto3.client("s3", endpoint_url=s3_endpoint)
            .list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["blobs/assets/a/input.jpg"]
    store.delete("assets/a/input.jpg")
    with pytest.raises(BlobNotFound):
        store.get("assets/a/input.jpg")
    for bad in ("../x", "/abs", "a/../../b", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x")
    with pytest.raises(Exception):  # noqa: B017 (botocore's ClientError)
        S3BlobStore("no-such-bucket", endpoint_url=s3_endpoint).ping()


def test_bad_blob_urls_are_refused(tmp_path: Path) -> None:
    for url in ("s3://", "http://bucket", "s3://UPPER/x"):
        with pytest.raises(ValueError):
            Settings(data_dir=tmp_path, blob_url=url)


@pytest.mark.slow
def test_a_job_through_flatlay_serve_on_s3(s3_endpoint: str, bucket: str,
                                           tmp_path: Path) -> None:
    port = free_port()
    env = {**CREDENTIALS, "FLATLAY_DATA_DIR": str(tmp_path / "data"),
           "FLATLAY_BLOB_URL": f"s3://{bucket}", "FLATLAY_S3_ENDPOINT_URL": s3_endpoint,
           "FLATLAY_AUTH_ENABLED": "false"}
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=env, port=port,
                                 log_dir=tmp_path)
    try:
        photo = encode(garment_photo(320, 240)[0], "JPEG", quality=90)
        with svc.client() as c:
            assert c.get("/readyz").json()["checks"]["blob_store"] == "ok"
            job_id = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
                            data={"output_size": "256"}).json()["id"]
            status = wait_for_job(c, job_id)
            assert status["status"] == "succeeded"
            result = c.get(f"/assets/{job_id}/result")
            assert result.status_code == 200 and result.content[:4] == b"\x89PNG"
            mask = c.get(status["side_outputs"]["mask"])
            assert mask.status_code == 200 and mask.content[:4] == b"\x89PNG"
            s3 = boto3.client("s3", endpoint_url=s3_endpoint)
            keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"])
            outputs = sorted(f"assets/{job_id}/outputs-a1/{name}.{SIDE_OUTPUTS[name][0]}"
                             for name in status["side_outputs"])
            assert "mask" in status["side_outputs"]
            assert keys == [f"assets/{job_id}/input.jpg", *outputs,
                            f"assets/{job_id}/result-a1.png"]
            assert not (tmp_path / "data" / "blobs" / "assets").exists()
            assert c.delete(f"/assets/{job_id}").status_code == 204
            assert "Contents" not in s3.list_objects_v2(Bucket=bucket)
    finally:
        svc.stop()
