"""A batch's photos, from its files or its one ZIP: every member that cannot be taken (a
zip-slip name, a zip bomb, a nested archive, an encrypted or corrupt member, a file that is
not a photo) is rejected with a code and a reason, and the rest of the batch goes on.
"""

from __future__ import annotations

import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import IO, Any

from models.io import ImageInfo, ImageLimits, IngestError, validate_image
from service.errors import ApiError

# A member that inflates more than this many times (and to more than 1 MB) is a zip bomb.
MAX_COMPRESSION_RATIO = 100
_BOMB_MIN_BYTES = 1024 * 1024
_ARCHIVE_SUFFIXES = frozenset({".zip", ".gz", ".tgz", ".tar", ".7z", ".rar", ".bz2", ".xz",
                               ".zst", ".jar", ".apk"})
_ARCHIVE_MAGIC = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08", b"\x1f\x8b", b"BZh",
                  b"7z\xbc\xaf\x27\x1c", b"Rar!", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class Member:
    """An accepted item: photo bytes (files, ZIP) or a URL the worker fetches (manifest)."""

    name: str
    sku: str
    pipeline: str
    options: dict[str, Any]
    data: bytes | None = None
    info: ImageInfo | None = None  # of `data`
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

    def has_sku(self, sku: str) -> bool:
        return sku in self._skus

    def unique_sku(self, wanted: str) -> str:
        sku, n = wanted, 2
        while sku in self._skus:
            sku, n = f"{wanted}-{n}", n + 1
        self._skus.add(sku)
        return sku


def _sku_of(name: str) -> str:
    stem = PurePosixPath(name.replace("\\", "/")).stem
    return CONTROL_CHARS.sub("", stem).strip()[:200] or "item"


def _unsafe_name(name: str) -> str | None:
    """Why a member name must not be used (zip-slip and friends), or None."""
    if CONTROL_CHARS.search(name):
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


def _header_refusal(info: zipfile.ZipInfo, max_bytes: int, total: int,
                    max_total: int) -> tuple[str, str] | None:
    """(code, reason) when the member's header alone refuses it, before anything is
    inflated; `total` is what the batch has unpacked so far."""
    if info.flag_bits & 0x1:
        return "encrypted_member", "encrypted members cannot be read"
    if (info.file_size > _BOMB_MIN_BYTES
            and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1)):
        return ("zip_bomb", f"inflates {info.file_size // max(info.compress_size, 1)} times; "
                f"at most {MAX_COMPRESSION_RATIO} is accepted")
    if info.file_size > max_bytes:
        return "file_too_large", f"{info.file_size} bytes unpacked; the limit is {max_bytes}"
    if total + info.file_size > max_total:
        return "batch_too_large", f"the batch unpacks to more than {max_total} bytes"
    return None


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
        if refusal := _header_refusal(info, limits.max_bytes, total, max_total):
            out.reject(name, *refusal)
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
