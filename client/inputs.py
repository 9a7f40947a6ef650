"""What `flatlay submit` sends: photos, folders of photos (recursively), ZIPs of photos and
manifests (CSV or JSON of SKU + image path or URL), as items with a SKU, a file-safe name
and a content digest.

A whole input that cannot be used (a missing path, a manifest that does not parse) is an
InputError before anything is sent; one item that cannot be used (a manifest row without a
SKU, a file that cannot be read) is an item with an `error`, and the rest go on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from client.api import SIDE_OUTPUTS

PHOTO_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
MANIFEST_SUFFIXES = frozenset({".csv", ".json"})
# A manifest's image column, by the first of these names its header has.
IMAGE_COLUMNS = ("image_url", "image", "image_path", "path", "file", "url")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE = re.compile(r"[^A-Za-z0-9._ -]+")
_SUFFIX = re.compile(r"\.[a-z0-9]{1,5}")


class InputError(Exception):
    """An input that cannot be used at all; nothing has been sent."""


@dataclass
class Item:
    """One photo to send. `source` says where it came from (a path, `zip!member`, a URL);
    `name` is unique and file-safe: the output files' stem and the uploaded file's name."""

    sku: str
    source: str
    path: Path | None = None
    member: str | None = None  # inside the ZIP `path`
    url: str | None = None
    name: str = ""
    size: int = 0
    digest: str = ""
    error: tuple[str, str] | None = None  # (code, message): refused before sending
    sku_from_name: bool = True

    @property
    def upload_name(self) -> str:
        """The file name sent: the service's SKU of a batch member is its stem, so this
        stem is `name` and the answer maps back to the item."""
        suffix = Path(self.member or (self.path.name if self.path else "")).suffix.lower()
        return self.name + (suffix if _SUFFIX.fullmatch(suffix) else ".img")

    def read(self) -> bytes:
        if self.member is not None:
            assert self.path is not None
            with zipfile.ZipFile(self.path) as zf:
                return zf.read(self.member)
        assert self.path is not None
        return self.path.read_bytes()


def _stem(name: str) -> str:
    return PurePosixPath(name.replace("\\", "/")).stem


def _is_url(text: str) -> bool:
    return text.lower().startswith(("http://", "https://"))


def _folder_photos(folder: Path, exclude: Path | None) -> list[Item]:
    skip = exclude if exclude is not None and exclude.is_relative_to(folder.resolve()) else None
    items = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() not in PHOTO_SUFFIXES or p.name.startswith("._") or not p.is_file():
            continue
        if skip is not None and p.resolve().is_relative_to(skip):
            continue  # our own results, when OUT lies inside an input folder
        items.append(Item(sku=_stem(p.name), source=str(p), path=p))
    return items


def _zip_photos(path: Path) -> list[Item]:
    try:
        with zipfile.ZipFile(path) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
    except (zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: not a readable ZIP ({exc})") from None
    return [Item(sku=_stem(n), source=f"{path}!{n}", path=path, member=n)
            for n in sorted(names)
            if PurePosixPath(n).suffix.lower() in PHOTO_SUFFIXES and not n.startswith("__MACOSX/")
            and not PurePosixPath(n).name.startswith("._")]


def _manifest_rows(path: Path) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(f"manifest {path}: not UTF-8 text") from None
    except OSError as exc:
        raise InputError(f"manifest {path}: cannot read it ({exc.strerror or exc})") from None
    if path.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise InputError(f"manifest {path}: not valid JSON ({exc})") from None
        if isinstance(doc, dict):
            doc = doc.get("items")
        if not isinstance(doc, list):
            raise InputError(f"manifest {path}: a JSON manifest is a list of "
                             "{sku, image_url} objects, or an object with 'items'")
        return doc
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        header = [h.strip().lower() for h in reader.fieldnames or []]
        column = next((c for c in IMAGE_COLUMNS if c in header), None)
        if "sku" not in header or column is None:
            raise InputError(f"manifest {path}: a CSV manifest needs a header with the column "
                             f"sku and an image column ({' or '.join(IMAGE_COLUMNS)})")
        rows = []
        for raw in reader:
            row = {(k or "").strip().lower(): v for k, v in raw.items()}
            rows.append({"sku": row.get("sku"), "image_url": row.get(column)})
        return rows
    except csv.Error as exc:
        raise InputError(f"manifest {path}: not valid CSV ({exc})") from None


def _manifest_items(path: Path) -> list[Item]:
    rows = _manifest_rows(path)
    if not rows:
        raise InputError(f"manifest {path}: no items")
    items = []
    for i, row in enumerate(rows, start=1):
        where = f"{path} row {i}"
        if not isinstance(row, dict):
            items.append(Item(sku=f"row {i}", source=where, sku_from_name=False,
                              error=("invalid_item", "an item is an object with sku and "
                                     "image_url")))
            continue
        sku = row.get("sku")
        image = next((row[c] for c in IMAGE_COLUMNS if isinstance(row.get(c), str)), None)
        sku = str(sku).strip() if isinstance(sku, str | int) else ""
        if not sku or len(sku) > 255 or _CONTROL.search(sku):
            items.append(Item(sku=f"row {i}", source=where, sku_from_name=False,
                              error=("invalid_item", "sku must be 1–255 printable characters")))
            continue
        if not image or not image.strip():
            items.append(Item(sku=sku, source=where, sku_from_name=False,
                              error=("invalid_item", "the row has no image path or URL")))
            continue
        image = image.strip()
        if _is_url(image):
            items.append(Item(sku=sku, source=image, url=image, sku_from_name=False))
        else:
            photo = Path(image) if Path(image).is_absolute() else path.parent / image
            items.append(Item(sku=sku, source=str(photo), path=photo, sku_from_name=False))
    return items


def _safe_name(sku: str) -> str:
    name = _UNSAFE.sub("_", sku).strip(" .")[:150] or "item"
    # `X.mask` would name its result X.mask.png: the mask of item X.
    head, dot, tail = name.rpartition(".")
    return f"{head}_{tail}" if dot and head and tail in SIDE_OUTPUTS else name


def _dedupe(items: list[Item]) -> None:
    """Unique SKUs (a repeated file stem gets -2, -3…, as the service does; a repeated
    manifest SKU is an error), then unique file-safe names."""
    skus: set[str] = set()
    for item in items:
        if item.sku_from_name:
            wanted, n = item.sku, 2
            while item.sku in skus:
                item.sku, n = f"{wanted}-{n}", n + 1
        elif item.sku in skus and item.error is None:
            item.error = ("duplicate_sku", f"SKU {item.sku!r} is already in the inputs")
            item.sku = f"{item.sku} ({item.source})"
        skus.add(item.sku)
    names: set[str] = {"manifest"}
    for item in items:
        base, n = _safe_name(item.sku), 2
        item.name = base
        while item.name.lower() in names:  # case-insensitive file systems
            item.name, n = f"{base}-{n}", n + 1
        names.add(item.name.lower())


def _digest(item: Item) -> None:
    """Size and SHA-256 of what will be sent; an item that cannot be read gets its error."""
    if item.error is not None:
        return
    if item.url is not None:
        item.digest = hashlib.sha256(item.url.encode()).hexdigest()
        return
    try:
        data = item.read()
    except FileNotFoundError:
        item.error = ("file_not_found", f"no such file: {item.source}")
        return
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        item.error = ("unreadable_file", f"cannot read {item.source}: {reason}")
        return
    item.size = len(data)
    item.digest = hashlib.sha256(data).hexdigest()


def discover(paths: list[Path], exclude: Path | None = None) -> list[Item]:
    """The items of the given paths, in a stable order (so a rerun makes the same batches).
    `exclude`: a folder whose files are never inputs (the output folder)."""
    exclude = exclude.resolve() if exclude is not None else None
    items: list[Item] = []
    for path in paths:
        if path.is_dir():
            items += _folder_photos(path, exclude)
        elif not path.exists():
            raise InputError(f"no such file or folder: {path}")
        elif path.suffix.lower() in MANIFEST_SUFFIXES:
            items += _manifest_items(path)
        elif path.suffix.lower() == ".zip" or (path.suffix.lower() not in PHOTO_SUFFIXES
                                               and zipfile.is_zipfile(path)):
            items += _zip_photos(path)
        else:  # any other file named on the command line is a photo: the service decides
            items.append(Item(sku=_stem(path.name), source=str(path), path=path))
    _dedupe(items)
    for item in items:
        _digest(item)
    return items
