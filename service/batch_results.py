"""A batch's results as one ZIP, streamed while it is written: each finished output named
by its SKU, and manifest.csv with a row per item (its status, error code, file and the
attributes of a succeeded one).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Iterator
from typing import Any

from service.context import ServiceContext
from service.outputs import file_ext
from service.rows import BatchView, JobView

_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._ -]+")


class _Chunks(io.RawIOBase):
    """A write-only stream that hands out what was written so far (zipfile streams into it
    without seeking: sizes go in data descriptors)."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._written = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self._parts.append(bytes(b))
        self._written += len(b)
        return len(b)

    def tell(self) -> int:
        return self._written

    def take(self) -> bytes:
        data, self._parts = b"".join(self._parts), []
        return data


def _file_name(sku: str, ext: str, used: set[str]) -> str:
    base = _UNSAFE_FILE_CHARS.sub("_", sku).strip(" .")[:150] or "item"
    name, n = f"{base}.{ext}", 2
    while name in used:
        name, n = f"{base}-{n}.{ext}", n + 1
    used.add(name)
    return name


# manifest.csv's attribute columns (a succeeded job's `attributes`; empty otherwise).
# Colours as Merchant Center's `color` writes several: names joined by "/", largest first.
# The hint's columns: the text as used, the category it pointed to, and which side won
# (`attributes.hint`; empty without a hint).
ATTRIBUTE_COLUMNS = ("category", "category_confidence", "sleeve_length", "length",
                     "neckline", "pattern", "closure", "color", "color_hex", "color_share",
                     "hint", "hint_category", "hint_won")


def attribute_cells(attributes: dict[str, Any] | None) -> tuple[str, ...]:
    """One job's attributes as the cells of ATTRIBUTE_COLUMNS."""
    a = attributes or {}
    category = a.get("category") or {}
    confidence = category.get("confidence")
    colors = a.get("colors") or []
    hint = a.get("hint") or {}
    return (category.get("value") or "", "" if confidence is None else f"{confidence:.4f}",
            a.get("sleeve_length") or "", a.get("length") or "", a.get("neckline") or "",
            a.get("pattern") or "", a.get("closure") or "",
            "/".join(c["name"] for c in colors),
            "/".join(c["hex"] for c in colors),
            "/".join(f"{c['share']:.3f}" for c in colors),
            hint.get("text") or "", hint.get("category") or "", hint.get("won") or "")


def stream_results(ctx: ServiceContext, batch: BatchView, jobs: list[JobView]) -> Iterator[bytes]:
    """The finished outputs named by SKU, and manifest.csv (sku, status, error_code, file,
    then ATTRIBUTE_COLUMNS)."""
    sink = _Chunks()
    blank = attribute_cells(None)
    rows: list[tuple[str, ...]] = []
    used: set[str] = {"manifest.csv"}
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:
        for job in sorted(jobs, key=lambda j: j.sku or j.id):
            sku = job.sku or job.id
            file = ""
            if job.status == "succeeded" and job.result_blob and not job.expired_at:
                try:
                    data = ctx.blobs.get(job.result_blob)
                except KeyError:  # deleted under us: say so in the manifest
                    rows.append((sku, "expired", "asset_expired", "", *blank))
                    continue
                file = _file_name(sku, file_ext(job.options["format"]), used)
                zf.writestr(file, data)
                yield sink.take()
            cells = attribute_cells(job.attributes) if job.status == "succeeded" else blank
            rows.append((sku, job.status, job.error_code or "", file, *cells))
        for r in batch.rejected:
            rows.append((r.get("sku") or r["name"], "rejected", r["code"], "", *blank))
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(("sku", "status", "error_code", "file", *ATTRIBUTE_COLUMNS))
        writer.writerows(rows)
        zf.writestr("manifest.csv", text.getvalue(), compress_type=zipfile.ZIP_DEFLATED)
    yield sink.take()
