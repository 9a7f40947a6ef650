"""Stage 5's registration: the true map it learns from, the composed map it serves, that an
untrained one serves the spline's warp, save/load, the aligner applying it (and not to a
request's structure), training, and the shipped weights beating the spline on validation
photos as served."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.garments import SPLITS, generate
from models.io import decode_image
from models.pipeline import StageClock, StructureSpec
from models.pipelines.flatten import FlattenPipeline
from models.pipelines.stages import StructureAligner
from models.registration import (
    FIELD,
    REGISTRATION_WEIGHTS,
    PhotoRegistration,
    RegistrationNet,
    composed_map,
    endpoint_error,
    true_photo_map,
)
from models.silhouette import CANVAS, VIEW_SIZE
from models.train.common import stages_stamp
from models.train.registration import RegistrationTrainConfig, train_registration
from models.warp import photo_to_canvas_map, resample_photo

PHOTO = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9], [0.5, 0.5]])


def _spline_warp(size: int = 96):  # noqa: ANN202
    """A textured photo, its mask and the spline's map and warp onto a canvas it fills."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (150, 200, 3), dtype=np.uint8)
    mask = np.zeros((150, 200), np.float32)
    mask[30:120, 40:160] = 1.0
    canvas = 0.5 + (PHOTO - 0.5) * 0.8
    photo_map = photo_to_canvas_map(PHOTO, canvas, rgb.shape[:2], size)
    return rgb, mask, photo_map, resample_photo(rgb, mask, photo_map)


def _disc(radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:CANVAS, :CANVAS]
    return (yy - CANVAS / 2) ** 2 + (xx - CANVAS / 2) ** 2 < radius ** 2


def test_the_true_map_inverts_the_renderers_correspondence() -> None:
    # A photo whose garment is the flat-lay shrunk into the canvas's middle half.
    n, size = 100, 32
    rows, cols = np.mgrid[:n, :n].astype(np.float32)
    coords = np.stack([(cols + 0.5) / n * 0.5 + 0.25, (rows + 0.5) / n * 0.5 + 0.25], -1)
    visible = np.ones((n, n), bool)
    visible[:, :10] = False  # occluded: no truth where only those pixels land
    coords[0, 50] = np.nan  # a photo pixel on no garment layer
    truth, known = true_photo_map(visible, coords, size)
    assert truth.shape == (2, size, size) and known.shape == (size, size)
    assert known[8:24, 10:24].all() and not known[:8].any() and not known[:, 24:].any()
    assert not known[:, 8].any()  # the occluded photo columns' cells
    j = np.arange(10, 24)
    # The photo pixel at a cell's centre (a cell averages whole pixels: within half of one).
    centre = ((j + 0.5) / size - 0.25) / 0.5 * n - 0.5
    np.testing.assert_allclose(truth[1, 12, 10:24], centre, atol=0.5)
    np.testing.assert_allclose(truth[0, 10:24, 12], centre, atol=0.5)


def test_the_composed_map_reads_the_splines_map_at_the_displaced_position() -> None:
    s = 64
    ys, xs = np.mgrid[:s, :s].astype(np.float32)
    photo_map = torch.from_numpy(np.stack([2 * ys + 5, 3 * xs + 1]))[None]
    shift = torch.zeros(1, 2, FIELD, FIELD)
    shift[:, 0], shift[:, 1] = 2.0, -1.0  # CANVAS pixels: 1 and −0.5 pixels at 64²
    out = composed_map(photo_map, shift)[0].numpy()
    inner = (slice(4, -4), slice(4, -4))
    np.testing.assert_allclose(out[1][inner], (3 * (xs + 1) + 1)[inner], atol=1e-3)
    np.testing.assert_allclose(out[0][inner], (2 * (ys - 0.5) + 5)[inner], atol=1e-3)
    np.testing.assert_allclose(composed_map(photo_map, shift * 0)[0].numpy(),
                               photo_map[0].numpy(), atol=1e-3)


def test_the_endpoint_error_is_the_mean_distance_where_the_truth_is_known() -> None:
    truth = torch.zeros(1, 2, 4, 4)
    guess = truth.clone()
    guess[0, 0, 0, 0], guess[0, 1, 0, 0] = 3.0, 4.0  # 5 px off at one pixel
    guess[0, :, 3, 3] = 100.0  # off where nothing is known: not counted
    known = torch.zeros(1, 4, 4, dtype=torch.bool)
    known[0, :2, :2] = True
    err = endpoint_error(guess, truth, known, torch.tensor([2.0]))
    assert err.shape == (1,) and abs(float(err[0]) - 5 / 4 * 2) < 1e-2


