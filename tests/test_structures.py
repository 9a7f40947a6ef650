"""Growing the bank at run time: structure checks, `POST /structures` (admin) and the worker
that embeds and appends — no retraining."""

from __future__ import annotations

import base64
import io
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from models.garments import generate, num_landmarks
from service.app import create_app
from service.auth import create_key
from service.settings import Settings
from service.store import migrate
from structure_bank import StructureBank
from structure_bank.builder import default_bank_path
from structure_bank.validate import InvalidStructure, check_structure, outline_silhouette
from tests.support import ServiceProcesses, free_port

SKIRT = generate(1_150_000, size=128, category="skirt")


def test_a_garment_world_structure_passes() -> None:
    lm = check_structure("skirt", SKIRT.flat_landmarks.tolist())
    assert lm.shape == (num_landmarks("skirt"), 2) and lm.dtype == np.float32
    sil = outline_silhouette("skirt", lm, 128)
    inter = (sil & SKIRT.flat_mask).sum() / (sil | SKIRT.flat_mask).sum()
    assert inter > 0.8  # the outline polygon is close to the rendered silhouette


@pytest.mark.parametrize(
    "category,change,field",
    [
        ("kilt", None, "category"),
        ("skirt", "drop", "landmarks"),
        ("skirt", "outside", "landmarks[3]"),
        ("skirt", "cross", "landmarks[2]"),
    ],
)
def test_bad_structures_name_the_bad_point(category: str, change: str | None, field: str) -> None:
    lm = SKIRT.flat_landmarks.copy()
    if change == "drop":
        lm = lm[:-1]
    elif change == "outside":
        lm[3] = (1.2, 0.5)
    elif change == "cross":
        lm[[1, 2]] = lm[[2, 1]]  # swapping two outline points makes the outline cross itself
    with pytest.raises(InvalidStructure) as info:
        check_structure(category, lm.tolist())
    assert info.value.field.startswith(field.split("[")[0])
    if "[" in field:
        assert info.value.field.startswith("landmarks[")


def test_only_admin_tenants_may_add(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path / "d", admin_tenants="ops")
    s.ensure_dirs()
    migrate(s.resolved_database_url)
    with TestClient(create_app(s)) as c:
        store = c.app.state.ctx.store
        shop = {"Authorization": f"Bearer {create_key(store, 'shop').key}"}
        ops = {"Authorization": f"Bearer {create_key(store, 'ops').key}"}
        body = {"category": "skirt", "landmarks": SKIRT.flat_landmarks.tolist()}
        r = c.post("/structures", json=body, headers=shop)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_required"
        r = c.post("/structures", json={**body, "landmarks": body["landmarks"][:3]}, headers=ops)
        assert r.status_code == 422 and r.json()["error"]["field"] == "landmarks"
        r = c.post("/structures", json={**body, "silhouette_png": "not base64!"}, headers=ops)
        assert r.status_code == 422 and r.json()["error"]["field"] == "silhouette_png"
        r = c.post("/structures", json=body, headers=ops)
        assert r.status_code == 202 and r.json()["status"] == "pending"
        assert c.get(r.json()["links"]["self"], headers=ops).json()["status"] == "pending"
        assert c.get("/structures/api-nope", headers=ops).status_code == 404


@pytest.mark.slow
@pytest.mark.skipif(not (default_bank_path() / "bank.json").is_file(),
                    reason="the shipped bank is not built yet")
def test_a_structure_added_through_the_api_lands_in_the_bank(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    svc = ServiceProcesses.start(
        [["serve", "--port", str(port), "--data-dir", str(data)]],
        env={"FLATLAY_AUTH_ENABLED": "false"}, port=port, log_dir=tmp_path,
    )
    try:
        buf = io.BytesIO()
        Image.fromarray(SKIRT.flat_mask.astype(np.uint8) * 255).save(buf, "PNG")
        body = {"category": "skirt", "landmarks": SKIRT.flat_landmarks.tolist(),
                "silhouette_png": base64.b64encode(buf.getvalue()).decode(),
                "attributes": {"family": "test"}}
        with svc.client() as c:
            r = c.post("/structures", json=body)
            assert r.status_code == 202, r.text
            sid = r.json()["id"]
            deadline = time.monotonic() + 120
            while (status := c.get(f"/structures/{sid}").json())["status"] == "pending":
                assert time.monotonic() < deadline, svc.log_text()
                time.sleep(0.3)
        assert status["status"] == "added", status
        shipped = StructureBank.load(default_bank_path())
        grown = StructureBank.load(data / "bank")
        assert len(grown) == len(shipped) + 1 == status["bank_size"]
        entry = grown.entry(grown.row_of(sid))
        assert entry.category == "skirt" and entry.attributes == {"family": "test"}
        assert np.allclose(entry.landmarks, SKIRT.flat_landmarks)
        # Retrievable by its own structure embedding: it is its own nearest neighbour.
        assert grown.search(entry.embedding, 1)[0].id == sid
    finally:
        svc.stop()
