"""`flatlay submit` and the client library (client/) against the real embedded server, started
by the tests on loopback (`flatlay serve`: SQLite, file queue, a real worker) with API keys on
and a tight rate limit, so every run also lives through 429s; plus the retry rules against
a mock transport and the inputs against files on disk."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client import Client, InvalidRequest, JobFailed, RateLimited
from client.api import OPTION_NAMES, SIDE_OUTPUTS
from client.inputs import InputError, discover
from client.submit import ATTRIBUTE_COLUMNS, STATE_FILE, _attribute_cells
from tests.support import REPO, ServiceProcesses, create_key, free_port

# Fast: the classical pipeline on small photos; the rate limit makes 429s certain.
PIPELINE = ["--pipeline", "cutout", "--size", "256"]
ENV = {"FLATLAY_PRELOAD_PIPELINES": "cutout", "FLATLAY_RATE_LIMIT_PER_S": "8",
       "FLATLAY_RATE_LIMIT_BURST": "4"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    root = tmp_path_factory.mktemp("submit")
    port = free_port()
    env = {**ENV, "FLATLAY_DATA_DIR": str(root / "data")}
    svc = ServiceProcesses.start([["serve", "--port", str(port)]], env=env, port=port,
                                 log_dir=root, api_key=create_key(env, "catalog"))
    svc.data_dir = root / "data"  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def _photos(folder: Path, seeds: range, prefix: str = "SKU-") -> list[Path]:
    from models.garments import generate

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for seed in seeds:
        path = folder / f"{prefix}{seed}.jpg"
        path.write_bytes(generate(seed, size=160).wild_jpeg)
        paths.append(path)
    return paths


def _count(svc: ServiceProcesses, table: str) -> int:
    with sqlite3.connect(svc.data_dir / "jobs.sqlite3") as db:  # type: ignore[attr-defined]
        return db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _submit(svc: ServiceProcesses, *args: str, env: dict[str, str] | None = None,
            timeout: float = 240) -> subprocess.CompletedProcess:
    """The real command, with the server and key from the environment."""
    return subprocess.run(
        [sys.executable, "-m", "cli", "submit", *args], cwd=REPO, capture_output=True,
        text=True, timeout=timeout,
        env={**os.environ, "FLATLAY_URL": svc.base_url, "FLATLAY_API_KEY": svc.api_key or "",
             **(env or {})})


def _manifest(out: Path) -> dict[str, dict[str, str]]:
    with (out / "manifest.csv").open(newline="") as fh:
        return {row["sku"]: row for row in csv.DictReader(fh)}


def _http_429s(svc: ServiceProcesses) -> float:
    text = httpx.get(f"{svc.base_url}/metrics").text
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "flatlay_http_requests_total" and s.labels.get("status") == "429")


def test_a_folder_of_photos_comes_back_named_by_sku_with_a_manifest(
    server: ServiceProcesses, tmp_path: Path
) -> None:
    _photos(tmp_path / "catalog", range(100, 108))
    _photos(tmp_path / "catalog" / "autumn", range(108, 112))  # folders are walked
    out = tmp_path / "out"
    jobs = _count(server, "jobs")
    run = _submit(server, str(tmp_path / "catalog"), "-o", str(out), *PIPELINE,
                  "--outputs", "mask,attributes", "--batch-size", "5")
    assert run.returncode == 0, run.stdout + run.stderr
    skus = [f"SKU-{s}" for s in range(100, 112)]
    for sku in skus:
        assert (out / f"{sku}.png").read_bytes().startswith(b"\x89PNG")
        assert (out / f"{sku}.mask.png").exists()
        assert "colors" in json.loads((out / f"{sku}.attributes.json").read_text())
    rows = _manifest(out)
    assert sorted(rows) == skus
    assert {r["status"] for r in rows.values()} == {"succeeded"}
    row = rows["SKU-100"]
    assert row["file"] == "SKU-100.png" and row["error_code"] == ""
    assert row["side_outputs"] == "SKU-100.mask.png;SKU-100.attributes.json"
    assert row["color"] and row["color_hex"].startswith("#") and row["asset_id"]
    # 256 px is not the preset's 1024: the compliance check says so, per item.
    assert row["compliance_passed"] == "false" and row["compliance_failed_checks"] == "size"
    assert _count(server, "jobs") - jobs == 12
    assert "| succeeded | 12 |" in run.stdout
    assert server.api_key not in run.stdout + run.stderr  # never printed
    assert _http_429s(server) > 0  # the rate limit answered 429s, and the run went on


def test_a_rerun_after_a_kill_submits_nothing_twice(
    server: ServiceProcesses, tmp_path: Path
) -> None:
    _photos(tmp_path / "in", range(200, 212))
    out = tmp_path / "out"
    jobs, batches = _count(server, "jobs"), _count(server, "batches")
    args = [str(tmp_path / "in"), "-o", str(out), *PIPELINE, "--batch-size", "2", "--quiet"]
    env = {**os.environ, "FLATLAY_URL": server.base_url, "FLATLAY_API_KEY": server.api_key}
    proc = subprocess.Popen([sys.executable, "-m", "cli", "submit", *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / STATE_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no clean-up: as if the laptop went to sleep for good
    proc.wait()
    sent = json.loads((out / STATE_FILE).read_text())["items"]
    assert 1 <= len(sent) <= 12

    rerun = _submit(server, *args)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(_manifest(out)) == [f"SKU-{s}" for s in range(200, 212)]
    assert _count(server, "jobs") - jobs == 12
    assert _count(server, "batches") - batches == 6
    assert f"sent {12 - len(sent)} item(s) in this run" in rerun.stdout
    # Finished: the same command once more sends nothing and exits 0.
    again = _submit(server, *args)
    assert again.returncode == 0 and "sent 0 item(s)" in again.stdout
    # Even without the state file, the same photos and options make no new job: each batch's
    # Idempotency-Key comes from its contents, and the service answers with the first batch.
    fresh = _submit(server, *[a if a != str(out) else str(tmp_path / "fresh") for a in args])
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert len(list((tmp_path / "fresh").glob("SKU-*.png"))) == 12
    assert _count(server, "jobs") - jobs == 12


def test_a_bad_item_fails_alone_with_its_code(server: ServiceProcesses, tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", range(300, 303))
    (tmp_path / "in" / "broken.jpg").write_bytes(b"not a photo at all")
    (tmp_path / "in" / "empty.png").write_bytes(b"")
    manifest = tmp_path / "in" / "more.csv"
    manifest.write_text("sku,image_path,title\n"
                        f"shirt 1/blue,{photos[0].name},Blue shirt\n"
                        "ghost,no-such-photo.jpg,Lost\n"
                        ",SKU-300.jpg,No SKU\n"
                        "remote,http://127.0.0.1:9/shirt.jpg,Not fetched from loopback\n")
    out = tmp_path / "out"
    run = _submit(server, str(tmp_path / "in"), str(manifest), "-o", str(out), *PIPELINE,
                  "--quiet")
    assert run.returncode == 1, run.stdout + run.stderr
    rows = _manifest(out)
    assert {s: (r["status"], r["error_code"]) for s, r in rows.items()} == {
        "SKU-300": ("succeeded", ""), "SKU-301": ("succeeded", ""),
        "SKU-302": ("succeeded", ""), "shirt 1/blue": ("succeeded", ""),
        "broken": ("failed", "unsupported_media_type"), "empty": ("failed", "empty_file"),
        "ghost": ("failed", "file_not_found"), "row 3": ("failed", "invalid_item"),
        "remote": ("failed", "url_refused")}
    # A SKU that is no file name is made one; the manifest keeps the SKU as it was.
    assert rows["shirt 1/blue"]["file"] == "shirt 1_blue.png"
    assert (out / "shirt 1_blue.png").exists()
    assert "| failed | 5 |" in run.stdout and "broken: unsupported_media_type" in run.stdout


def test_bad_input_is_a_usage_error_and_sends_nothing(
    server: ServiceProcesses, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import main

    monkeypatch.setenv("FLATLAY_URL", server.base_url)
    monkeypatch.setenv("FLATLAY_API_KEY", server.api_key or "")
    _photos(tmp_path / "in", range(400, 401))
    bad_manifest = tmp_path / "m.csv"
    bad_manifest.write_text("name,price\nshirt,10\n")
    jobs = _count(server, "jobs")
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "missing")], "no such file or folder"),
        ([str(bad_manifest)], "needs a header with the column sku"),
        ([str(tmp_path / "in"), "--outputs", "mask,halo"], "--outputs: unknown halo"),
        ([str(tmp_path / "in"), "--pipeline", "nope"], "--pipeline 'nope' is not one of"),
        ([str(tmp_path / "in"), "--size", "99999"], "--size"),
        ([str(tmp_path / "in"), "--key", "fl_wrong"], "unauthorized"),
    ]
    for args, message in cases:
        assert main(["submit", *args, "-o", str(out), "--quiet"]) == 2, args
        err = capsys.readouterr().err
        assert message in err, (args, err)
        assert "fl_wrong" not in err
    assert _count(server, "jobs") == jobs
    # --dry-run lists and sends nothing.
    assert main(["submit", str(tmp_path / "in"), "-o", str(tmp_path / "dry"), "--dry-run"]) == 0
    assert "would send 1 of 1 items as 1 batch(es)" in capsys.readouterr().out
    assert not (tmp_path / "dry").exists() and _count(server, "jobs") == jobs


def test_the_client_library(server: ServiceProcesses, tmp_path: Path) -> None:
    photo = _photos(tmp_path, range(500, 501))[0]
    with Client(server.base_url, api_key=server.api_key) as flatlay:
        assert server.api_key not in repr(flatlay)
        created = flatlay.submit(photo, pipeline="cutout", output_size=256)
        # The same photo and options again: the same job (a retried post makes no second).
        assert flatlay.submit(photo, pipeline="cutout", output_size=256)["id"] == created["id"]
        status = flatlay.wait(created, timeout=120)
        assert status["status"] == "succeeded" and status["options"]["output_size"] == 256
        assert flatlay.result(status).startswith(b"\x89PNG")
        assert json.loads(flatlay.output(status, "attributes"))["colors"]
        with pytest.raises(InvalidRequest) as bad:
            flatlay.submit(b"garbage", filename="x.jpg", pipeline="cutout")
        assert bad.value.code == "unsupported_media_type" and bad.value.field == "file"
        with pytest.raises(InvalidRequest) as bad:
            flatlay.submit(photo, pipeline="cutout", output_size=5)
        assert bad.value.code == "validation_error" and bad.value.field == "output_size"

        blank = io.BytesIO()
        from PIL import Image

        Image.new("RGB", (200, 160), (90, 90, 90)).save(blank, "PNG")
        with pytest.raises(JobFailed) as failed:
            flatlay.wait(flatlay.submit(blank.getvalue(), filename="blank.png",
                                        pipeline="cutout"), timeout=120)
        assert failed.value.code == "garment_not_found"

        batch = flatlay.submit_batch([photo, ("notes.txt", b"hello")], pipeline="cutout",
                                     output_size=256)
        assert [r["code"] for r in batch["rejected"]] == ["unsupported_media_type"]
        done = flatlay.wait_batch(batch, timeout=120)
        assert [i["status"] for i in done["items"]] == ["succeeded"]
        archive = flatlay.batch_results(batch, tmp_path / "results.zip")
        with zipfile.ZipFile(archive) as zf:
            assert sorted(zf.namelist()) == ["SKU-500.png", "manifest.csv"]


@pytest.mark.slow
def test_an_api_restart_mid_run_is_survived(tmp_path: Path) -> None:
    port = free_port()
    env = {**ENV, "FLATLAY_DATA_DIR": str(tmp_path / "data")}
    start = [["serve", "--port", str(port)]]
    svc = ServiceProcesses.start(start, env=env, port=port, log_dir=tmp_path,
                                 api_key=create_key(env, "restart"))
    _photos(tmp_path / "in", range(600, 608))
    out = tmp_path / "out"
    run_env = {**os.environ, "FLATLAY_URL": svc.base_url, "FLATLAY_API_KEY": svc.api_key}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "submit", str(tmp_path / "in"), "-o", str(out),
         *PIPELINE, "--batch-size", "2", "--quiet"],
        cwd=REPO, env=run_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (out / STATE_FILE).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        svc.stop()  # the API and its worker go away mid-run…
        time.sleep(1.0)
        svc = ServiceProcesses.start(start, env=env, port=port, log_dir=tmp_path,
                                     api_key=svc.api_key)  # …and come back
        output, _ = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
        svc.stop()
    assert proc.returncode == 0, output
    assert len(list(out.glob("SKU-*.png"))) == 8
    with sqlite3.connect(tmp_path / "data" / "jobs.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 8


# --- the client alone -------------------------------------------------------------------------


def _mock_client(answers: list, sleeps: list[float], seen: list[httpx.Request]) -> Client:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return Client("http://flatlay.test", api_key="fl_secret", transport=httpx.MockTransport(handle),
                  sleep=sleeps.append, backoff_s=0.1)


def _error(status: int, code: str, field: str | None = None, **headers: str) -> httpx.Response:
    detail = {"code": code, "message": code.replace("_", " ")}
    if field:
        detail["field"] = field
    return httpx.Response(status, json={"error": detail}, headers=headers)


def _created() -> httpx.Response:
    return httpx.Response(202, json={"id": "a1", "status": "queued"})


def test_a_429_is_retried_after_its_retry_after_with_the_same_idempotency_key() -> None:
    sleeps: list[float] = []
    seen: list[httpx.Request] = []
    client = _mock_client([_error(429, "rate_limited", **{"Retry-After": "2"}),
                           _error(429, "rate_limited", **{"Retry-After": "3"}),
                           _error(503, "storage_unavailable"),
                           httpx.ConnectError("connection refused"),
                           _created()], sleeps, seen)
    assert client.submit(b"photo", filename="shirt.jpg", pipeline="cutout")["id"] == "a1"
    assert sleeps[:2] == [2.0, 3.0]  # the server's word
    # Then exponential backoff with jitter: 0.1 s doubling per attempt, times 0.5–1.
    assert len(sleeps) == 4 and 0.2 <= sleeps[2] <= 0.4 and 0.4 <= sleeps[3] <= 0.8
    keys = {r.headers["idempotency-key"] for r in seen}
    assert len(seen) == 5 and len(keys) == 1
    assert seen[0].headers["authorization"] == "Bearer fl_secret"
    # Another photo or other options: another key.
    seen2: list[httpx.Request] = []
    other = _mock_client([_created(), _created()], [], seen2)
    other.submit(b"photo", filename="shirt.jpg", pipeline="flatten")
    other.submit(b"photo2", filename="shirt.jpg", pipeline="cutout")
    assert len({r.headers["idempotency-key"] for r in seen2} | keys) == 3


def test_errors_are_typed_and_retries_end() -> None:
    client = _mock_client([_error(422, "invalid_structure", "structure.landmarks[3]")], [], [])
    with pytest.raises(InvalidRequest) as info:
        client.submit(b"x", structure={"category": "tshirt", "landmarks": []})
    assert (info.value.code, info.value.field, info.value.status) == (
        "invalid_structure", "structure.landmarks[3]", 422)
    storm = [_error(429, "rate_limited", **{"Retry-After": "1"}) for _ in range(100)]
    client = _mock_client(storm, [], [])
    client.retry_for_s = 0.5
    client._sleep = lambda s: time.sleep(0.01)
    with pytest.raises(RateLimited) as limited:
        client.status("a1")
    assert limited.value.code == "rate_limited" and limited.value.retry_after == 1.0
    with pytest.raises(TypeError, match="unknown option"):
        client.submit(b"x", colour="red")


def test_the_client_speaks_the_service_vocabulary() -> None:
    from models.pipeline import SIDE_OUTPUTS as SERVICE_OUTPUTS
    from service.batch_results import ATTRIBUTE_COLUMNS as SERVICE_COLUMNS
    from service.batch_results import attribute_cells
    from service.options import OPTION_FIELDS

    assert OPTION_NAMES == ("pipeline", *OPTION_FIELDS)
    assert SIDE_OUTPUTS == {k: v[0] for k, v in SERVICE_OUTPUTS.items()}
    assert ATTRIBUTE_COLUMNS == SERVICE_COLUMNS
    attributes = {"category": {"value": "tshirt", "confidence": 0.91234}, "sleeve_length": "short",
                  "pattern": "striped", "closure": "pull-on",
                  "colors": [{"name": "navy", "hex": "#102040", "share": 0.7},
                             {"name": "white", "hex": "#ffffff", "share": 0.25}],
                  "hint": {"text": "a striped tee", "category": "tshirt", "won": "both",
                           "why": "the hint and the photo agree"}}
    assert _attribute_cells(attributes) == list(attribute_cells(attributes))
    assert _attribute_cells(attributes)[-3:] == ["a striped tee", "tshirt", "both"]


def test_inputs_folders_zips_and_manifests(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "shirt.jpg").write_bytes(folder.encode())
    (tmp_path / "a" / "notes.txt").write_text("not a photo")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as zf:
        zf.writestr("x/dress.png", b"zip")
        zf.writestr("__MACOSX/x/._dress.png", b"junk")
    (tmp_path / "m.json").write_text(json.dumps([
        {"sku": "J-1", "image_url": "https://cdn.example.com/j1.jpg"},
        {"sku": "J-1", "image_url": "https://cdn.example.com/j1b.jpg"},
        {"sku": "J.mask", "path": "a/shirt.jpg"}]))
    out = tmp_path / "a" / "out"  # results inside an input folder are never inputs
    out.mkdir()
    (out / "shirt.png").write_bytes(b"result")
    items = discover([tmp_path / "a", tmp_path / "b", tmp_path / "more.zip", tmp_path / "m.json"],
                     exclude=out)
    assert [(i.sku, i.name, i.error and i.error[0]) for i in items] == [
        ("shirt", "shirt", None), ("shirt-2", "shirt-2", None), ("dress", "dress", None),
        ("J-1", "J-1", None), ("J-1 (https://cdn.example.com/j1b.jpg)",
                               "J-1 _https_cdn.example.com_j1b.jpg_", "duplicate_sku"),
        ("J.mask", "J_mask", None)]
    assert items[2].read() == b"zip" and items[3].url and items[5].read() == b"a"
    assert items[0].upload_name == "shirt.jpg" and items[5].upload_name == "J_mask.jpg"
    with pytest.raises(InputError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("[{")
        discover([tmp_path / "bad.json"])
