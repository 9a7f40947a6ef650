"""Request bodies at the edge, against a real `flatlay api` (uvicorn) on loopback: a body over
its route's bound is refused before it is read, a trickled one is cut off, an idle keep-alive
connection is closed, and uploads within the bound still go through."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
from fastapi.testclient import TestClient

from models.io import ImageInfo, ImageLimits
from service.app import create_app
from service.body_guard import FORM_ALLOWANCE
from service.settings import Settings
from service.store import migrate
from tests.raw_http import chunked, connect, read_response, request_head, send_until_answered
from tests.support import ServiceProcesses, encode, free_port, garment_photo

pytestmark = pytest.mark.slow

MAX_UPLOAD = 1_000_000
MAX_BATCH = 3_000_000
BODY_TIMEOUT_S = 2.0
MULTIPART = {"Content-Type": "multipart/form-data; boundary=xyz"}
# A file part's opening: what follows is its content, as far as the parser can tell.
PART_HEAD = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n'
             b"Content-Type: image/jpeg\r\n\r\n")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcesses]:
    root = tmp_path_factory.mktemp("edge")
    port = free_port()
    env = {"FLATLAY_DATA_DIR": str(root / "data"), "FLATLAY_AUTH_ENABLED": "false",
           "FLATLAY_RATE_LIMIT_PER_S": "0", "FLATLAY_MAX_UPLOAD_BYTES": str(MAX_UPLOAD),
           "FLATLAY_MAX_BATCH_BYTES": str(MAX_BATCH), "FLATLAY_MAX_MANIFEST_BYTES": "500000",
           "FLATLAY_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S), "FLATLAY_KEEP_ALIVE_TIMEOUT_S": "1",
           "FLATLAY_INGEST_CONCURRENCY": "2"}
    svc = ServiceProcesses.start([["api", "--port", str(port)]], env=env, port=port,
                                 log_dir=root)
    yield svc
    svc.stop()


def _port(api: ServiceProcesses) -> int:
    return urlsplit(api.base_url).port or 80


@pytest.mark.parametrize("path, bound", [("/assets", MAX_UPLOAD + FORM_ALLOWANCE),
                                         ("/batches", MAX_BATCH + FORM_ALLOWANCE),
                                         ("/structures", Settings().max_json_bytes)])
def test_a_declared_length_over_the_bound_is_refused_before_the_body(
    api: ServiceProcesses, path: str, bound: int
) -> None:
    with connect(_port(api)) as sock:
        # Headers only: a server that waited for the body would never answer.
        sock.sendall(request_head("POST", path, {**MULTIPART, "Content-Length": str(bound + 1),
                                                 "Expect": "100-continue"}))
        start = time.monotonic()
        r = read_response(sock, timeout=5)
    assert r.lines[0].startswith("HTTP/1.1 413"), r.lines  # no `100 Continue` first
    assert r.json()["error"]["code"] == "payload_too_large"
    assert f"bound of {bound} bytes" in r.json()["error"]["message"]
    assert time.monotonic() - start < 2 and r.closed


def test_a_chunked_body_over_the_bound_is_cut_off_without_reading_it(
    api: ServiceProcesses,
) -> None:
    total = 96 * 1024 * 1024
    part = b"\0" * 65536
    with connect(_port(api)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 256 * 1024)
        sock.sendall(request_head("POST", "/assets", {**MULTIPART,
                                                      "Transfer-Encoding": "chunked"}))
        sent, hung_up = send_until_answered(
            sock, chunked([PART_HEAD, *[part] * (total // len(part))]))
        r = read_response(sock, timeout=5)
    assert r.status == 413 and r.json()["error"]["code"] == "payload_too_large", r.body
    # The bound plus what the socket buffers hold (the server's may grow to tcp_rmem's 32 MB
    # cap); never the whole body, which has no end: a server that read on would never answer.
    assert sent < total // 2, (sent, hung_up)
    assert r.closed


def test_a_trickled_body_is_cut_off_within_the_timeout(api: ServiceProcesses) -> None:
    with connect(_port(api)) as sock:
        sock.sendall(request_head("POST", "/assets", {**MULTIPART, "Content-Length": "100000"})
                     + PART_HEAD)
        start = time.monotonic()
        # 40 bytes/s, for at most 20 s: far below any real upload.
        sent, _ = send_until_answered(sock, (b"x" * 10 for _ in range(80)), pause_s=0.25)
        r = read_response(sock, timeout=5)
        elapsed = time.monotonic() - start
    assert r.status == 408 and r.json()["error"]["code"] == "request_timeout", r.body
    assert BODY_TIMEOUT_S - 0.5 < elapsed < BODY_TIMEOUT_S + 3, elapsed
    assert sent < 800 and r.closed


def test_an_idle_keep_alive_connection_is_closed(api: ServiceProcesses) -> None:
    with connect(_port(api)) as sock:
        sock.sendall(request_head("GET", "/healthz", {}))
        r = read_response(sock)  # then waits 2 s for the server to hang up
    # FLATLAY_KEEP_ALIVE_TIMEOUT_S=1 here; uvicorn's own default (5 s) would keep it open.
    assert r.status == 200 and r.closed


def test_uploads_within_the_bound_still_go_through(api: ServiceProcesses) -> None:
    photo = encode(garment_photo(320, 240)[0], "JPEG")
    with api.client() as c:
        r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")})
        assert r.status_code == 202, r.text
        # Chunked (no Content-Length) and counted as it comes: still taken.
        boundary = "b0undary"
        body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
                f"filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\n").encode() + photo + \
            f"\r\n--{boundary}--\r\n".encode()
        r = c.post("/assets", content=iter([body[:1000], body[1000:]]),
                   headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        assert r.status_code == 202, r.text
        # Over the upload limit but within the route's bound: the route's own check answers.
        big = b"\xff\xd8\xff" + b"\0" * MAX_UPLOAD
        r = c.post("/assets", files={"file": ("big.jpg", big, "image/jpeg")})
        assert r.status_code == 413 and r.json()["error"]["code"] == "file_too_large"



def _rss(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0]) * 1024


def test_many_pixel_heavy_uploads_at_once_keep_the_memory_bounded(api: ServiceProcesses) -> None:
    # 16 at once of a small file that decodes to 40 MB (10 MP): without the ingest slots all
    # 16 decodes are held at once; without the fixed mmap threshold freed decodes stay mapped.
    photo = encode(np.full((2500, 4000, 3), 200, np.uint8), "PNG")
    assert len(photo) < MAX_UPLOAD
    pid = api.procs[0].pid
    with api.client() as c:
        def post(_: int) -> int:
            return c.post("/assets", files={"file": ("a.png", photo, "image/png")}).status_code

        assert post(0) == 202  # warm: decoders loaded, a thread has run one
        baseline, peak, done = _rss(pid), 0, threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, _rss(pid))
                done.wait(0.01)

        sampler = threading.Thread(target=sample)
        sampler.start()
        with ThreadPoolExecutor(16) as pool:
            codes = list(pool.map(post, range(16)))
        time.sleep(0.3)
        done.set()
        sampler.join()
    assert codes == [202] * 16
    grown = (peak - baseline) / 2**20
    print(f"\nRSS baseline {baseline / 2**20:.0f} MB, peak {peak / 2**20:.0f} MB (+{grown:.0f})")
    assert grown < 200, grown  # 2 slots x 40 MB and their spools, not 16 x 40 MB


def test_at_most_ingest_concurrency_uploads_are_in_memory_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In process: count the decodes running at once while 12 uploads arrive together.
    import service.assets as assets_module

    running, most, lock = 0, 0, threading.Lock()
    real = assets_module.validate_image

    def slow_validate(data: bytes, limits: ImageLimits) -> ImageInfo:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.2)
        with lock:
            running -= 1
        return real(data, limits)

    monkeypatch.setattr(assets_module, "validate_image", slow_validate)
    s = Settings(data_dir=tmp_path / "data", auth_enabled=False, rate_limit_per_s=0,
                 ingest_concurrency=2)
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    photo = encode(garment_photo(320, 240)[0], "JPEG")
    with TestClient(create_app(s)) as c, ThreadPoolExecutor(12) as pool:
        codes = list(pool.map(lambda _: c.post("/assets", files={
            "file": ("a.jpg", photo, "image/jpeg")}).status_code, range(12)))
    assert codes == [202] * 12
    assert most == 2
