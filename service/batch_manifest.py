"""A batch's manifest: JSON (a list of `{sku, image_url, options}`, or an object with
`items`) or CSV (the columns sku and image_url, options in further columns). A bad row is
rejected with a code and a reason (its URL refused as service.fetch refuses it, its options
as a create request's); the rest of the batch goes on. The worker fetches each photo.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from service.batch_unpack import CONTROL_CHARS, Member, Unpacked
from service.errors import ApiError
from service.fetch import AllowList, FetchError, check_public_url
from service.options import override_options


def _invalid(message: str) -> ApiError:
    return ApiError("invalid_manifest", message, "manifest")


def _json_rows(text: str) -> list[Any]:
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _invalid(f"not valid JSON: {exc}") from None
    if isinstance(doc, dict):
        doc = doc.get("items")
    if not isinstance(doc, list):
        raise _invalid("a JSON manifest is a list of items, or an object with 'items'")
    return doc


def _csv_rows(text: str, max_items: int) -> list[Any]:
    """The rows as JSON items; one past `max_items` at most (enough to refuse the batch)."""
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        if not reader.fieldnames or not {"sku", "image_url"} <= set(reader.fieldnames):
            raise _invalid("a CSV manifest needs a header with the columns sku and "
                           "image_url (options: pipeline, preset, output_size, "
                           "background, format, seed, structure, steps, hint)")
        rows = []
        for row in reader:
            opts = {k: v for k, v in row.items()
                    if k not in ("sku", "image_url", None) and v not in (None, "")}
            rows.append({"sku": row.get("sku"), "image_url": row.get("image_url"),
                         "options": opts or None})
            if len(rows) > max_items:
                break
    except csv.Error as exc:
        raise _invalid(f"not valid CSV: {exc}") from None
    return rows


def _manifest_rows(data: bytes, filename: str, max_items: int) -> list[Any]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _invalid("the manifest is not UTF-8 text") from None
    if text.lstrip().startswith(("[", "{")) or filename.lower().endswith(".json"):
        rows = _json_rows(text)
    else:
        rows = _csv_rows(text, max_items)
    if not rows:
        raise _invalid("the manifest has no items")
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
                or CONTROL_CHARS.search(str(sku)):
            out.reject(name, "invalid_item", "sku must be 1–255 printable characters")
            continue
        sku = str(sku).strip()
        if out.has_sku(sku):
            out.reject(name, "duplicate_sku", f"SKU {sku!r} is already in this batch", sku)
            continue
        if not isinstance(url, str):
            out.reject(name, "url_invalid", "image_url must be a string", sku)
            continue
        try:
            check_public_url(url, allow)
            item_pipeline, item_options = override_options(pipeline, given,
                                                           row.get("options"), default_pipeline)
        except (FetchError, ApiError) as exc:
            out.reject(name, exc.code, exc.message, sku)
            continue
        out.members.append(Member(name=name, sku=out.unique_sku(sku), pipeline=item_pipeline,
                                  options=item_options, url=url))
    return out
