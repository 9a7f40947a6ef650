"""The API's memory under many large concurrent uploads, taken and refused.

    python bench/bench_uploads.py [--uploads 50] [--mb 20]

Starts `flatlay api` alone (embedded mode, auth off, loopback, no worker: this measures the
API process only) in a temporary data directory, per scenario, and has N client threads
(raw sockets, so a refused client stops sending the moment it is answered, as curl does)
post one M MB upload each, all at once, while a sampler reads the API process's VmRSS from
/proc every 20 ms. Scenarios:
- taken: a valid M MB PNG (stored, uncompressed) within FLATLAY_MAX_UPLOAD_BYTES (25 MB):
  spooled, validated (a full decode), stored as a blob, queued;
- refused, Content-Length: FLATLAY_MAX_UPLOAD_BYTES of half the upload (10 MB), so the
  declared length is over the bound: 413 before the body is read;
- refused, chunked: the same limit, no Content-Length: 413 once the bytes received pass it.
Reports baseline RSS (after a warm-up upload), sampled peak, the kernel's high-water mark
(VmHWM), peak minus baseline, answers by status and the body bytes clients got onto the wire.
Writes bench/results/uploads.{md,json}.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import start_flatlay  # noqa: E402

from tests.raw_http import (  # noqa: E402
    chunked,
    connect,
    read_response,
    request_head,
    send_until_answered,
)
from tests.support import free_port  # noqa: E402

MB = 1024 * 1024
BOUNDARY = "benchboundary"
CHUNK = 256 * 1024


def _png(mb: int) -> bytes:
    """Noise at compress_level 0: a valid PNG of about `mb` MB that costs nothing to encode."""
    side = int((mb * MB / 3) ** 0.5)
    rgb = np.random.default_rng(0).integers(0, 256, (side, side, 3), np.uint8)
    path = Path(tempfile.gettempdir()) / f"flatlay-bench-{mb}mb.png"
    Image.fromarray(rgb).save(path, "PNG", compress_level=0)
    return path.read_bytes()


def _multipart(photo: bytes) -> tuple[bytes, bytes]:
    head = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"big.png\"\r\nContent-Type: image/png\r\n\r\n").encode()
    return head, f"\r\n--{BOUNDARY}--\r\n".encode()


def _vm(pid: int, field: str) -> int:
    """A /proc/<pid>/status field in bytes (VmRSS, VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


class Sampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s, self.peak = pid, every_s, 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _vm(self.pid, "VmRSS"))
            self.stop.wait(self.every_s)


def _upload(port: int, photo: bytes, mode: str, out: list, i: int) -> None:
    head, tail = _multipart(photo)
    body_len = len(head) + len(photo) + len(tail)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    view = memoryview(photo)  # slices of one shared copy, not 50 copies in this process
    pieces: Iterable[bytes] = (head, *(view[o:o + CHUNK] for o in range(0, len(photo), CHUNK)),
                               tail)
    if mode == "chunked":
        headers["Transfer-Encoding"] = "chunked"
        pieces = itertools.chain(chunked(bytes(p) for p in pieces), [b"0\r\n\r\n"])
    else:
        headers["Content-Length"] = str(body_len)
    try:
        with connect(port, timeout=120) as sock:
            sock.sendall(request_head("POST", "/assets", headers))
            sent, _ = send_until_answered(sock, pieces)
            r = read_response(sock, timeout=120)
            out[i] = {"status": r.status, "code": r.json().get("error", {}).get("code"),
                      "sent": sent}
    except OSError as exc:
        out[i] = {"status": type(exc).__name__, "code": None, "sent": None}


