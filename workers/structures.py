"""Adding a structure to the running service's bank (`POST /structures`): the API validates
and stores the request; a worker embeds it with StructureNet's structure tower and appends it
to the runtime bank — no retraining."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
from PIL import Image

from service.blobs import BlobStore
from service.structures import request_key, status_key

log = logging.getLogger("flatlay.worker")

_model = None


def _structure_tower():  # noqa: ANN202 (torch is imported lazily)
    """StructureNet, loaded once per worker process on first use."""
    global _model
    if _model is None or getattr(_model, "_pid", None) != os.getpid():
        from models.structurenet import DEFAULT_WEIGHTS, StructureNet

        _model = StructureNet.from_pretrained(DEFAULT_WEIGHTS)
        _model._pid = os.getpid()
    return _model


def add_structure(blobs: BlobStore, bank_dir: Path, structure_id: str) -> dict:
    """Embed the stored request `structure_id` and append it to the bank at `bank_dir`.

    Idempotent: a request already done is not added again. Returns the status written.
    """
    from models.bank_builder import embed_structure
    from structure_bank import Structure
    from structure_bank.runtime import add_to_runtime_bank
    from structure_bank.validate import InvalidStructure, check_structure, outline_silhouette

    if blobs.exists(status_key(structure_id)):
        return json.loads(blobs.get(status_key(structure_id)))
    req = json.loads(blobs.get(request_key(structure_id)))
    status: dict = {"id": structure_id, "category": req["category"]}
    try:
        from models.train.pairs import SILHOUETTE_SIZE

        landmarks = check_structure(req["category"], req["landmarks"])
        if req.get("silhouette") is not None:
            mask = np.asarray(req["silhouette"], dtype=bool)
            silhouette = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(
                (SILHOUETTE_SIZE, SILHOUETTE_SIZE), Image.Resampling.BILINEAR)) > 127
        else:
            silhouette = outline_silhouette(req["category"], landmarks, SILHOUETTE_SIZE)
        embedding = embed_structure(_structure_tower(), landmarks, silhouette)
        size = add_to_runtime_bank(bank_dir, [Structure(
            id=structure_id, category=req["category"], landmarks=landmarks,
            silhouette=silhouette, embedding=embedding,
            attributes=req.get("attributes") or {}, source="api")])
        status.update(status="added", bank_size=size)
    except (InvalidStructure, ValueError) as exc:
        status.update(status="failed", error={"code": "invalid_structure", "message": str(exc)})
    blobs.put(status_key(structure_id), json.dumps(status).encode())
    log.info("structure %s: %s", structure_id, status["status"])
    return status
