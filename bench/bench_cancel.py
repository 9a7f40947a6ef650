"""Cancel → next job: how soon a canceled running `flatten` job frees its worker.

Starts `flatlay serve` (embedded, one worker) in a temporary folder, then per round: a
`flatten` job, a `cutout` job waiting behind it, a cancel of the first once it has entered
the stage asked for; the time from the cancel's answer to the second job's `started_at` is
the worker's release. A finished `flatten` job's stage timings are printed for scale: the
release should take at most the stage in hand.

    python bench/bench_cancel.py --rounds 8 [--size 1024]
"""

from __future__ import annotations

import argparse
import datetime as dt
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import start_flatlay  # noqa: E402

from models.garments import SPLITS, generate  # noqa: E402

STAGES = ("parse", "embed", "retrieve", "warp", "compose")


def _photo(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(generate(seed, size=512).wild_image).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _submit(c: httpx.Client, photo: bytes, pipeline: str, size: int) -> str:
    r = c.post("/assets", files={"file": ("p.jpg", photo, "image/jpeg")},
               data={"pipeline": pipeline, "output_size": str(size)})
    r.raise_for_status()
    return r.json()["id"]


def _wait(c: httpx.Client, job: str, done: tuple[str, ...], stage: str | None = None,
          timeout: float = 300.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = c.get(f"/assets/{job}").json()
        if status["status"] in done or (stage and status["progress"]["stage"] == stage):
            return status
        time.sleep(0.02)
    raise TimeoutError(f"job {job}: {status}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--port", type=int, default=8797)
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="flatlay-cancel-"))
    env = {**os.environ, "FLATLAY_AUTH_ENABLED": "false", "FLATLAY_RATE_LIMIT_PER_S": "0",
           "FLATLAY_PRELOAD_PIPELINES": "flatten,cutout"}
    proc = start_flatlay(["serve", "--port", str(args.port), "--data-dir", str(tmp / "data")],
                         env, args.port, log=tmp / "serve.log", timeout_s=300)
    ended = ("succeeded", "failed", "canceled")
    rows = []
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{args.port}", timeout=60) as c:
            photo = _photo(SPLITS["test"][0])
            full = _wait(c, _submit(c, photo, "flatten", args.size), ended)
            print("flatten stage seconds:",
                  {k: round(v, 3) for k, v in full["timings"].items()})
            for i in range(args.rounds):
                at = STAGES[i % 4]  # cancel in parse, embed, retrieve or warp
                job = _submit(c, _photo(SPLITS["test"][0] + 1 + i), "flatten", args.size)
                nxt = _submit(c, photo, "cutout", 256)
                seen = _wait(c, job, ended, stage=at)
                r = c.post(f"/assets/{job}/cancel")
                canceled_at = time.time()
                after = _wait(c, nxt, ended)
                stopped = c.get(f"/assets/{job}").json()
                started = dt.datetime.fromisoformat(after["started_at"]).timestamp()
                # A job may finish between the poll and the cancel (409): not a release.
                status = r.json()["status"] if r.status_code == 200 else "too late"
                rows.append((seen["progress"]["stage"] or "-", status,
                             stopped["progress"]["stage"] or "-", started - canceled_at))
    finally:
        proc.terminate()
        proc.wait(60)
    print(f"\n{'in stage':<10} {'cancel':<9} {'stopped before':<15} cancel → next job (s)")
    for stage, status, stopped, seconds in rows:
        print(f"{stage:<10} {status:<9} {stopped:<15} {seconds:.3f}")
    waits = [r[3] for r in rows if r[1] == "canceled"]
    print(f"\nmedian {statistics.median(waits):.3f} s, max {max(waits):.3f} s "
          f"over {len(waits)} canceled rounds ({args.size}² canvas)")


if __name__ == "__main__":
    main()
