"""The learned garment parser: its network, read-out, training loop and shipped weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from models.garments import CATEGORIES, flip_permutation, generate, num_landmarks
from models.parser import (
    PARSER_WEIGHTS,
    GarmentParser,
    ParserNet,
    letterbox,
    soft_argmax,
    square_view,
    total_landmarks,
    zoom_square,
)


def test_network_shapes() -> None:
    out = ParserNet(8)(torch.zeros(2, 3, 128, 128))
    assert out["mask"].shape == (2, 1, 64, 64)
    assert out["category"].shape == (2, len(CATEGORIES))
    assert out["heatmaps"].shape == (2, total_landmarks(), 32, 32)
    assert out["visibility"].shape == (2, total_landmarks())


def test_soft_argmax_finds_a_peak_between_cells() -> None:
    h = torch.full((1, 1, 32, 32), -10.0)
    h[0, 0, 10, 20] = h[0, 0, 10, 21] = 5.0  # two equal cells: the point between them
    xy = soft_argmax(h)[0, 0].numpy()
    assert xy == pytest.approx([21.0 / 32, 10.5 / 32], abs=1e-4)
    h[0, 0, 2, 2] = 4.0  # a weaker mode far away does not pull it
    assert soft_argmax(h)[0, 0].numpy() == pytest.approx(xy, abs=1e-3)


def test_letterbox_keeps_the_photo_undistorted() -> None:
    rgb = np.zeros((100, 300, 3), np.uint8)
    rgb[:, :, 0] = 200
    square, scale, (pad_x, pad_y) = letterbox(rgb)
    assert square.shape == (128, 128, 3)
    assert scale == pytest.approx(128 / 300)
    assert pad_x == 0 and pad_y == (128 - round(100 * scale)) // 2
    assert (square[pad_y + 2:pad_y + 40, :, 0] == 200).all()


@pytest.fixture(scope="module")
def parser() -> GarmentParser:
    return GarmentParser.from_pretrained(PARSER_WEIGHTS)


def test_shipped_parser_finds_garment_category_and_landmarks(parser: GarmentParser) -> None:
    ious, hits, errs = [], [], []
    for seed in range(1_100_000, 1_100_012):
        s = generate(seed, size=384)
        p = parser.parse(s.wild_image)
        assert p.mask.shape == (384, 384) and 0 <= p.mask.min() and p.mask.max() <= 1
        assert sum(p.category_probs.values()) == pytest.approx(1.0, abs=1e-3)
        m = p.mask > 0.5
        ious.append((m & s.wild_mask).sum() / max(1, (m | s.wild_mask).sum()))
        hits.append(p.category == s.category)
        own = parser.read_as(p, s.category)
        assert own.landmarks.shape == (num_landmarks(s.category), 2)
        vis = s.wild_visibility.astype(bool)
        errs += np.linalg.norm(own.landmarks - s.wild_landmarks, axis=1)[vis].tolist()
    assert np.mean(ious) > 0.8
    assert np.mean(hits) > 0.4
    assert np.median(errs) < 0.06


def test_read_as_gives_another_schema_without_a_second_pass(parser: GarmentParser) -> None:
    s = generate(1_100_003, size=256)
    p = parser.parse(s.wild_image)
    other = next(c for c in CATEGORIES if num_landmarks(c) != num_landmarks(p.category))
    q = parser.read_as(p, other)
    assert q.category == other and q.landmarks.shape == (num_landmarks(other), 2)
    assert q.mask is p.mask and q.category_probs == p.category_probs


def test_parse_is_mirror_equivariant(parser: GarmentParser) -> None:
    # The photo and its mirror are parsed together, so mirroring the photo mirrors the
    # parse exactly: the mask flips, left and right landmarks swap.
    s = generate(1_100_005, size=256)
    assert parser.mirror
    p = parser.parse(s.wild_image)
    q = parser.parse(np.ascontiguousarray(s.wild_image[:, ::-1]), p.category)
    perm = flip_permutation(p.category)
    back = q.landmarks[perm].copy()
    back[:, 0] = 1.0 - back[:, 0]
    np.testing.assert_allclose(p.landmarks, back, atol=1e-5)
    np.testing.assert_allclose(p.mask, q.mask[:, ::-1], atol=1e-5)
    assert (p.visibility == q.visibility[perm]).all()
    assert p.category_probs == pytest.approx(q.category_probs, abs=1e-5)
    # One pass alone is not equivariant: the test above does see the averaging.
    single = GarmentParser(parser.net, parser.meta, mirror=False)
    a = single.parse(s.wild_image, p.category)
    b = single.parse(np.ascontiguousarray(s.wild_image[:, ::-1]), p.category)
    mirrored = b.landmarks[perm].copy()
    mirrored[:, 0] = 1.0 - mirrored[:, 0]
    assert np.abs(a.landmarks - mirrored).max() > 1e-3


def test_training_writes_weights_card_and_resumes(tmp_path: Path) -> None:
    from models.train.parser import ParserTrainConfig, train_parser

    cfg = ParserTrainConfig(out=str(tmp_path / "w"), run_dir=str(tmp_path / "run"),
                            model={"width": 8}, n_train=16, n_val=8, steps=3, batch=4, eval_every=3,
                            ckpt_every=1, workers=1, device="cpu")
    metrics = train_parser(cfg)
    assert set(metrics) >= {"mask_iou", "category_accuracy", "landmark_nme"}
    meta = json.loads((tmp_path / "w" / "config.json").read_text())
    assert meta["model_cfg"]["width"] == 8 and meta["training"]["config"]["steps"] == 3
    assert "flatlay train parser" in (tmp_path / "w" / "MODEL_CARD.md").read_text()
    # The command reproduces the run: its data size included.
    assert meta["training"]["command"].endswith("--n-train 16")
    loaded = GarmentParser.from_pretrained(tmp_path / "w")
    assert loaded.parse(generate(5, size=128).wild_image).mask.shape == (128, 128)
    cfg.steps = 5
    train_parser(cfg)  # resumes at step 3
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history] == [3, 5]


def test_the_candidate_parser_loads_and_parses() -> None:
    """The parser trained on 48,000 photos waits beside the shipped one (its card says why)."""
    candidate = GarmentParser.from_pretrained(PARSER_WEIGHTS.parent / "parser-tiny-candidate")
    assert candidate.meta["training"]["command"].endswith("--n-train 48000")
    parsed = candidate.parse(generate(1_000_003, size=256).wild_image)
    assert parsed.mask.shape == (256, 256)
    assert sum(parsed.category_probs.values()) == pytest.approx(1.0, abs=1e-3)


def test_train_parser_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main

    assert main(["train", "parser", "--steps", "0"]) == 2
    assert "--steps must be at least 1" in capsys.readouterr().err
    assert main(["train", "parser", "--zoom-share", "1.5"]) == 2
    assert "--zoom-share must be in [0, 1]" in capsys.readouterr().err
    assert main(["train", "parser", "--lr", "0"]) == 2
    assert "--lr must be above 0" in capsys.readouterr().err
    assert main(["train", "parser", "--init", "no/such/weights"]) == 2
    assert "no weights there" in capsys.readouterr().err


def test_square_view_maps_photo_pixels_and_fills_past_the_edge() -> None:
    rgb = np.full((200, 300, 3), 40, np.uint8)
    rgb[100:110, 150:160] = (250, 10, 10)  # a marker at photo px (150–160, 100–110)
    square, scale, (pad_x, pad_y) = square_view(rgb, 100.0, 50.0, 160.0)
    assert square.shape == (128, 128, 3) and scale == pytest.approx(128 / 160)
    ys, xs = np.nonzero(square[..., 0] > 150)
    assert (xs.mean() + 0.5 - pad_x) / scale == pytest.approx(155, abs=1.0)
    assert (ys.mean() + 0.5 - pad_y) / scale == pytest.approx(105, abs=1.0)
    # A square reaching past the photo's right and bottom edges: filled, not stretched.
    square, scale, (pad_x, pad_y) = square_view(rgb, 250.0, 150.0, 100.0, fill=255)
    assert (square[-10:, -10:] == 255).all() and (square[:20, :20] == 40).all()
    mask = square_view(np.zeros((200, 300), np.uint8), 250.0, 150.0, 100.0, 64, fill=0)[0]
    assert mask.shape == (64, 64) and not mask.any()
    with pytest.raises(ValueError, match="misses"):
        square_view(rgb, 400.0, 0.0, 50.0)


def test_zoom_square_centres_the_box_with_a_margin() -> None:
    x0, y0, side = zoom_square((10.0, 20.0, 110.0, 70.0), margin=0.25)  # 100 tall, 50 wide
    assert side == pytest.approx(150.0)
    assert (x0 + side / 2, y0 + side / 2) == pytest.approx((45.0, 60.0))


def test_second_look_views_keep_landmarks_on_the_garment() -> None:
    from models.train.parser import _one

    for seed in range(6):
        whole, zoomed = _one(seed), _one(seed, zoom=True)
        assert whole[2] == zoomed[2]
        assert zoomed[1].mean() > 0.05  # the garment is in the view
        photo, mask, _, lm, vis = zoomed
        grown = ndimage.binary_dilation(mask, iterations=3)
        cells = np.clip((lm[vis.astype(bool)] * 64).astype(int), 0, 63)
        assert grown[cells[:, 1], cells[:, 0]].mean() > 0.9


def test_second_look_changes_only_what_it_is_weighted_for(parser: GarmentParser) -> None:
    rgb = generate(1_100_003, size=384).wild_image
    shipped = parser.zoom, parser.zoom_weight, parser.zoom_detail
    try:
        parser.zoom = False
        first = parser.parse(rgb)
        parser.zoom, parser.zoom_weight, parser.zoom_detail = True, 0.0, False
        same = parser.parse(rgb)
        np.testing.assert_allclose(list(same.category_probs.values()),
                                   list(first.category_probs.values()), atol=1e-5)
        np.testing.assert_allclose(same.landmarks, first.landmarks)
        parser.zoom_weight, parser.zoom_detail = 1.0, True
        zoomed = parser.parse(rgb)
        assert sum(zoomed.category_probs.values()) == pytest.approx(1.0, abs=1e-3)
        assert zoomed.mask.shape == first.mask.shape
        # The second look sees the same garment: masks agree, landmarks are near.
        a, b = zoomed.mask > 0.5, first.mask > 0.5
        assert (a & b).sum() / (a | b).sum() > 0.7
        if zoomed.category == first.category:
            assert np.abs(zoomed.landmarks - first.landmarks).mean() < 0.05
    finally:
        parser.zoom, parser.zoom_weight, parser.zoom_detail = shipped


def test_warm_start_with_second_look_views(tmp_path: Path) -> None:
    from models.train.parser import ParserTrainConfig, train_parser

    cfg = ParserTrainConfig(out=str(tmp_path / "w"), run_dir=str(tmp_path / "run"),
                            init=str(PARSER_WEIGHTS), zoom_share=0.5, n_train=16, n_val=8,
                            steps=2, batch=4, eval_every=2, workers=1, device="cpu")
    metrics = train_parser(cfg)
    assert {"category_accuracy", "zoom_category_accuracy"} <= set(metrics)
    meta = json.loads((tmp_path / "w" / "config.json").read_text())
    assert meta["second_look"] is True and meta["model_cfg"]["width"] == 16
    assert "--init" in meta["training"]["command"]
    shipped = json.loads((PARSER_WEIGHTS / "config.json").read_text())["training"]
    assert meta["training"]["cumulative_steps"] == shipped["cumulative_steps"] + 2
    card = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert "Warm-started from" in card and "2nd look category" in card
    assert GarmentParser.from_pretrained(tmp_path / "w").zoom
    meta.pop("second_look")  # weights trained without its views: no second look
    (tmp_path / "w" / "config.json").write_text(json.dumps(meta))
    assert not GarmentParser.from_pretrained(tmp_path / "w").zoom
    with pytest.raises(ValueError, match="zoom_share"):
        ParserTrainConfig(zoom_share=1.5)
