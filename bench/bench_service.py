"""Time from `POST /assets` to `succeeded`, one photo at a time, against a real service.

    python bench/bench_service.py [--n 20] [--pipeline cutout] [--size 1024] [--url URL]

Without --url it starts `flatlay serve` (embedded mode) in a temporary data directory.
Photos are garment-world test-split wild photos at 512 px (JPEG). Prints a table and writes
bench/results/service-latency-<pipeline>.{md,json}.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import start_flatlay  # noqa: E402

from models.garments import SPLITS, generate  # noqa: E402


def _photo(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(generate(seed, size=512).wild_image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _start(data_dir: Path, port: int) -> subprocess.Popen:
    # Loopback demo mode (no API key); no rate limit, since the bench polls quickly.
    env = {**os.environ, "FLATLAY_AUTH_ENABLED": "false", "FLATLAY_RATE_LIMIT_PER_S": "0"}
    return start_flatlay(["serve", "--port", str(port), "--data-dir", str(data_dir)], env, port)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20)
    ap.add_argument("--pipeline", default="flatten")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--url", default=None)
    ap.add_argument("--port", type=int, default=8799)
    args = ap.parse_args()

    photos = [_photo(SPLITS["test"][0] + i) for i in range(args.n)]
    proc = None
    url = args.url
    if url is None:
        tmp = Path(tempfile.mkdtemp(prefix="flatlay-bench-"))
        proc = _start(tmp / "data", args.port)
        url = f"http://127.0.0.1:{args.port}"
    latencies, stages = [], []
    try:
        with httpx.Client(base_url=url, timeout=60) as c:
            for photo in tqdm(photos, desc=f"{args.pipeline} jobs"):
                t0 = time.perf_counter()
                r = c.post("/assets", files={"file": ("p.jpg", photo, "image/jpeg")},
                           data={"pipeline": args.pipeline, "output_size": str(args.size)})
                r.raise_for_status()
                job = r.json()["id"]
                while True:
                    r = c.get(f"/assets/{job}")
                    if r.status_code == 429:  # polling too fast for the rate limit
                        time.sleep(float(r.headers.get("retry-after", "1")))
                        continue
                    r.raise_for_status()
                    status = r.json()
                    if status["status"] in ("succeeded", "failed", "canceled"):
                        break
                    time.sleep(0.02)
                latencies.append(time.perf_counter() - t0)
                if status["status"] != "succeeded":
                    raise SystemExit(f"job {job} ended {status['status']}: {status['error']}")
                stages.append(status["timings"])
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)

    lat = np.array(latencies) * 1000
    stage_p50 = {k: round(float(np.median([s[k] for s in stages])) * 1000, 1) for k in stages[0]}
    result = {
        "pipeline": args.pipeline, "n": args.n, "output_size": args.size, "mode":
        "embedded" if args.url is None else args.url,
        "post_to_succeeded_ms": {"p50": round(float(np.percentile(lat, 50)), 1),
                                 "p90": round(float(np.percentile(lat, 90)), 1),
                                 "max": round(float(lat.max()), 1)},
        "worker_stage_p50_ms": stage_p50,
        "machine": f"{platform.machine()}, {platform.python_version()}",
    }
    rows = [("POST → succeeded p50 (ms)", result["post_to_succeeded_ms"]["p50"]),
            ("POST → succeeded p90 (ms)", result["post_to_succeeded_ms"]["p90"]),
            ("POST → succeeded max (ms)", result["post_to_succeeded_ms"]["max"])]
    rows += [(f"worker stage {k} p50 (ms)", v) for k, v in stage_p50.items()]
    table = "\n".join(["| metric | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])
    print(table)
    out = REPO / "bench" / "results" / f"service-latency-{args.pipeline}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    cmd = (f"python bench/bench_service.py --n {args.n} --pipeline {args.pipeline} "
           f"--size {args.size}")
    out.with_suffix(".md").write_text(
        f"# Service latency, {args.pipeline}, embedded mode\n\n`{cmd}`\n\n"
        f"{args.n} garment-world test photos (512 px JPEG), one at a time, output "
        f"{args.size} px PNG.\n\n{table}\n"
    )


if __name__ == "__main__":
    main()