def run(scenario: str, uploads: int, photo: bytes, max_upload: int) -> dict:
    mode = "chunked" if scenario == "refused, chunked" else "length"
    with tempfile.TemporaryDirectory() as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLATLAY_")}
        env.update(FLATLAY_DATA_DIR=str(Path(tmp) / "data"), FLATLAY_AUTH_ENABLED="false",
                   FLATLAY_RATE_LIMIT_PER_S="0", FLATLAY_LOG_LEVEL="warning",
                   FLATLAY_DEFAULT_PIPELINE="cutout", FLATLAY_MAX_UPLOAD_BYTES=str(max_upload),
                   OMP_NUM_THREADS="1")
        port = free_port()
        proc = start_flatlay(["api", "--port", str(port)], env, port, Path(tmp) / "api.log")
        try:
            warm = [None]
            _upload(port, photo, mode, warm, 0)  # every code path imported and touched once
            time.sleep(0.5)
            baseline = _vm(proc.pid, "VmRSS")
            sampler = Sampler(proc.pid)
            sampler.start()
            answers: list = [None] * uploads
            threads = [threading.Thread(target=_upload, args=(port, photo, mode, answers, i))
                       for i in range(uploads)]
            start = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - start
            time.sleep(0.3)
            sampler.stop.set()
            sampler.join()
            hwm = _vm(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    statuses: dict[str, int] = {}
    for a in answers:
        label = f"{a['status']} {a['code']}" if a["code"] else str(a["status"])
        statuses[label] = statuses.get(label, 0) + 1
    sent = [a["sent"] for a in answers if a["sent"] is not None]
    return {"scenario": scenario, "max_upload_bytes": max_upload, "uploads": uploads,
            "answered": sum(isinstance(a["status"], int) for a in answers),
            "statuses": statuses, "seconds": round(wall, 1),
            "baseline_rss_mb": round(baseline / MB, 1), "peak_rss_mb": round(sampler.peak / MB, 1),
            "hwm_mb": round(hwm / MB, 1),
            "peak_minus_baseline_mb": round((max(sampler.peak, hwm) - baseline) / MB, 1),
            "sent_mb_max": round(max(sent) / MB, 1) if sent else None,
            "sent_mb_total": round(sum(sent) / MB, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=50)
    parser.add_argument("--mb", type=int, default=20)
    args = parser.parse_args()
    photo = _png(args.mb)
    results = {"uploads": args.uploads, "photo_bytes": len(photo),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "scenarios": []}
    # Taken within the default limit (25 MB); refused under a limit of half the upload.
    taken = max(25 * MB, len(photo) + MB)
    for scenario, limit in (("taken", taken), ("refused, Content-Length", args.mb * MB // 2),
                            ("refused, chunked", args.mb * MB // 2)):
        r = run(scenario, args.uploads, photo, limit)
        results["scenarios"].append(r)
        print(json.dumps(r), flush=True)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "uploads.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# The API's memory under concurrent large uploads", "",
        f"`python bench/bench_uploads.py --uploads {args.uploads} --mb {args.mb}`: "
        f"{args.uploads} clients post one {len(photo)}-byte PNG each, all at once, to "
        "`flatlay api` alone (embedded, auth off, loopback, no worker); the API process's "
        "VmRSS is sampled every 20 ms. Baseline: after one warm-up upload. Peak − baseline "
        "uses the higher of the sampled peak and VmHWM. `sent`: body bytes a client got onto "
        "the wire before the answer; the kernel's socket buffers hold most of what a refused "
        "client sent, the API reads at most the route's bound (FLATLAY_MAX_UPLOAD_BYTES + 1 MiB). "
        f"Machine: {results['machine']}.", "",
        "| scenario | MAX_UPLOAD_BYTES | answered | statuses | s | baseline MB | peak MB | "
        "VmHWM MB | peak − baseline MB | sent MB, max per client | sent MB, all |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["scenarios"]:
        lines.append(
            f"| {r['scenario']} | {r['max_upload_bytes']} | {r['answered']}/{r['uploads']} | "
            f"{', '.join(f'{k}: {v}' for k, v in r['statuses'].items())} | {r['seconds']} | "
            f"{r['baseline_rss_mb']} | {r['peak_rss_mb']} | {r['hwm_mb']} | "
            f"{r['peak_minus_baseline_mb']} | {r['sent_mb_max']} | {r['sent_mb_total']} |")
    (out / "uploads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
