"""`flatlay submit` against a naive loop of single posts: N photos, `cutout`, on loopback.

Starts `flatlay serve` (embedded: SQLite, file queue, one worker) in a temporary folder with
API keys off and no rate limit, writes N garment-world test photos (256 px JPEG), then
times the same work two ways on the same server:

- naive loop: for each photo, `POST /assets`, poll `GET /assets/{id}` every 0.1 s until it
  finishes, `GET …/result` and write it (what a catalog team writes first);
- flatlay submit: the command, as a user runs it (batches, polling per batch, parallel
  downloads, manifest.csv, state file).

Prints a table and writes OUT/client.{md,json} (default bench/results).

    python bench/bench_client.py [--n 500] [--size 512] [--batch-size 50] [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from tqdm import tqdm

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from harness import start_flatlay, write_variants  # noqa: E402

from models.garments import SPLITS, generate  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled")


def naive_loop(url: str, photos: list[Path], out: Path, size: int) -> tuple[float, int]:
    """(wall seconds, failures): one photo at a time, start to result."""
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    t0 = time.perf_counter()
    with httpx.Client(base_url=url, timeout=120) as c:
        for photo in tqdm(photos, desc="naive loop", unit="item"):
            r = c.post("/assets", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                       data={"pipeline": "cutout", "output_size": str(size)})
            r.raise_for_status()
            job = r.json()["id"]
            while (status := c.get(f"/assets/{job}").json())["status"] not in TERMINAL:
                time.sleep(0.1)
            if status["status"] != "succeeded":
                failed += 1
                continue
            (out / f"{photo.stem}.png").write_bytes(c.get(f"/assets/{job}/result").content)
    return time.perf_counter() - t0, failed


def flatlay_submit(url: str, inputs: Path, out: Path, size: int,
                   batch_size: int) -> tuple[float, int]:
    """(wall seconds, failures) of the command; failures read from its manifest.csv."""
    import csv

    t0 = time.perf_counter()
    run = subprocess.run(
        [sys.executable, "-m", "cli", "submit", str(inputs), "--url", url, "-o", str(out),
         "--pipeline", "cutout", "--size", str(size), "--batch-size", str(batch_size)],
        cwd=REPO, env={k: v for k, v in os.environ.items() if not k.startswith("FLATLAY_")})
    wall = time.perf_counter() - t0
    with (out / "manifest.csv").open(newline="") as fh:
        failed = sum(row["status"] != "succeeded" for row in csv.DictReader(fh))
    if run.returncode not in (0, 1):
        raise SystemExit(f"flatlay submit exited {run.returncode}")
    return wall, failed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500, help="photos")
    ap.add_argument("--size", type=int, default=512, help="output canvas side, px")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--port", type=int, default=8797)
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results",
                    help="where client.{md,json} go")
    args = ap.parse_args()
    if args.n < 1:
        raise SystemExit("--n must be at least 1")

    tmp = Path(tempfile.mkdtemp(prefix="flatlay-bench-client-"))
    inputs = tmp / "photos"
    inputs.mkdir()
    start = SPLITS["test"][0]
    photos = []
    for seed in tqdm(range(start, start + args.n), desc="photos", unit="photo"):
        path = inputs / f"SKU-{seed}.jpg"
        path.write_bytes(generate(seed, size=256).wild_jpeg)
        photos.append(path)

    env = {**os.environ, "FLATLAY_AUTH_ENABLED": "false", "FLATLAY_RATE_LIMIT_PER_S": "0",
           "FLATLAY_PRELOAD_PIPELINES": "cutout"}
    proc = start_flatlay(["serve", "--port", str(args.port), "--data-dir", str(tmp / "data")],
                         env, args.port, log=tmp / "serve.log")
    url = f"http://127.0.0.1:{args.port}"
    try:
        # One job first, so neither variant pays for the worker's first-job warm-up.
        naive_loop(url, photos[:1], tmp / "warm", args.size)
        naive_wall, naive_failed = naive_loop(url, photos, tmp / "naive", args.size)
        submit_wall, submit_failed = flatlay_submit(url, inputs, tmp / "submit", args.size,
                                                    args.batch_size)
    finally:
        proc.terminate()
        proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)

    rows = [
        {"variant": "naive loop (post, poll 0.1 s, download; one at a time)", "items": args.n,
         "wall_s": naive_wall, "items_per_s": args.n / naive_wall, "failed": naive_failed},
        {"variant": f"flatlay submit (batches of {args.batch_size})", "items": args.n,
         "wall_s": submit_wall, "items_per_s": args.n / submit_wall, "failed": submit_failed},
    ]
    ratio = naive_wall / submit_wall
    intro = [
        "# flatlay submit vs a naive loop of single posts", "",
        f"`python bench/bench_client.py --n {args.n} --size {args.size} --batch-size "
        f"{args.batch_size}`", "",
        f"{args.n} garment-world test photos (256 px JPEG), pipeline `cutout`, output "
        f"{args.size} px PNG; `flatlay serve` on loopback (embedded: SQLite, file queue, one "
        f"worker), keys off, no rate limit; {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}. The command's time includes its start, its "
        "state file, manifest.csv and the summary.", "",
        f"**flatlay submit is {ratio:.2f}× the naive loop's throughput.**", "",
    ]
    for row in rows:
        row["ratio_to_naive"] = naive_wall / row["wall_s"]
    text = write_variants(args.out, "client", intro, rows, [
        ("items", "items", "d"), ("wall_s", "wall s", ".1f"),
        ("items_per_s", "items/s", ".2f"), ("ratio_to_naive", "× naive", ".2f"),
        ("failed", "failed", "d")])
    print(text)
    print(f"wrote {args.out / 'client.md'} and {args.out / 'client.json'}")


if __name__ == "__main__":
    main()
