"""Admin routes that grow the structure bank at run time (RAGDiffusion's zero-shot path):
a new garment family becomes retrievable by adding its structures, with no retraining.

The API validates and stores the request and enqueues its id; a worker embeds the structure
with StructureNet's structure tower and appends it to the runtime bank.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import uuid
from typing import Any, Literal

import numpy as np
from fastapi import APIRouter
from PIL import Image
from pydantic import BaseModel, Field

from service.deps import Ctx, Key
from service.errors import ApiError, error_responses
from service.queue import ADD_STRUCTURE_TASK
from structure_bank.validate import InvalidStructure, check_structure

router = APIRouter(tags=["structures"])
SILHOUETTE_SIDE = 128


class StructureIn(BaseModel):
    category: str = Field(description="garment category, e.g. `skirt` (see the garment world)")
    landmarks: list[list[float]] = Field(
        description="the category's landmarks in order, [x, y] in the canonical unit square "
        "(x right, y down): the same form as a job's landmarks side output")
    silhouette_png: str | None = Field(
        default=None, description="optional base64 PNG of the flat-lay silhouette on the "
        "canonical canvas (non-zero = garment); default: the outline landmarks' polygon")
    attributes: dict[str, Any] = Field(default_factory=dict)


class StructureStatus(BaseModel):
    id: str
    status: Literal["pending", "added", "failed"]
    category: str
    bank_size: int | None = None
    error: dict | None = None
    links: dict[str, str]


def request_key(structure_id: str) -> str:
    """Blob key of a stored `POST /structures` request."""
    return f"structures/{structure_id}/request.json"


def status_key(structure_id: str) -> str:
    """Blob key of the worker's verdict on a structure request."""
    return f"structures/{structure_id}/status.json"


def _require_admin(ctx: Ctx, key: Key) -> None:
    admins = {t.strip() for t in ctx.settings.admin_tenants.split(",") if t.strip()}
    if ctx.settings.auth_enabled and key.tenant_id not in admins:
        raise ApiError("admin_required",
                       "adding structures needs a key of an admin tenant (FLATLAY_ADMIN_TENANTS)")


def _silhouette(data: str) -> list[list[int]]:
    try:
        raw = base64.b64decode(data, validate=True)
        img = Image.open(io.BytesIO(raw))
        if img.format != "PNG" or max(img.size) > 4096:
            raise ValueError
        mask = np.asarray(img.convert("L").resize((SILHOUETTE_SIDE, SILHOUETTE_SIDE))) > 127
    except (binascii.Error, ValueError, OSError):
        raise ApiError("invalid_structure", "silhouette_png must be a base64 PNG of at most "
                       "4096 px a side", "silhouette_png") from None
    if not mask.any():
        raise ApiError("invalid_structure", "the silhouette is empty", "silhouette_png")
    return mask.astype(np.uint8).tolist()


def _status(ctx: Ctx, structure_id: str, category: str) -> StructureStatus:
    body: dict = {"status": "pending"}
    if ctx.blobs.exists(status_key(structure_id)):
        body = json.loads(ctx.blobs.get(status_key(structure_id)))
    return StructureStatus(id=structure_id, status=body["status"], category=category,
                           bank_size=body.get("bank_size"), error=body.get("error"),
                           links={"self": f"/structures/{structure_id}"})


@router.post("/structures", status_code=202, response_model=StructureStatus,
             summary="Add a standardized structure to the bank (admin)",
             responses=error_responses("invalid_structure", "admin_required"))
def add_structure(body: StructureIn, ctx: Ctx, key: Key) -> StructureStatus:
    _require_admin(ctx, key)
    try:
        landmarks = check_structure(body.category, body.landmarks)
    except InvalidStructure as exc:
        raise ApiError("invalid_structure", exc.message, exc.field) from None
    structure_id = f"api-{body.category}-{uuid.uuid4().hex[:12]}"
    request = {"category": body.category, "landmarks": landmarks.tolist(),
               "silhouette": _silhouette(body.silhouette_png) if body.silhouette_png else None,
               "attributes": body.attributes, "tenant": key.tenant_id}
    ctx.blobs.put(request_key(structure_id), json.dumps(request).encode())
    ctx.celery.send_task(ADD_STRUCTURE_TASK, args=[structure_id],
                         queue=ctx.settings.queue_name)
    return _status(ctx, structure_id, body.category)


@router.get("/structures/{structure_id}", response_model=StructureStatus,
            summary="Whether a structure was added", responses=error_responses(
                "structure_not_found", "admin_required"))
def get_structure(structure_id: str, ctx: Ctx, key: Key) -> StructureStatus:
    _require_admin(ctx, key)
    try:
        exists = ctx.blobs.exists(request_key(structure_id))
    except ValueError:  # not a valid blob key
        exists = False
    if not exists:
        raise ApiError("structure_not_found", f"no structure request {structure_id!r}")
    category = json.loads(ctx.blobs.get(request_key(structure_id)))["category"]
    return _status(ctx, structure_id, category)
