"""`flatlay bench quality`: the metrics on hand-made cases, the command end to end, and its
refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import models.pipeline as pipeline_module
from cli import main
from models.attributes import PATTERNS
from models.eval.quality import (
    CEILINGS,
    EVAL_SIZE,
    PSNR_CAP,
    Truth,
    _summary,
    benchmark_quality,
    category_confusion,
    ceiling_images,
    delta_e,
    downsample_mask,
    downsample_rgb,
    garment_coverage,
    landmark_nme,
    load_truth,
    on_white,
    per_pattern,
    psnr,
    registered_photo,
    review_rates,
    silhouette_iou,
    ssim_scores,
    write_report,
)
from models.garments import SPLITS, generate
from models.pipeline import FlatLayResult, PipelineError, PipelineOptions
from models.pipelines.cutout import CutoutPipeline


class OddSeedsFail(CutoutPipeline):
    """The cutout baseline, refusing photos whose seed (options.seed) is odd."""

    name = "test-odd-fail"

    def __call__(self, rgb: np.ndarray, options: PipelineOptions,
                 progress: object = None) -> FlatLayResult:
        if options.seed is not None and options.seed % 2:
            raise PipelineError("odd_seed", "odd seeds are refused")
        return super().__call__(rgb, options)


class WontLoad(CutoutPipeline):
    name = "test-wont-load"

    def load(self) -> None:
        raise FileNotFoundError("no weights here")


@pytest.fixture
def test_pipelines(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register the two pipelines above for one test (a private copy of the registry)."""
    registry = dict(pipeline_module._REGISTRY)
    registry["test-odd-fail"] = f"{__name__}:OddSeedsFail"
    registry["test-wont-load"] = f"{__name__}:WontLoad"
    monkeypatch.setattr(pipeline_module, "_REGISTRY", registry)
    monkeypatch.setattr(pipeline_module, "_INSTANCES", {})


# ---- metrics ------------------------------------------------------------------------------


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (64, 64, 3), dtype=np.uint8)


def _square(x0: int, y0: int, side: int = 20, size: int = EVAL_SIZE) -> np.ndarray:
    mask = np.zeros((size, size), bool)
    mask[y0:y0 + side, x0:x0 + side] = True
    return mask


def test_identical_images_score_perfectly() -> None:
    img = _image()
    mask = np.zeros(img.shape[:2], bool)
    mask[10:50, 20:40] = True
    garment, canvas = ssim_scores(img, img.copy(), mask)
    assert garment == pytest.approx(1.0) and canvas == pytest.approx(1.0)
    assert psnr(img, img.copy()) == PSNR_CAP
    assert delta_e(img, img.copy(), mask) == pytest.approx(0.0, abs=1e-9)
    assert silhouette_iou(mask, mask.copy()) == 1.0
    pts = np.random.default_rng(1).random((23, 2)).astype(np.float32)
    assert landmark_nme(pts, pts.copy()) == 0.0


def test_iou_of_a_shifted_square() -> None:
    # 20×20 squares, one shifted 5 px right: overlap 15×20 = 300, union 400 + 400 − 300 = 500.
    assert silhouette_iou(_square(100, 100), _square(105, 100)) == pytest.approx(300 / 500)
    # Shifted 5 px right and 5 down: overlap 15×15 = 225, union 800 − 225 = 575.
    assert silhouette_iou(_square(100, 100), _square(105, 105)) == pytest.approx(225 / 575)
    assert silhouette_iou(_square(0, 0), _square(50, 50)) == 0.0
    empty = np.zeros((8, 8), bool)
    assert silhouette_iou(empty, empty) == 1.0


def test_nme_is_the_mean_unit_square_distance() -> None:
    truth = np.array([[0.5, 0.5], [0.2, 0.3], [0.8, 0.9]], np.float32)
    pred = truth + np.array([[0.03, 0.04], [0.0, 0.0], [-0.06, 0.08]], np.float32)
    assert landmark_nme(pred, truth) == pytest.approx((0.05 + 0.0 + 0.1) / 3 / np.sqrt(2), abs=1e-6)
    with pytest.raises(ValueError):
        landmark_nme(pred[:2], truth)


