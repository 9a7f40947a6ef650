"""What the benchmark scripts share: starting a real `flatlay` process and waiting for it, and
writing a table of variants as markdown and JSON under bench/results/."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def start_flatlay(args: list[str], env: dict[str, str], port: int, log: Path | None = None,
                  timeout_s: float = 60.0) -> subprocess.Popen:
    """Run `python -m cli ARGS` from the repo and return once /readyz answers 200."""
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    tail = log.read_text()[-2000:] if log else ""
    raise RuntimeError(f"flatlay {' '.join(args)} did not become ready: {tail}")


def write_variants(out: Path, stem: str, intro: list[str], rows: list[dict],
                   columns: list[tuple[str, str, str]]) -> str:
    """rows (each with a "variant") as a markdown table after `intro` lines, to
    out/stem.md, and as JSON to out/stem.json; columns are (key, label, format spec), a
    missing value shows as —. Returns the markdown."""
    lines = [*intro, "| variant | " + " | ".join(label for _, label, _ in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for r in rows:
        cells = ["—" if r.get(k) is None else format(r[k], spec) for k, _, spec in columns]
        lines.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.md").write_text(text)
    (out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    return text