def test_an_untrained_registration_serves_the_splines_warp() -> None:
    torch.manual_seed(0)
    reg = PhotoRegistration(RegistrationNet(width=8))
    rgb, mask, photo_map, warped = _spline_warp()
    again, fixed = reg.register(rgb, mask, photo_map, _disc(30), warped)
    np.testing.assert_allclose(fixed, photo_map, atol=1e-3)
    assert np.abs(again.image.astype(int) - warped.image).max() <= 1
    with pytest.raises(ValueError, match="works at 128"):
        reg.displacement(_disc(10)[:64, :64], warped)


def test_registration_round_trips_and_moves_the_photo(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = RegistrationNet(width=8)
    with torch.no_grad():
        net.out.bias.copy_(torch.tensor([6.0, 0.0]))  # every pixel reads 6 px to its right
    reg = PhotoRegistration(net)
    rgb, mask, photo_map, warped = _spline_warp()
    moved, fixed = reg.register(rgb, mask, photo_map, _disc(30), warped)
    # 6 CANVAS px are 4.5 px of this 96² canvas: the map's columns there, rows unchanged.
    np.testing.assert_allclose(fixed[:, 40:60, 40:60],
                               photo_map[:, 40:60, 44:64] * 0.5 + photo_map[:, 40:60, 45:65]
                               * 0.5, atol=0.05)
    assert not (moved.image == warped.image).all()
    reg.save_pretrained(tmp_path / "w", {"metrics": {"epe_val": 1.0}})
    back = PhotoRegistration.from_pretrained(tmp_path / "w")
    assert back.net.config() == {"width": 8}
    np.testing.assert_array_equal(back.register(rgb, mask, photo_map, _disc(30), warped)[1],
                                  fixed)
    with pytest.raises(FileNotFoundError, match="flatlay train registration"):
        PhotoRegistration.from_pretrained(tmp_path / "none")


def test_the_aligner_registers_what_retrieval_decided_and_keeps_a_given_structure() -> None:
    s = generate(SPLITS["val"][0] + 7, size=256)
    photo = decode_image(s.wild_jpeg)
    clock = StageClock(FlattenPipeline.stages, None)
    plain = StructureAligner(register_photo=False)
    plain.load()
    assert plain.registration is None
    spline = plain.align(photo, None, 256, clock)
    full = StructureAligner()
    full.load()
    assert full.registration is not None  # the shipped one, by default
    net = RegistrationNet(width=8)
    with torch.no_grad():
        net.out.bias.fill_(5.0)
    full.registration = PhotoRegistration(net)
    moved = full.align(photo, None, 256, clock)
    assert moved.photo_map.shape == (2, 256, 256)
    assert np.abs(moved.photo_map - spline.photo_map).max() > 1.0
    assert not (moved.warped.image == spline.warped.image).all()
    given = StructureSpec(category=s.category, landmarks=s.flat_landmarks)
    kept = full.align(photo, given, 256, clock)
    np.testing.assert_array_equal(kept.photo_map, plain.align(photo, given, 256,
                                                              clock).photo_map)


def test_a_canvas_above_the_view_size_is_registered_as_at_the_view_size(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The refiner and registration read the spline's warp at VIEW_SIZE² whatever the served
    # canvas, and the photo is sampled at full size once, through the registered map: a
    # 1024² canvas gets the same refined Ŝ and, at half the pitch, the same registered map as
    # a 512² one.
    s = generate(SPLITS["val"][0] + 11, size=512)
    photo = decode_image(s.wild_jpeg)
    clock = StageClock(FlattenPipeline.stages, None)
    aligner = StructureAligner()
    aligner.load()
    at_view = aligner.align(photo, None, VIEW_SIZE, clock)
    sampled = []

    def counted(rgb, mask, photo_map):  # noqa: ANN001, ANN202
        sampled.append(photo_map.shape[-1])
        return resample_photo(rgb, mask, photo_map)

    monkeypatch.setattr("models.warp.resample_photo", counted)
    monkeypatch.setattr("models.registration.resample_photo", counted)
    above = aligner.align(photo, None, 2 * VIEW_SIZE, clock)
    assert sampled == [VIEW_SIZE, 2 * VIEW_SIZE]
    np.testing.assert_array_equal(above.fused.silhouette, at_view.fused.silhouette)
    assert above.warped.image.shape == (2 * VIEW_SIZE, 2 * VIEW_SIZE, 3)
    pooled = above.photo_map.reshape(2, VIEW_SIZE, 2, VIEW_SIZE, 2).mean((2, 4))
    inside = at_view.warped.coverage
    assert np.abs(pooled - at_view.photo_map)[:, inside].max() < 0.5  # photo px


def test_training_resumes_and_exports_nothing_that_does_not_beat_the_spline(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = RegistrationTrainConfig(out=str(tmp_path / "w"), run_dir=str(tmp_path / "run"),
                                  model={"width": 8}, n_train=6, n_val=3, photo_size=256,
                                  steps=2, batch=4, lr=1e-12, eval_every=2, ckpt_every=1,
                                  workers=1, device="cpu")
    metrics = train_registration(cfg)
    assert {"epe_val", "epe_val_right", "epe_heldout_family"} <= set(metrics)
    # A learning rate of nothing leaves the zero-initialised displacement: the spline.
    assert "not exported: validation end-point error" in capsys.readouterr().out
    assert not (tmp_path / "w").exists()
    cfg.steps = 3
    train_registration(cfg)  # resumes at step 2 from the cached stage views
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"] == 3
    stamp = stages_stamp(refined=True)
    assert sorted(p.name for p in (tmp_path / "run" / "views").iterdir()) == [
        f"train-300000-6-standard-256-{stamp}", f"val-1000000-3-heldout-256-{stamp}",
        f"val-1000000-3-standard-256-{stamp}"]


def test_a_few_steps_lower_the_error_on_their_batch(tmp_path: Path) -> None:
    """The loss is differentiable through the composed map: a shift the spline made is
    learnt back."""
    torch.manual_seed(0)
    s = 32
    ys, xs = np.mgrid[:CANVAS, :CANVAS].astype(np.float32)
    truth = torch.from_numpy(np.stack([ys * 2, xs * 2]))[None].repeat(4, 1, 1, 1)
    spline = truth.clone()
    spline[:, 1] += 6.0  # every column 3 canvas px off
    known = torch.zeros(4, CANVAS, CANVAS, dtype=torch.bool)
    known[:, s:-s, s:-s] = True
    x = torch.randn(4, 6, CANVAS, CANVAS)
    net = RegistrationNet(width=8)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    scale = torch.ones(4)
    first = endpoint_error(composed_map(spline, net(x)), truth, known, scale).mean().item()
    for _ in range(30):
        loss = endpoint_error(composed_map(spline, net(x)), truth, known, scale).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first * 0.5, (first, loss.item())


def test_shipped_registration_beats_the_spline_on_validation_photos() -> None:
    """Validation seeds past those the training run evaluated on, through stages 1–5 as
    served at 512², registration on and off, against the renderer's correspondence."""
    reg = PhotoRegistration.from_pretrained(REGISTRATION_WEIGHTS)
    start = SPLITS["val"][0] + reg.meta["training"]["config"]["n_val"]
    plain = StructureAligner(register_photo=False)
    plain.load()
    clock = StageClock(FlattenPipeline.stages, None)
    base, registered = [], []
    for seed in range(start, start + 30):
        s = generate(seed, size=512, coords=True)
        coarse = plain.align(decode_image(s.wild_jpeg), None, 512, clock)
        truth, known = true_photo_map(s.wild_mask, s.wild_flat_coords)
        pm = F.adaptive_avg_pool2d(torch.from_numpy(coarse.photo_map)[None], CANVAS)
        fixed = composed_map(pm, reg.displacement(coarse.fused.silhouette, coarse.warped))
        t, k = torch.from_numpy(truth)[None], torch.from_numpy(known)[None]
        base.append(float(endpoint_error(pm, t, k, 100 / 512)[0]))
        registered.append(float(endpoint_error(fixed, t, k, 100 / 512)[0]))
    assert np.mean(registered) < np.mean(base) * 0.95, (np.mean(registered), np.mean(base))


def test_a_warm_start_continues_on_photos_its_weights_have_not_seen(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = RegistrationNet(width=8)
    torch.nn.init.normal_(net.out.weight, std=0.5)  # a displacement that is not zero
    start = tmp_path / "start"
    PhotoRegistration(net).save_pretrained(start, {"training": {
        "command": "flatlay train registration --steps 5 --n-train 6", "cumulative_steps": 5,
        "cumulative_minutes": 0.5, "seen_seeds": [300000, 300006]}})
    cfg = RegistrationTrainConfig(out=str(start), run_dir=str(tmp_path / "run"),
                                  init=str(start), n_train=4, n_val=3, photo_size=256,
                                  steps=1, batch=4, lr=1e-12, eval_every=1, workers=1,
                                  device="cpu")
    metrics = train_registration(cfg)
    assert "train-300006-4-standard-256-" in " ".join(
        p.name for p in (tmp_path / "run" / "views").iterdir())
    # It trained from the start's weights (a learning rate of nothing keeps them), and the
    # start, shipped at `out`, is a rival it does not beat: nothing exported over it.
    from models.train.registration import evaluate, registration_data

    sets = {k: registration_data(tmp_path / "run", "val", SPLITS["val"][0], 3, family, 256, 1)
            for k, family in (("val", "standard"), ("heldout_family", "heldout"))}
    right = {k: np.ones(3, bool) for k in sets}
    assert metrics["epe_val"] == evaluate(net, sets, right)["epe_val"]
    assert metrics["epe_val"] != evaluate(None, sets, right)["epe_val"]
    assert PhotoRegistration.from_pretrained(start).meta["training"]["cumulative_steps"] == 5
