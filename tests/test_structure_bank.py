"""The structure bank (format, search) and SLLE fusion, on a world of rectangles whose true
structure is known exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models.slle import choose_category, fuse_structures, nearest_structure, slle_weights
from models.warp import ThinPlateSpline, signed_distance, warp_to_landmarks
from structure_bank import Structure, StructureBank

S = 64  # silhouette side


def _rect(w: float, h: float) -> tuple[np.ndarray, np.ndarray]:
    """A centred w × h rectangle: 8 contour landmarks (corners and edge midpoints), mask."""
    x0, x1, y0, y1 = 0.5 - w / 2, 0.5 + w / 2, 0.5 - h / 2, 0.5 + h / 2
    lm = np.array([[x0, y0], [0.5, y0], [x1, y0], [x1, 0.5], [x1, y1], [0.5, y1], [x0, y1],
                   [x0, 0.5]], np.float32)
    c = (np.arange(S) + 0.5) / S
    yy, xx = np.meshgrid(c, c, indexing="ij")
    return lm, (xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)


_CENTRES = np.random.default_rng(1).uniform(0.2, 0.8, size=(48, 2))


def _embed(w: float, h: float) -> np.ndarray:
    # Smooth features of the shape (RBF on a grid of centres): locally linear in (w, h).
    d2 = ((_CENTRES - [w, h]) ** 2).sum(1)
    e = np.exp(-d2 / (2 * 0.15**2)).astype(np.float32)
    return e / np.linalg.norm(e)


def _bank(n: int = 300, seed: int = 0) -> StructureBank:
    rng = np.random.default_rng(seed)
    bank = StructureBank(embedding_dim=48, silhouette_size=S)
    entries = []
    for i in range(n):
        w, h = rng.uniform(0.25, 0.75, 2)
        lm, mask = _rect(w, h)
        cat = "wide" if w > h else "tall"
        entries.append(Structure(id=f"r{i}", category=cat, landmarks=lm, silhouette=mask,
                                 embedding=_embed(w, h), attributes={"w": w, "h": h}))
    bank.add(entries)
    return bank


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def test_tps_interpolates_and_keeps_affine_maps() -> None:
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 1, (12, 2))
    dst = src * [1.5, 0.5] + [0.1, -0.2]
    tps = ThinPlateSpline.fit(src, dst, smoothing=0.0)
    assert np.allclose(tps(src), dst, atol=1e-6)
    probe = rng.uniform(0, 1, (50, 2))
    assert np.allclose(tps(probe), probe * [1.5, 0.5] + [0.1, -0.2], atol=1e-6)
    bent = dst + rng.normal(0, 0.02, dst.shape)
    assert np.allclose(ThinPlateSpline.fit(src, bent, smoothing=0.0)(src), bent, atol=1e-6)


def test_warp_moves_a_mask_onto_new_landmarks() -> None:
    lm_a, mask_a = _rect(0.3, 0.6)
    lm_b, mask_b = _rect(0.7, 0.4)
    warped = warp_to_landmarks(mask_a, lm_a, lm_b, (S, S))
    assert warped.dtype == bool
    assert _iou(warped, mask_b) > 0.93
    assert _iou(mask_a, mask_b) < 0.5


def test_signed_distance_is_negative_inside() -> None:
    _, mask = _rect(0.5, 0.5)
    sdf = signed_distance(mask)
    assert sdf[S // 2, S // 2] < -10 and sdf[0, 0] > 10
    assert ((sdf < 0) == mask).all()


def test_slle_weights_sum_to_one_and_recover_a_combination() -> None:
    rng = np.random.default_rng(0)
    neighbours = rng.normal(size=(5, 40))
    true_w = np.array([0.5, 0.3, 0.1, 0.1, 0.0])
    w = slle_weights(true_w @ neighbours, neighbours, reg=1e-9)
    assert abs(w.sum() - 1) < 1e-9
    assert np.allclose(w, true_w, atol=1e-5)
    # Strong regularisation pulls toward uniform weights.
    assert np.allclose(slle_weights(true_w @ neighbours, neighbours, reg=1e3), 0.2, atol=1e-2)


def test_bank_round_trip_and_refusals(tmp_path: Path) -> None:
    bank = _bank(50)
    bank.save(tmp_path / "bank")
    again = StructureBank.load(tmp_path / "bank")
    assert len(again) == 50 and again.category_counts() == bank.category_counts()
    for row in (0, 17, 49):
        a, b = bank.entry(row), again.entry(row)
        assert a.id == b.id and a.category == b.category and a.attributes == b.attributes
        assert np.array_equal(a.landmarks, b.landmarks)
        assert np.array_equal(a.silhouette, b.silhouette)
        assert np.allclose(a.embedding, b.embedding)
    with pytest.raises(ValueError, match="already in the bank"):
        again.add([bank.entry(3)])
    bad = bank.entry(4)
    bad.id, bad.embedding = "new", np.ones(7, np.float32)
    with pytest.raises(ValueError, match="embedding shape"):
        again.add([bad])
    with pytest.raises(FileNotFoundError):
        StructureBank.load(tmp_path / "nothing")
    bank.save(tmp_path / "bank")  # saving over an existing bank replaces it
    assert len(StructureBank.load(tmp_path / "bank")) == 50


def test_search_is_exact_and_respects_category() -> None:
    bank = _bank(300)
    q = _embed(0.6, 0.3)
    hits = bank.search(q, 10)
    scores = bank.embeddings @ q
    assert [h.row for h in hits] == list(np.argsort(-scores)[:10])
    tall = bank.search(q, 5, category="tall")
    assert len(tall) == 5 and all(h.category == "tall" for h in tall)
    assert bank.search(q, 5, category="no-such") == []
    assert choose_category(bank, q) == "wide"
    assert choose_category(bank, q, parsed="tall") == "tall"


def test_hnsw_agrees_with_exact_search() -> None:
    bank = _bank(300)
    exact = [h.row for h in bank.search(_embed(0.4, 0.5), 5)]
    bank.use_index("hnsw")
    assert [h.row for h in bank.search(_embed(0.4, 0.5), 5)] == exact
    bank.add([Structure(id="late", category="wide", landmarks=_rect(0.61, 0.29)[0],
                        silhouette=_rect(0.61, 0.29)[1], embedding=_embed(0.61, 0.29))])
    assert bank.search(_embed(0.61, 0.29), 1)[0].id == "late"  # added without a rebuild
    assert all(h.category == "tall" for h in bank.search(_embed(0.6, 0.3), 4, category="tall"))


def test_slle_fuses_closer_to_the_truth_than_top1() -> None:
    bank = _bank(300)
    rng = np.random.default_rng(7)
    lm_err_slle, lm_err_top1, iou_slle, iou_top1 = [], [], [], []
    for _ in range(40):
        w, h = rng.uniform(0.3, 0.7, 2)
        true_lm, true_mask = _rect(w, h)
        q = _embed(w, h)
        fused = fuse_structures(bank, q, k=8)
        top1 = nearest_structure(bank, q)
        assert abs(sum(n["weight"] for n in fused.neighbours) - 1) < 1e-4
        assert fused.category == top1.category
        lm_err_slle.append(np.linalg.norm(fused.landmarks - true_lm, axis=1).mean())
        lm_err_top1.append(np.linalg.norm(top1.landmarks - true_lm, axis=1).mean())
        iou_slle.append(_iou(fused.silhouette, true_mask))
        iou_top1.append(_iou(top1.silhouette, true_mask))
    assert np.mean(lm_err_slle) < 0.8 * np.mean(lm_err_top1)
    assert np.mean(iou_slle) > np.mean(iou_top1)
    assert np.mean(iou_slle) > 0.9


def test_subset_keeps_the_chosen_entries_in_order() -> None:
    bank = _bank(40)
    rows = [5, 0, 17, 39]
    sub = bank.subset(rows)
    assert len(sub) == 4 and [sub.entry(i).id for i in range(4)] == [f"r{r}" for r in rows]
    for i, r in enumerate(rows):
        a, b = sub.entry(i), bank.entry(r)
        assert np.array_equal(a.landmarks, b.landmarks)
        assert np.array_equal(a.silhouette, b.silhouette)
        assert np.array_equal(a.embedding, b.embedding)
    assert sub.row_of("r17") == 2 and sub.search(_embed(0.5, 0.5), 4)
    sub.add([Structure(id="extra", category="wide", landmarks=_rect(0.5, 0.3)[0],
                       silhouette=_rect(0.5, 0.3)[1], embedding=_embed(0.5, 0.3))])
    assert len(sub) == 5 and len(bank) == 40  # the original is untouched


def test_similarity_residual_ignores_pose_but_not_shape() -> None:
    from models.slle import similarity_residuals

    lm, _ = _rect(0.3, 0.6)
    th = 0.4
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    posed = 0.5 * lm @ rot.T + [0.2, 0.1]  # the same garment photographed turned and smaller
    other, _ = _rect(0.6, 0.3)
    res = similarity_residuals(posed.astype(np.float64),
                               np.stack([lm, other]).astype(np.float64))
    assert res[0] < 1e-9 < 0.02 < res[1]


def test_landmark_fit_picks_the_shape_the_photo_shows() -> None:
    """An embedding that points at the wrong width: the photo's landmarks pull the fused
    structure back to the true shape."""
    from models.slle import fit_candidates, fuse_with_landmarks

    bank = _bank()
    true_lm, true_mask = _rect(0.3, 0.7)
    misleading = _embed(0.4, 0.6)
    plain = fuse_structures(bank, misleading, category="tall")
    photo_lm = true_lm * 0.8 + 0.05  # seen smaller and shifted
    fitted = fuse_with_landmarks(bank, misleading, photo_lm, np.ones(8, bool), "tall",
                                 candidates=300)
    assert _iou(fitted.silhouette, true_mask) > _iou(plain.silhouette, true_mask) + 0.05
    # The category decision's fit, handed over, fuses the same structure.
    fit = fit_candidates(bank, misleading, photo_lm, np.ones(8, bool), "tall", candidates=300)
    again = fuse_with_landmarks(bank, misleading, photo_lm, np.ones(8, bool), "tall", fit=fit)
    assert np.array_equal(again.silhouette, fitted.silhouette)
    assert np.allclose(again.landmarks, fitted.landmarks)
    # Too few visible points: the embedding alone decides.
    few = fuse_with_landmarks(bank, misleading, photo_lm, np.arange(8) < 3, "tall")
    assert np.allclose(few.landmarks, plain.landmarks)


def test_fused_landmarks_are_the_mean_of_the_best_fitting_structures() -> None:
    """L̂ is the plain mean of the shape_k structures that fit the photo best (shape_k 0: the
    K neighbours' SLLE mix), and the silhouette is warped onto it."""
    from models.slle import fit_candidates, fuse_with_landmarks, slle_weights

    bank = _bank()
    true_lm, true_mask = _rect(0.3, 0.7)
    query, photo_lm, seen = _embed(0.35, 0.6), true_lm * 0.8 + 0.05, np.ones(8, bool)
    fit = fit_candidates(bank, query, photo_lm, seen, "tall", candidates=300)
    order = np.argsort(fit.residuals, kind="stable")
    lms = np.stack([bank.entry_landmarks(fit.hits[i].row) for i in order])
    for shape_k in (8, 20):
        fused = fuse_with_landmarks(bank, query, photo_lm, seen, "tall", k=4, fit=fit,
                                    shape_k=shape_k)
        assert np.allclose(fused.landmarks, lms[:shape_k].mean(0), atol=1e-6)
        assert [n["id"] for n in fused.neighbours] == [fit.hits[i].id for i in order[:4]]
        assert _iou(fused.silhouette, true_mask) > 0.8
    mixed = fuse_with_landmarks(bank, query, photo_lm, seen, "tall", k=4, fit=fit, shape_k=0)
    w = slle_weights(query, bank.embeddings[[fit.hits[i].row for i in order[:4]]])
    assert np.allclose(mixed.landmarks, np.einsum("k,kld->ld", w, lms[:4]), atol=1e-6)
    assert not np.allclose(mixed.landmarks, lms[:4].mean(0), atol=1e-6)


def test_landmark_fit_is_lower_for_the_shape_the_photo_shows() -> None:
    from models.slle import landmark_fit

    bank = _bank()
    lm, _ = _rect(0.3, 0.7)
    photo = lm * 0.8 + 0.05
    every = np.ones(8, bool)
    tall = landmark_fit(bank, _embed(0.3, 0.7), photo, every, "tall", candidates=300)
    wide = landmark_fit(bank, _embed(0.3, 0.7), photo, every, "wide", candidates=300)
    assert tall is not None and wide is not None and tall.score() < 0.01 < wide.score()
    # No evidence: too few visible points, or no structure of the category.
    assert landmark_fit(bank, _embed(0.3, 0.7), photo, np.arange(8) < 3, "tall") is None
    assert landmark_fit(bank, _embed(0.3, 0.7), photo, every, "round") is None


def test_category_fit_speaks_against_a_schema_the_parse_does_not_fit() -> None:
    """A skirt photo read as a tank top: the tank top's structures cannot explain the
    points, so its log residual is the higher; categories outside the likeliest get the
    worst one measured."""
    import torch

    from models.garments import CATEGORIES, generate
    from models.pipelines.stages import StructureAligner, parse_garment
    from models.structurenet import embed_photos, normalise_photos, photo_view

    s = generate(1_000_002, size=512)
    assert s.category == "skirt"
    aligner = StructureAligner()
    aligner.load()
    parsed = parse_garment(aligner.parser, s.wild_image)
    view = photo_view(aligner.structurenet, s.wild_image, parsed.mask > 0.5)
    with torch.inference_mode():
        query = embed_photos(aligner.structurenet, normalise_photos(view[None]))[0]
    log_p = np.full(len(CATEGORIES), -10.0)
    log_p[CATEGORIES.index("skirt")], log_p[CATEGORIES.index("tank_top")] = -0.1, -1.0
    aligner.FIT_CATEGORIES = 2
    fits, measured = aligner._log_fits(parsed, aligner.fresh_bank(), query, log_p)
    skirt, tank = fits[CATEGORIES.index("skirt")], fits[CATEGORIES.index("tank_top")]
    assert skirt < tank - 1.0  # residual more than e× smaller
    assert fits[CATEGORIES.index("jeans")] == tank
    assert set(measured) == {"skirt", "tank_top"}
    assert np.log(measured["skirt"].score()) == pytest.approx(skirt)


def test_a_bank_reembedded_keeps_its_structures() -> None:
    bank = _bank(20)
    new = np.random.default_rng(3).normal(size=(20, 48)).astype(np.float32)
    again = bank.reembedded(new, {"weights": "w", "fingerprint": "abc"})
    assert again.model == {"weights": "w", "fingerprint": "abc"}
    assert [m["id"] for m in again.meta] == [m["id"] for m in bank.meta]
    assert np.array_equal(again.landmarks, bank.landmarks)
    assert np.array_equal(again.silhouettes, bank.silhouettes)
    assert np.allclose(np.linalg.norm(again.embeddings, axis=1), 1.0, atol=1e-6)
    assert np.allclose(again.embeddings[4], new[4] / np.linalg.norm(new[4]), atol=1e-6)
    assert again.search(new[7], 1)[0].id == "r7"  # the index is built on the new vectors
    assert np.array_equal(bank.embeddings[0], _bank(20).embeddings[0])  # the old one intact
    with pytest.raises(ValueError, match="embeddings shape"):
        bank.reembedded(new[:19], {})


def test_the_shipped_bank_is_embedded_by_the_shipped_weights() -> None:
    """Retraining StructureNet without rebuilding the bank would search one embedding space
    with queries from another; the bank's header fingerprint catches it."""
    from models.structurenet import DEFAULT_WEIGHTS, StructureNet, embedded_by
    from structure_bank.builder import default_bank_path

    bank = StructureBank.load(default_bank_path())
    assert embedded_by(bank, StructureNet.from_pretrained(DEFAULT_WEIGHTS))


def test_a_stale_runtime_bank_is_embedded_again_once(tmp_path: Path) -> None:
    """A runtime bank copied before a StructureNet upgrade: the service embeds its structures
    again with the weights it runs (on disk, once), and searches a consistent space."""
    from models import pipeline
    from models.pipelines.stages import StructureAligner
    from models.structurenet import DEFAULT_WEIGHTS, StructureNet, embedded_by, reembed_bank
    from structure_bank.builder import default_bank_path

    shipped = StructureBank.load(default_bank_path())
    stale = shipped.reembedded(np.random.default_rng(0).normal(
        size=(len(shipped), shipped.embedding_dim)), {"weights": "old", "fingerprint": "0ld"})
    stale = stale.subset(np.arange(0, len(shipped), 50))
    stale.save(tmp_path / "bank")
    pipeline.configure(tmp_path / "bank")
    try:
        aligner = StructureAligner()
        aligner.load()
        bank = aligner.fresh_bank()
    finally:
        pipeline.configure(None)
    model = StructureNet.from_pretrained(DEFAULT_WEIGHTS)
    on_disk = StructureBank.load(tmp_path / "bank")
    assert embedded_by(bank, model) and embedded_by(on_disk, model)
    assert len(on_disk) == len(stale) and on_disk.meta == stale.meta
    expected = reembed_bank(stale, model).embeddings
    assert np.allclose(on_disk.embeddings, expected, atol=1e-5)
    assert np.allclose(on_disk.embeddings, shipped.embeddings[::50], atol=1e-4)


def test_bank_reembed_and_add_keep_one_embedding_space(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """`flatlay bank reembed` moves a bank to the weights given (a second run has nothing to
    do); `bank add` refuses to put other weights' embeddings into a bank and adds nothing;
    a folder with no bank is a clear error."""
    from cli import main
    from models.structurenet import DEFAULT_WEIGHTS, StructureNet, embedded_by
    from structure_bank.builder import default_bank_path

    shipped = StructureBank.load(default_bank_path()).subset(np.arange(0, 6000, 100))
    stale = shipped.reembedded(shipped.embeddings[::-1], {"weights": "old", "fingerprint": "0"})
    stale.save(tmp_path / "bank")
    bank = str(tmp_path / "bank")
    assert main(["bank", "add", "--bank", bank, "--category", "skirt", "--n", "2"]) == 2
    assert "other StructureNet weights" in capsys.readouterr().err
    assert len(StructureBank.load(tmp_path / "bank")) == len(stale)
    assert main(["bank", "reembed", "--bank", bank]) == 0
    assert "embedded again" in capsys.readouterr().out
    moved = StructureBank.load(tmp_path / "bank")
    assert embedded_by(moved, StructureNet.from_pretrained(DEFAULT_WEIGHTS))
    assert np.allclose(moved.embeddings, shipped.embeddings, atol=1e-4)
    assert main(["bank", "reembed", "--bank", bank]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert main(["bank", "reembed", "--bank", str(tmp_path / "none")]) == 2
    assert "is not a structure bank (no bank.json)" in capsys.readouterr().err
    for command in (["bank", "build", "--n", "2", "--out", str(tmp_path / "new")],
                    ["bank", "add", "--bank", bank, "--category", "skirt", "--n", "2"]):
        assert main([*command, "--weights", str(tmp_path / "none")]) == 2
        assert "holds no StructureNet" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    assert len(StructureBank.load(tmp_path / "bank")) == len(stale)
