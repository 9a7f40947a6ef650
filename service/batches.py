"""Batches: many photos in one request (files, one ZIP, or a manifest of SKU + image URL),
their status per SKU, and their results as one streamed ZIP.

A member that cannot be taken (a zip-slip name, a zip bomb, a nested archive, a file that
is not a photo, a bad manifest row) is rejected with a code and a reason; the rest of the
batch goes on. Accepted members become ordinary jobs (jobs.batch_id, jobs.sku), stored with
their batch in one transaction and enqueued by id like any asset.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Annotated, Any

from fastapi import APIRouter, File, Form, Response, UploadFile
from fastapi.responses import StreamingResponse

from models.io import ImageLimits, IngestError, validate_image
from service.context import ServiceContext
from service.deps import (
    Ctx,
    IdempotencyKey,
    Key,
    replayed_or_conflict,
    request_fingerprint,
    request_webhook_target,
)
from service.errors import ApiError, error_responses
from service.fetch import AllowList, FetchError, check_public_url
from service.options import (
    OptionForm,
    override_options,
    resolve_options,
)
from service.rows import BatchView, Idempotency, IdempotencyConflict, JobView, new_job_row
from service.schemas import (
    BatchCounts,
    BatchCreated,
    BatchItem,
    BatchLinks,
    BatchRejection,
    BatchStatus,
    JobError,
)
from service.store import new_job_id

log = logging.getLogger("flatlay.batches")

# A member that inflates more than this many times (and to more than 1 MB) is a zip bomb.
MAX_COMPRESSION_RATIO = 100
_BOMB_MIN_BYTES = 1024 * 1024
_ARCHIVE_SUFFIXES = frozenset({".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz",
                               ".zst", ".jar", ".apk"})
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"\x1f\x8b", b"BZh",
                  b"7z\xbc\xaf\x27\x1c", b"Rar!", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_FILE_CHARS = re.compile(r"[^A-Za-z0-9._ -]+")
_EXT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass
class Member:
    """An accepted item: photo bytes (files, ZIP) or a URL the worker fetches (manifest)."""

    name: str
    sku: str
    pipeline: str
    options: dict[str, Any]
    data: bytes | None = None
    info: Any = None  # models.io.ImageInfo of `data`
    url: str | None = None


@dataclass
class Unpacked:
    members: list[Member] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    # Files and ZIP members are named by their file name; manifest rows by their own SKU.
    sku_from_name: bool = True
    _skus: set[str] = field(default_factory=set)

    def reject(self, name: str, code: str, message: str, sku: str | None = None) -> None:
        if sku is None and self.sku_from_name:
            sku = _sku_of(name)
        self.rejected.append({"name": name[:300], "sku": sku, "code": code,
                              "message": message[:500]})

    def unique_sku(self, wanted: str) -> str:
        sku, n = wanted, 2
        while sku in self._skus:
            sku, n = f"{wanted}-{n}", n + 1
        self._skus.add(sku)
        return sku


def _sku_of(name: str) -> str:
    stem = PurePosixPath(name.replace("\\", "/")).stem
    return _CONTROL.sub("", stem).strip()[:200] or "item"


def _unsafe_name(name: str) -> str | None:
    """Why a member name must not be used (zip-slip and friends), or None."""
    if _CONTROL.search(name):
        return "the name contains control characters"
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "the name is an absolute path"
    if any(part == ".." for part in re.split(r"[\\/]", name)):
        return "the name climbs out of the archive with '..'"
    return None


def _os_metadata(name: str) -> bool:
    # macOS resource forks and Finder files ride along in archives; they are not members.
    base = name.rsplit("/", 1)[-1]
    return name.startswith("__MACOSX/") or base.startswith("._") or base in (".DS_Store",
                                                                             "Thumbs.db")


def _is_archive(name: str, data: bytes) -> bool:
    return (PurePosixPath(name.lower()).suffix in _ARCHIVE_SUFFIXES
            or data.startswith(_ARCHIVE_MAGIC) or data[257:262] == b"ustar")


def _take_photo(out: Unpacked, name: str, data: bytes, limits: ImageLimits, pipeline: str,
                options: dict[str, Any]) -> None:
    if _is_archive(name, data):
        out.reject(name, "nested_archive", "archives inside a batch are not unpacked")
        return
    try:
        info = validate_image(data, limits)
    except IngestError as exc:
        out.reject(name, exc.code, exc.message)
        return
    out.members.append(Member(name=name, sku=out.unique_sku(_sku_of(name)), pipeline=pipeline,
                              options=options, data=data, info=info))


def unpack_files(files: list[tuple[str, bytes]], limits: ImageLimits, pipeline: str,
                 options: dict[str, Any]) -> Unpacked:
    out = Unpacked()
    for name, data in files:
        if len(data) > limits.max_bytes:
            out.reject(name, "file_too_large", f"larger than {limits.max_bytes} bytes")
            continue
        _take_photo(out, name, data, limits, pipeline, options)
    return out


def unpack_zip(archive: IO[bytes], limits: ImageLimits, max_items: int, max_total: int,
               pipeline: str, options: dict[str, Any]) -> Unpacked:
    """The photos of a ZIP; every other member is rejected with its reason."""
    try:
        zf = zipfile.ZipFile(archive)
        members = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise ApiError("corrupt_archive", f"not a readable ZIP archive: {exc}", "archive") from None
    out, total, count = Unpacked(), 0, 0
    for info in members:
        name = info.filename
        if info.is_dir() or _os_metadata(name):
            continue
        if reason := _unsafe_name(name):
            out.reject(name, "unsafe_member_name", reason)
            continue
        count += 1
        if count > max_items:
            out.reject(name, "too_many_items", f"a batch holds at most {max_items} items")
            continue
        if info.flag_bits & 0x1:
            out.reject(name, "encrypted_member", "encrypted members cannot be read")
            continue
        if (info.file_size > _BOMB_MIN_BYTES
                and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
            out.reject(name, "zip_bomb", f"inflates {info.file_size // max(info.compress_size, 1)}"
                       f" times; at most {MAX_COMPRESSION_RATIO} is accepted")
            continue
        if info.file_size > limits.max_bytes:
            out.reject(name, "file_too_large",
                       f"{info.file_size} bytes unpacked; the limit is {limits.max_bytes}")
            continue
        if total + info.file_size > max_total:
            out.reject(name, "batch_too_large", f"the batch unpacks to more than {max_total} "
                       "bytes")
            continue
        try:
            with zf.open(info) as fh:
                # Never trust the header: read at most one byte past the limit.
                data = fh.read(limits.max_bytes + 1)
        except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError,
                zlib.error, ValueError) as exc:
            out.reject(name, "corrupt_member", f"cannot be unpacked: {exc}")
            continue
        if len(data) > limits.max_bytes:
            out.reject(name, "file_too_large", f"larger than {limits.max_bytes} bytes")
            continue
        total += len(data)
        _take_photo(out, name, data, limits, pipeline, options)
    return out


def _manifest_rows(data: bytes, filename: str, max_items: int) -> list[Any]:
    def invalid(message: str) -> ApiError:
        return ApiError("invalid_manifest", message, "manifest")

    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise invalid("the manifest is not UTF-8 text") from None
    if text.lstrip().startswith(("[", "{")) or filename.lower().endswith(".json"):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise invalid(f"not valid JSON: {exc}") from None
        if isinstance(doc, dict):
            doc = doc.get("items")
        if not isinstance(doc, list):
            raise invalid("a JSON manifest is a list of items, or an object with 'items'")
        rows = doc
    else:
        try:
            reader = csv.DictReader(io.StringIO(text, newline=""))
            if not reader.fieldnames or not {"sku", "image_url"} <= set(reader.fieldnames):
                raise invalid("a CSV manifest needs a header with the columns sku and "
                              "image_url (options: pipeline, preset, output_size, "
                              "background, format, seed, structure)")
            rows = []
            for row in reader:
                opts = {k: v for k, v in row.items()
                        if k not in ("sku", "image_url", None) and v not in (None, "")}
                rows.append({"sku": row.get("sku"), "image_url": row.get("image_url"),
                             "options": opts or None})
                if len(rows) > max_items:
                    break
        except csv.Error as exc:
            raise invalid(f"not valid CSV: {exc}") from None
    if not rows:
        raise invalid("the manifest has no items")
    if len(rows) > max_items:
        raise ApiError("batch_too_large", f"a batch holds at most {max_items} items", "manifest")
    return rows


def unpack_manifest(data: bytes, filename: str, max_items: int, allow: AllowList,
                    pipeline: str, given: dict[str, Any], default_pipeline: str) -> Unpacked:
    """The manifest's rows; `given` is what the batch's own fields gave (an item's options
    override them, then its preset's defaults apply)."""
    out = Unpacked(sku_from_name=False)
    for i, row in enumerate(_manifest_rows(data, filename, max_items), start=1):
        name = f"row {i}"
        if not isinstance(row, dict):
            out.reject(name, "invalid_item", "an item is an object with sku and image_url")
            continue
        sku, url = row.get("sku"), row.get("image_url")
        if not isinstance(sku, str | int) or not str(sku).strip() or len(str(sku)) > 255 \
                or _CONTROL.search(str(sku)):
            out.reject(name, "invalid_item", "sku must be 1–255 printable characters")
            continue
        sku = str(sku).strip()
        if sku in out._skus:
            out.reject(name, "duplicate_sku", f"SKU {sku!r} is already in this batch", sku)
            continue
        if not isinstance(url, str):
            out.reject(name, "url_invalid", "image_url must be a string", sku)
            continue
        try:
            check_public_url(url, allow)
            item_pipeline, item_options = override_options(pipeline, given,
                                                           row.get("options"), default_pipeline)
        except FetchError as exc:
            out.reject(name, exc.code, exc.message, sku)
            continue
        except ApiError as exc:
            out.reject(name, exc.code, exc.message, sku)
            continue
        out.members.append(Member(name=name, sku=out.unique_sku(sku), pipeline=item_pipeline,
                                  options=item_options, url=url))
    return out


# --- Views ------------------------------------------------------------------------------------


def _links(batch_id: str) -> BatchLinks:
    return BatchLinks(self=f"/batches/{batch_id}", results=f"/batches/{batch_id}/results")


def _counts(batch: BatchView, jobs: list[JobView]) -> BatchCounts:
    by = {s: 0 for s in ("queued", "running", "succeeded", "failed", "canceled")}
    for job in jobs:
        by[job.status] += 1
    return BatchCounts(total=len(jobs) + len(batch.rejected), rejected=len(batch.rejected),
                       **by)


def _created(batch: BatchView, jobs: list[JobView]) -> BatchCreated:
    return BatchCreated(
        id=batch.id, status="completed" if batch.completed_at else "processing",
        created_at=batch.created_at, counts=_counts(batch, jobs),
        rejected=[BatchRejection(**r) for r in batch.rejected], links=_links(batch.id),
    )


def batch_status(batch: BatchView, jobs: list[JobView]) -> BatchStatus:
    items = [
        BatchItem(sku=j.sku or j.id, asset_id=j.id, status=j.status,  # type: ignore[arg-type]
                  error=JobError(code=j.error_code, message=j.error_message or "")
                  if j.error_code else None)
        for j in jobs
    ]
    return BatchStatus(**_created(batch, jobs).model_dump(), source=batch.source,  # type: ignore[arg-type]
                       options=batch.options, completed_at=batch.completed_at, items=items)


# --- Results ZIP ------------------------------------------------------------------------------


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
ATTRIBUTE_COLUMNS = ("category", "category_confidence", "sleeve_length", "length",
                     "neckline", "color", "color_hex", "color_share")


def attribute_cells(attributes: dict[str, Any] | None) -> tuple[str, ...]:
    """One job's attributes as the cells of ATTRIBUTE_COLUMNS."""
    a = attributes or {}
    category = a.get("category") or {}
    confidence = category.get("confidence")
    colors = a.get("colors") or []
    return (category.get("value") or "", "" if confidence is None else f"{confidence:.4f}",
            a.get("sleeve_length") or "", a.get("length") or "", a.get("neckline") or "",
            "/".join(c["name"] for c in colors), "/".join(c["hex"] for c in colors),
            "/".join(f"{c['share']:.3f}" for c in colors))


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
                file = _file_name(sku, job.options["format"].replace("jpeg", "jpg"), used)
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


# --- Routes -----------------------------------------------------------------------------------

router = APIRouter()


def _batch_or_404(ctx: ServiceContext, tenant_id: str, batch_id: str) -> BatchView:
    batch = ctx.store.get_batch(batch_id, tenant_id=tenant_id) if len(batch_id) <= 64 else None
    if batch is None:
        raise ApiError("batch_not_found", f"no batch with id {batch_id!r}")
    return batch


def _spooled_size(f: IO[bytes]) -> int:
    f.seek(0, io.SEEK_END)
    size = f.tell()
    f.seek(0)
    return size


def _digest(f: IO[bytes]) -> bytes:
    import hashlib

    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    f.seek(0)
    return h.digest()


@router.post(
    "/batches",
    status_code=202,
    response_model=BatchCreated,
    summary="Submit many photos: files, one ZIP, or a manifest of SKU + image URL",
    description="Give exactly one of `files` (repeat the field), `archive` (a ZIP) or "
    "`manifest` (JSON: a list of `{sku, image_url, options}`, or CSV with the columns sku, "
    "image_url and optionally pipeline, preset, output_size, background, format, seed, "
    "structure). The batch's options apply to every item; a manifest item's own options "
    "override them, then the item's preset gives the defaults of what neither sets. Members "
    "that cannot be taken are listed in `rejected` with a code; the rest go on.",
    responses=error_responses("unauthorized", "validation_error", "unknown_pipeline",
                              "invalid_structure", "corrupt_archive", "invalid_manifest",
                              "batch_too_large", "payload_too_large", "request_timeout",
                              "idempotency_key_reused", "rate_limited"),
)
def create_batch(
    ctx: Ctx,
    key: Key,
    response: Response,
    fields: OptionForm,
    files: Annotated[list[UploadFile] | None, File(description="photos")] = None,
    archive: Annotated[UploadFile | None, File(description="a ZIP of photos")] = None,
    manifest: Annotated[UploadFile | None, File(description="JSON or CSV manifest")] = None,
    idempotency_key: IdempotencyKey = None,
    webhook_url: Annotated[str | None, Form(description="receives asset.succeeded, "
                                            "asset.failed and batch.completed")] = None,
) -> BatchCreated:
    s = ctx.settings
    given = [n for n, v in (("files", files), ("archive", archive), ("manifest", manifest)) if v]
    if len(given) != 1:
        raise ApiError("validation_error", "give exactly one of files, archive or manifest",
                       given[1] if len(given) > 1 else "files")
    source = given[0]
    given = fields.given
    pipeline, options = resolve_options(fields.pipeline, given, s.default_pipeline)
    webhook_url = request_webhook_target(webhook_url, key, s)
    uploads = files or [archive or manifest]  # type: ignore[list-item]
    if len(uploads) > s.batch_max_items:
        raise ApiError("batch_too_large", f"a batch holds at most {s.batch_max_items} items",
                       source)
    sizes = [_spooled_size(u.file) for u in uploads]
    limit = s.max_manifest_bytes if source == "manifest" else s.max_batch_bytes
    if sum(sizes) > limit:
        raise ApiError("batch_too_large", f"the request holds more than {limit} bytes", source)

    idem = None
    if idempotency_key is not None:
        fields = {"source": source, "pipeline": pipeline, "webhook_url": webhook_url, **options,
                  "names": [u.filename for u in uploads]}
        idem = Idempotency(idempotency_key, request_fingerprint(
            "batches", fields, [_digest(u.file) for u in uploads]))
        if (earlier := replayed_or_conflict(ctx, key, idem)) is not None:
            return _replay(ctx, key.tenant_id, earlier, response)

    limits = ImageLimits(s.max_upload_bytes, s.max_pixels, s.min_image_side)
    if source == "files":
        unpacked = unpack_files([(u.filename or f"file-{i}", u.file.read())
                                 for i, u in enumerate(uploads, start=1)],
                                limits, pipeline, options)
    elif source == "archive":
        unpacked = unpack_zip(uploads[0].file, limits, s.batch_max_items, s.max_batch_bytes,
                              pipeline, options)
    else:
        unpacked = unpack_manifest(uploads[0].file.read(), uploads[0].filename or "",
                                   s.batch_max_items, AllowList.parse(s.fetch_allow_hosts),
                                   pipeline, given, s.default_pipeline)

    batch_id = new_job_id()
    jobs, blobs = [], []
    for m in unpacked.members:
        job_id = new_job_id()
        if m.data is not None:
            input_blob = f"assets/{job_id}/input.{_EXT[m.info.format]}"
            ctx.blobs.put(input_blob, m.data)
            blobs.append(input_blob)
            meta = {"filename": m.name, "content_type": m.info.content_type,
                    "width": m.info.width, "height": m.info.height, "bytes": m.info.bytes}
        else:
            input_blob = f"assets/{job_id}/input"  # the worker fetches it there
            meta = {"source_url": m.url}
        jobs.append(new_job_row(job_id=job_id, tenant_id=key.tenant_id, pipeline=m.pipeline,
                                options=m.options, input_blob=input_blob, input_meta=meta,
                                batch_id=batch_id, sku=m.sku, webhook_url=webhook_url,
                                key_id=key.key_id))
    try:
        batch = ctx.store.create_batch(
            batch_id=batch_id, tenant_id=key.tenant_id, source=source,
            options={"pipeline": pipeline, **options}, rejected=unpacked.rejected,
            webhook_url=webhook_url, jobs=jobs, idempotency=idem, key_id=key.key_id,
        )
    except IdempotencyConflict as conflict:
        for blob in blobs:
            ctx.blobs.delete(blob)
        assert idem is not None
        replayed_or_conflict(ctx, key, idem)
        return _replay(ctx, key.tenant_id, conflict.existing.resource_id, response)
    for job in jobs:
        ctx.enqueue(job.id)
    log.info("batch created", extra={"batch_id": batch_id, "accepted": len(jobs),
                                     "rejected": len(unpacked.rejected)})
    response.headers["Location"] = f"/batches/{batch_id}"
    return _created(batch, ctx.store.batch_jobs(batch_id))


def _replay(ctx: ServiceContext, tenant_id: str, batch_id: str, response: Response) -> BatchCreated:
    batch = _batch_or_404(ctx, tenant_id, batch_id)
    response.headers["Location"] = f"/batches/{batch_id}"
    response.headers["Idempotent-Replayed"] = "true"
    return _created(batch, ctx.store.batch_jobs(batch_id))


@router.get(
    "/batches/{batch_id}",
    response_model=BatchStatus,
    summary="Counts per state and the status of every SKU",
    responses=error_responses("unauthorized", "batch_not_found", "rate_limited"),
)
def get_batch(batch_id: str, ctx: Ctx, key: Key) -> BatchStatus:
    batch = _batch_or_404(ctx, key.tenant_id, batch_id)
    return batch_status(batch, ctx.store.batch_jobs(batch.id))


@router.get(
    "/batches/{batch_id}/results",
    summary="A streamed ZIP of the finished outputs named by SKU, with manifest.csv",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}},
                     "description": "outputs named <sku>.<ext>; manifest.csv lists every "
                     "item: sku, status, error_code, file, then a succeeded item's "
                     "attributes: category, category_confidence, sleeve_length, length, "
                     "neckline, color, color_hex, color_share (colours joined by /)"},
               **error_responses("unauthorized", "batch_not_found", "rate_limited")},
)
def get_batch_results(batch_id: str, ctx: Ctx, key: Key) -> StreamingResponse:
    batch = _batch_or_404(ctx, key.tenant_id, batch_id)
    jobs = ctx.store.batch_jobs(batch.id)
    return StreamingResponse(
        stream_results(ctx, batch, jobs), media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="batch-{batch.id}.zip"'},
    )