def test_delta_e_and_ssim_garment_look_inside_the_mask_only() -> None:
    truth = np.full((64, 64, 3), 200, np.uint8)
    out = truth.copy()
    out[:, 40:] = (0, 0, 255)  # wrong colour, but only right of the garment
    mask = np.zeros((64, 64), bool)
    mask[10:50, 5:25] = True  # more than a 7-px window away from the change
    assert delta_e(out, truth, mask) == pytest.approx(0.0, abs=1e-9)
    garment, canvas = ssim_scores(out, truth, mask)
    assert garment == pytest.approx(1.0) and canvas < 0.9
    out[20, 10] = (255, 0, 0)
    assert delta_e(out, truth, mask) > 0


def test_garment_ssim_splits_by_the_silhouette_that_covers_it() -> None:
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = np.clip(truth.astype(int) + rng.integers(-30, 31, truth.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[8:56, 8:56] = True
    pred = np.zeros_like(mask)
    pred[8:56, 8:40] = True  # two thirds of the garment, nothing outside it
    out[~pred] = 255  # what the pipeline left white
    split = garment_coverage(out, pred, truth, mask)
    garment = ssim_scores(out, truth, mask)[0]
    assert split["cover"] == pytest.approx(2 / 3)
    assert split["ssim_covered"] > split["ssim_missed"]
    assert garment == pytest.approx(split["cover"] * split["ssim_covered"]
                                    + (1 - split["cover"]) * split["ssim_missed"])
    assert garment_coverage(out, mask, truth, mask)["cover"] == 1.0


def test_alpha_and_composite_at_the_eval_size() -> None:
    alpha = np.zeros((1024, 1024), np.float32)
    alpha[:512, :] = 1.0  # top half: exactly half of the pixels after area averaging
    alpha[512:516, :] = 1.0  # one more 256² row covered
    small = downsample_mask(alpha)
    assert small.shape == (EVAL_SIZE, EVAL_SIZE)
    assert small[:129].all() and not small[129:].any()
    half = np.full((4, 4), 0.5, np.float32)
    assert not downsample_mask(half, size=4).any()  # > 0.5, strictly
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)
    assert on_white(rgba)[0, 0].tolist() == [10, 20, 30]
    assert on_white(rgba)[1, 1].tolist() == [255, 255, 255]


def test_ceilings_undo_a_colour_cast_and_rank_the_truth_by_resolution() -> None:
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:EVAL_SIZE, :EVAL_SIZE]
    mask = (np.abs(yy - 128) < 90) & (np.abs(xx - 128) < 70)
    stripes = (np.sin(xx / 2.5) > 0)[..., None] * np.array([200, 40, 60]) + 30
    flat = np.where(mask[..., None], stripes + rng.integers(0, 20, (256, 256, 3)), 255)
    flat = flat.astype(np.uint8)
    # The photo, registered without error, shows the truth darker, save a patch it hides.
    known = mask & ~((np.abs(yy - 100) < 20) & (np.abs(xx - 100) < 20))
    registered = np.where(known[..., None], flat * 0.8, 255).astype(np.uint8)
    truth = Truth(seed=0, category="tshirt", difficulty=0.0, scene="", photo=flat, flat=flat,
                  mask=mask, landmarks=np.zeros((2, 2), np.float32), registered=registered,
                  registered_known=known)
    alpha = mask.astype(np.float32)
    # A pipeline output with a colour cast (an affine map of the truth) in the true silhouette,
    # its stripes misregistered by 4 px.
    cast = np.where(mask[..., None], np.roll(flat, 4, 1) * np.array([0.7, 0.9, 1.1]) + 12, 255)
    cast = np.clip(cast, 0, 255).astype(np.uint8)
    images = ceiling_images(cast, alpha, truth)
    assert tuple(images) == CEILINGS
    assert delta_e(cast, flat, mask) > 5.0
    ssim = {k: ssim_scores(v, flat, mask)[0] for k, v in images.items()}
    # Registration mends the stripes, the colour map what registration leaves of the colour.
    assert ssim["ceiling: registration"] > ssim["ceiling: oracle colour"] + 0.2
    # (one map for the whole garment, the hidden patch's misregistered pixels included)
    mended = delta_e(images["ceiling: registration, oracle colour"], flat, known)
    assert mended < 3.0 and mended < 0.5 * delta_e(images["ceiling: registration"], flat, known)
    # Where the photo does not show the garment, the pipeline's own pixels stay.
    hidden = mask & ~known
    assert (images["ceiling: registration"][hidden] == cast[hidden]).all()
    no_photo = ceiling_images(cast, alpha, Truth(**{**truth.__dict__, "registered": None}))
    assert "ceiling: registration" not in no_photo and len(no_photo) == len(CEILINGS) - 2
    assert ssim["ceiling: truth 64²"] < ssim["ceiling: truth 128²"] < ssim["ceiling: truth"]
    assert ssim["ceiling: truth"] == pytest.approx(1.0)
    assert (images["ceiling: truth"][~mask] == 255).all()  # white outside the silhouette


