"""Sustained `POST /assets` rate and latency on loopback, embedded and Redis modes.

    python bench/bench_load.py [--threads 4] [--seconds 20] [--modes embedded,redis]

For each mode it starts the API alone (no worker: this measures intake — validate, store
the blob, write the job row, enqueue the id), creates an API key, and has N client threads
(httpx, one connection each) post the same 320×240 JPEG back to back for the given time.
Rate limiting stays on with a limit far above the load, so the token bucket is in the path
(in process in embedded mode, a Redis script in Redis mode).
- embedded: SQLite job store, file blobs, kombu's file transport.
- redis: Redis broker on 127.0.0.1:6379 and a fresh PostgreSQL database on 127.0.0.1:5432.
Writes bench/results/load.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import start_flatlay  # noqa: E402

from tests.support import encode, free_port, garment_photo  # noqa: E402


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLATLAY_")}
    env.update(extra, FLATLAY_LOG_LEVEL="warning", FLATLAY_RATE_LIMIT_PER_S="100000",
               FLATLAY_RATE_LIMIT_BURST="100000")
    return env


def _start_api(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    subprocess.run([sys.executable, "-m", "cli", "migrate"], cwd=REPO, env=env, check=True,
                   capture_output=True)
    return start_flatlay(["api", "--port", str(port)], env, port, log)


def _key(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-m", "cli", "keys", "create", "--tenant", "bench"],
                         cwd=REPO, env=env, check=True, capture_output=True, text=True).stdout
    return out.strip().splitlines()[-1]


def _load(url: str, key: str, photo: bytes, threads: int, seconds: float) -> dict:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as c:
            while time.monotonic() < stop_at:
                start = time.perf_counter()
                r = c.post("/assets", files={"file": ("a.jpg", photo, "image/jpeg")},
                           data={"output_size": "512"})
                elapsed = time.perf_counter() - start
                with lock:
                    latencies.append(elapsed)
                    statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

    start = time.monotonic()
    workers = [threading.Thread(target=client) for _ in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    wall = time.monotonic() - start
    ms = np.array(latencies) * 1000
    return {"requests": len(latencies), "seconds": round(wall, 2),
            "rate_per_s": round(statuses.get(202, 0) / wall, 1), "statuses": statuses,
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1)}


def _postgres_db() -> tuple[str, object]:
    import psycopg

    name = f"flatlay_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect("postgresql://postgres@127.0.0.1:5432/test", autocommit=True)
    admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", (admin, name)


def run_mode(mode: str, threads: int, seconds: float, photo: bytes) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        extra = {"FLATLAY_DATA_DIR": str(Path(tmp) / "data")}
        cleanup = None
        if mode == "redis":
            db_url, cleanup = _postgres_db()
            extra.update(FLATLAY_BROKER_URL="redis://127.0.0.1:6379/0",
                         FLATLAY_DATABASE_URL=db_url,
                         FLATLAY_QUEUE_NAME=f"flatlay.bench.{uuid.uuid4().hex[:8]}")
        env = _env(extra)
        port = free_port()
        proc = _start_api(env, port, Path(tmp) / "api.log")
        try:
            key = _key(env)
            _load(f"http://127.0.0.1:{port}", key, photo, threads, 2.0)  # warm up
            result = _load(f"http://127.0.0.1:{port}", key, photo, threads, seconds)
        finally:
            proc.terminate()
            proc.wait(30)
            if mode == "redis":
                import redis

                redis.Redis.from_url("redis://127.0.0.1:6379/0").delete(
                    extra["FLATLAY_QUEUE_NAME"])
                admin, name = cleanup  # type: ignore[misc]
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                admin.close()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--modes", default="embedded,redis")
    args = parser.parse_args()
    photo = encode(garment_photo(320, 240)[0], "JPEG", quality=90)
    results = {"threads": args.threads, "seconds": args.seconds, "photo_bytes": len(photo),
               "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "modes": {}}
    for mode in args.modes.split(","):
        results["modes"][mode] = run_mode(mode, args.threads, args.seconds, photo)
        print(mode, results["modes"][mode], flush=True)
    out = REPO / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "load.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Sustained POST /assets on loopback", "",
        f"`python bench/bench_load.py --threads {args.threads} --seconds {args.seconds:g}`: "
        f"{args.threads} client threads posting a {len(photo)}-byte JPEG back to back for "
        f"{args.seconds:g} s against `flatlay api` alone (intake only: validate, store, write "
        f"the job row, enqueue the id; no worker competes for the CPU). "
        f"Machine: {results['machine']}.", "",
        "| mode | requests | accepted/s | p50 ms | p99 ms | max ms | statuses |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, r in results["modes"].items():
        lines.append(f"| {mode} | {r['requests']} | {r['rate_per_s']} | {r['p50_ms']} | "
                     f"{r['p99_ms']} | {r['max_ms']} | {r['statuses']} |")
    (out / "load.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
