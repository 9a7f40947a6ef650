"""The benchmarks' library side (`flatlay bench …`): each module scores one thing against the
garment world's truth. What they share: which seeds a split's first n are, and how a report
is written."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def split_seeds(split: str, n: int) -> range:
    """The first n seeds of `split`; ValueError for an unknown split or an n it has not."""
    from models.garments import SPLITS

    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; available: {', '.join(SPLITS)}")
    start, stop = SPLITS[split]
    if not 1 <= n <= stop - start:
        raise ValueError(f"n must be in 1..{stop - start} for split {split}, got {n}")
    return range(start, start + n)


def write_json_md(result: dict[str, Any], markdown: str, out_dir: str | Path, stem: str
                  ) -> dict[str, Path]:
    """out_dir/stem.json (the result, strict JSON) and out_dir/stem.md; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    paths["json"].write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    paths["md"].write_text(markdown)
    return paths