# ---- the run ------------------------------------------------------------------------------


def test_failures_are_counted_and_the_run_is_deterministic(test_pipelines: None,
                                                          tmp_path: Path) -> None:
    runs = [benchmark_quality("test", 2, ["cutout", "test-odd-fail"], size=256, grid_rows=2,
                              progress=False) for _ in range(2)]
    result, grid = runs[0]
    fail = result["pipelines"]["test-odd-fail"]
    assert fail["n"] == 2 and fail["n_ok"] == 1 and fail["failures"] == {"odd_seed": 1}
    assert result["pipelines"]["cutout"]["n_ok"] == 2
    # Seed 1_100_000 (even) went through both: the same cutout, the same scores.
    first = result["assets"][0]["pipelines"]
    assert first["test-odd-fail"]["silhouette_iou"] == first["cutout"]["silhouette_iou"]
    assert result["assets"][1]["pipelines"]["test-odd-fail"]["failure"] == "odd_seed"

    def scores(r: dict) -> list:
        return [{p: {k: v for k, v in m.items() if k != "seconds"}
                 for p, m in a["pipelines"].items()} for a in r["assets"]]

    assert scores(runs[0][0]) == scores(runs[1][0])
    assert grid is not None and grid.width > 4 * EVAL_SIZE  # photo, 2 pipelines, truth
    paths = write_report(result, grid, tmp_path)
    assert "odd_seed ×1" in paths["md"].read_text()


def test_ceiling_rows_skip_the_photos_flatten_refused(monkeypatch: pytest.MonkeyPatch,
                                                      test_pipelines: None) -> None:
    # `flatten` stands in for a pipeline that refuses odd seeds: the ceilings, drawn inside its
    # silhouette, exist only for the photos it delivered.
    registry = dict(pipeline_module._REGISTRY)
    registry["flatten"] = f"{__name__}:OddSeedsFail"
    monkeypatch.setattr(pipeline_module, "_REGISTRY", registry)
    result, _ = benchmark_quality("test", 2, ["flatten"], size=256, grid_rows=0,
                                  progress=False, ceilings=True)
    assert result["pipelines"]["flatten"]["n"] == 2
    assert result["pipelines"]["flatten"]["n_ok"] == 1
    for ceiling in CEILINGS:
        assert result["pipelines"][ceiling]["n"] == 1
    assert ceiling not in result["assets"][1]["pipelines"]


def test_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    code = main(["bench", "quality", "--split", "test", "--n", "2", "--pipelines", "cutout",
                 "--size", "256", "--grid-rows", "2", "--out-dir", str(out), "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "quality-test.json").read_text())
    assert printed["pipelines"] == saved["pipelines"]
    cutout = saved["pipelines"]["cutout"]
    assert cutout["n"] == 2 and cutout["failures"] == {}
    assert 0.0 <= cutout["silhouette_iou"] <= 1.0 and cutout["seconds_p50"] > 0
    assert [a["seed"] for a in saved["assets"]] == [1_100_000, 1_100_001]
    assert set(saved["per_category"]) == {a["category"] for a in saved["assets"]}
    assert set(saved["per_pattern"]) == {a["pattern"] for a in saved["assets"]} <= set(PATTERNS)
    md = (out / "quality-test.md").read_text()
    assert "| cutout |" in md and "quality-test.png" in md and "Per true pattern" in md
    # The category confusion is drawn where the pipeline decides a category.
    assert bool(saved["confusion"]) == (out / "quality-test-confusion.png").is_file()
    with Image.open(out / "quality-test.png") as grid:
        assert grid.width > 3 * EVAL_SIZE and grid.height > 2 * EVAL_SIZE


def test_an_update_re_runs_the_named_pipelines_and_keeps_the_others(
        test_pipelines: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = ["bench", "quality", "--n", "3", "--size", "256", "--grid-rows", "2",
              "--out-dir", str(tmp_path)]
    assert main([*common, "--pipelines", "cutout,test-odd-fail"]) == 0
    path = tmp_path / "quality-test.json"
    first = json.loads(path.read_text())
    # Marks on the third asset, outside the grid: a kept record stays as recorded, a
    # re-run one is measured again.
    recorded = json.loads(path.read_text())
    recorded["assets"][2]["pipelines"]["test-odd-fail"]["silhouette_iou"] = 0.123
    recorded["assets"][2]["pipelines"]["cutout"]["silhouette_iou"] = 0.5
    # On a grid asset, a wobble in the last digits (the CPU's float sums) is the same model.
    recorded["assets"][0]["pipelines"]["test-odd-fail"]["silhouette_iou"] += 2e-5
    path.write_text(json.dumps(recorded))
    assert main([*common, "--pipelines", "cutout", "--update"]) == 0
    saved = json.loads(path.read_text())
    assert list(saved["pipelines"]) == ["cutout", "test-odd-fail"]
    assert saved["updated"] == {"re_run": ["cutout"], "kept": ["test-odd-fail"], "checked_on": 2}
    third = saved["assets"][2]["pipelines"]
    assert third["test-odd-fail"]["silhouette_iou"] == 0.123
    assert third["cutout"]["silhouette_iou"] == first["assets"][2]["pipelines"]["cutout"][
        "silhouette_iou"]
    kept = [a["pipelines"]["test-odd-fail"] for a in saved["assets"]]
    ok = [r["silhouette_iou"] for r in kept if r["failure"] is None]
    assert saved["pipelines"]["test-odd-fail"]["silhouette_iou"] == pytest.approx(np.mean(ok))
    assert saved["pipelines"]["cutout"]["silhouette_iou"] == pytest.approx(
        first["pipelines"]["cutout"]["silhouette_iou"], abs=1e-5)
    assert "cutout re-run; test-odd-fail kept from the recorded run" in (
        tmp_path / "quality-test.md").read_text()
    with Image.open(tmp_path / "quality-test.png") as grid:  # both pipelines drawn
        assert grid.width > 4 * EVAL_SIZE
    # A kept record that no longer reproduces on a grid asset stops the update, and the
    # recorded files stay as they were.
    saved["assets"][0]["pipelines"]["test-odd-fail"]["silhouette_iou"] = 0.321
    path.write_text(json.dumps(saved))
    before = {f.name: f.read_bytes() for f in tmp_path.iterdir()}
    capsys.readouterr()
    assert main([*common, "--pipelines", "cutout", "--update"]) == 2
    err = capsys.readouterr().err
    assert "test-odd-fail on seed 1100000 no longer reproduces its recorded silhouette_iou" in err
    assert {f.name: f.read_bytes() for f in tmp_path.iterdir()} == before
    # Without a grid the first asset is still checked.
    assert main([*common[:7], "0", *common[8:], "--pipelines", "cutout", "--update"]) == 2
    assert "no longer reproduces" in capsys.readouterr().err
    # Another run's result (here: other seeds) is not updated.
    assert main([*common[:2], "--n", "2", *common[4:], "--pipelines", "cutout",
                 "--update"]) == 2
    assert "the earlier result has seeds [1100000, 1100002]" in capsys.readouterr().err
    # A result without the kept pipeline's per-asset records is not updated either.
    del saved["assets"][1]["pipelines"]["test-odd-fail"]
    path.write_text(json.dumps(saved))
    assert main([*common, "--pipelines", "cutout", "--update"]) == 2
    assert "lacks the kept pipelines' per-asset records" in capsys.readouterr().err


def test_heldout_shorthand_and_no_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "quality", "--heldout", "--n", "1", "--pipelines", "cutout",
                 "--size", "256", "--grid-rows", "0", "--out-dir", str(tmp_path)])
    assert code == 0
    assert "cutout" in capsys.readouterr().out
    saved = json.loads((tmp_path / "quality-heldout.json").read_text())
    assert saved["seeds"] == [1_200_000, 1_200_000]
    assert not (tmp_path / "quality-heldout.png").exists()


@pytest.mark.parametrize("argv, message", [
    (["--n", "0"], "n must be in"),
    (["--pipelines", "cutout,nope"], "unknown pipeline(s) nope"),
    (["--pipelines", ","], "unknown pipeline(s) (none given)"),
    (["--split", "dev"], "unknown split 'dev'"),
    (["--split", "val", "--heldout"], "--heldout contradicts --split val"),
    (["--size", "100"], "size must be within"),
    (["--grid-rows", "-1"], "grid rows must be non-negative"),
    (["--hints", "--pipelines", "flatten,cutout"], "--hints runs one pipeline"),
    (["--hints", "--n", "0"], "n must be in"),
    (["--hints", "--pipelines", "nope"], "unknown pipeline 'nope'"),
    (["--hints", "--size", "100"], "size must be within"),
    (["--update"], "--update re-runs the pipelines named by --pipelines"),
    (["--update", "--pipelines", "cutout"], "cannot read the recorded result"),
    (["--update", "--hints", "--pipelines", "cutout"], "--update keeps rows of the quality"),
])
def test_bad_arguments_exit_2(argv: list[str], message: str, tmp_path: Path,
                              capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "quality", "--out-dir", str(tmp_path), *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1
    assert not any(tmp_path.iterdir())


def test_a_pipeline_that_cannot_load_exits_2(test_pipelines: None, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["bench", "quality", "--n", "1", "--size", "256", "--out-dir", str(tmp_path),
                 "--pipelines", "cutout,test-wont-load"])
    err = capsys.readouterr().err
    assert code == 2 and "'test-wont-load' could not load" in err and "no weights here" in err
    assert not any(tmp_path.iterdir())


def test_a_validation_seed_drawn_from_the_heldout_shape_family() -> None:
    # The held-out family's diagnosis on validation seeds (bench/tune_ragdiffusion.py
    # --family heldout): the same garment and photo draw, another shape family.
    seed = SPLITS["val"][0]
    standard, same, heldout = (load_truth(seed, 64, f) for f in (None, "standard", "heldout"))
    assert np.array_equal(standard.mask, same.mask) and standard.category == heldout.category
    assert not np.array_equal(standard.mask, heldout.mask)
    with pytest.raises(ValueError, match="family"):
        load_truth(seed, 64, "plaid")


def test_silhouette_iou_split_by_category_outcome() -> None:
    def rec(iou: float, right: bool) -> dict:
        return {"failure": None, "seconds": 0.1, "category": "tshirt", "category_ok": right,
                "landmark_nme": None, "silhouette_iou": iou, "ssim_garment": 0.5,
                "ssim_canvas": 0.5, "psnr": 20.0, "delta_e": 10.0}

    s = _summary([rec(0.9, True), rec(0.8, True), rec(0.5, False)])
    assert s["silhouette_iou_category_right"] == pytest.approx(0.85)
    assert s["silhouette_iou_category_wrong"] == pytest.approx(0.5)
    assert s["silhouette_iou"] == pytest.approx(2.2 / 3)
    assert _summary([rec(0.9, True)])["silhouette_iou_category_wrong"] is None


def test_review_rates_and_the_category_confusion() -> None:
    def rec(conf: float | None, right: bool, category: str = "tshirt") -> dict:
        return {"failure": None, "category": category, "category_ok": right,
                "category_confidence": conf}

    rates = review_rates([rec(0.3, False), rec(0.5, True), rec(0.9, True), rec(0.95, False),
                          rec(0.99, True), rec(None, True)], below=0.6)
    assert rates == {"review_below": 0.6, "review_share": 0.4, "wrong_rate_flagged": 0.5,
                     "wrong_rate_rest": pytest.approx(1 / 3)}
    assert review_rates([rec(None, True)]) == {}  # no confidence: nothing to say
    assets = [{"category": "tshirt", "pipelines": {"cutout": {"category": None},
                                                   "flatten": rec(0.9, True)}},
              {"category": "tshirt", "pipelines": {"cutout": {"category": None},
                                                   "flatten": rec(0.4, False, "shirt")}},
              {"category": "skirt", "pipelines": {"cutout": {"category": None},
                                                  "flatten": {"failure": "garment_not_found"}}}]
    assert category_confusion(assets) == {
        "pipeline": "flatten",
        "counts": {"skirt": {"failed": 1}, "tshirt": {"tshirt": 1, "shirt": 1}}}


def test_garment_metrics_per_true_pattern() -> None:
    def rec(ssim: float, de: float, failure: str | None = None) -> dict:
        return {"failure": failure, "ssim_garment": ssim, "delta_e": de}

    assets = [{"pattern": "printed", "pipelines": {"flatten": rec(0.4, 10.0),
                                                   "ragdiffusion": rec(0.6, 8.0)}},
              {"pattern": "printed", "pipelines": {"flatten": rec(0.2, 20.0),
                                                   "ragdiffusion": rec(0.0, 0.0, "x")}},
              {"pattern": "solid", "pipelines": {"flatten": rec(0.5, 5.0)}}]
    table = per_pattern(assets, ["flatten", "ragdiffusion"])
    assert list(table) == ["solid", "printed"]  # in PATTERNS' order
    assert table["printed"]["flatten"] == {"n": 2, "n_ok": 2, "ssim_garment": 0.3,
                                           "delta_e": 15.0}
    # A failed job counts in n, not in the means.
    assert table["printed"]["ragdiffusion"] == {"n": 2, "n_ok": 1, "ssim_garment": 0.6,
                                                "delta_e": 8.0}
    assert table["solid"]["ragdiffusion"] == {"n": 1, "n_ok": 0, "ssim_garment": None,
                                              "delta_e": None}


def test_the_photo_registered_through_the_true_correspondence() -> None:
    # A garment-world photo moved back onto its flat-lay by the renderer's own correspondence
    # lands on the truth (shading and camera aside); asking for it changes no pixel.
    sample = generate(1_000_003, size=256, coords=True, difficulty=0.1)
    plain = generate(1_000_003, size=256, difficulty=0.1)
    assert (sample.wild_image == plain.wild_image).all() and plain.wild_flat_coords is None
    coords = sample.wild_flat_coords
    assert coords.shape == (256, 256, 2) and np.isfinite(coords[sample.wild_mask]).all()
    assert np.isnan(coords[~sample.wild_mask & ~sample.wild_occluder_mask]).mean() > 0.9
    image, known = registered_photo(sample.wild_image, sample.wild_mask, coords)
    truth_mask = downsample_mask(sample.flat_mask)
    truth = downsample_rgb(sample.flat_image)
    assert (known & truth_mask).sum() > 0.8 * truth_mask.sum()
    assert (known & ~truth_mask).sum() < 0.03 * known.sum()  # lands on the garment
    assert (image[~known] == 255).all()
    assert ssim_scores(image, truth, truth_mask & known)[0] > 0.6
    # The identity correspondence gives the photo back, box-averaged to the canvas.
    yy, xx = np.mgrid[:512, :512]
    ident = np.stack([(xx + 0.5) / 512, (yy + 0.5) / 512], -1).astype(np.float32)
    photo = np.random.default_rng(0).integers(0, 256, (512, 512, 3)).astype(np.uint8)
    visible = np.zeros((512, 512), bool)
    visible[100:400, 50:300] = True
    image, known = registered_photo(photo, visible, ident)
    assert known.sum() == 150 * 125 and known[50:200, 25:150].all()
    box = photo.reshape(256, 2, 256, 2, 3).mean((1, 3))
    assert np.abs(image[50:200, 25:150].astype(float) - box[50:200, 25:150]).max() <= 0.5
