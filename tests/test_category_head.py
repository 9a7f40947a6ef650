"""The category head (stage 1's third look): its input, save/load, its mix into the parser's
category, training, and the shipped weights on validation photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models.garments import CATEGORIES, SPLITS, generate
from models.parser import PARSER_WEIGHTS, GarmentParser
from models.pattern import (
    PATTERN_WEIGHTS,
    CategoryClassifier,
    PatternNet,
    category_input,
)
from models.train.pattern import coarse_mask


def _head(seed: int = 0) -> CategoryClassifier:
    torch.manual_seed(seed)
    return CategoryClassifier(PatternNet(width=4, input_size=32, classes=len(CATEGORIES)))


def test_input_is_the_second_look_square_with_the_mask_beside_it() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[:, 100:] = 200  # the right half is bright
    mask = np.zeros((100, 200), np.float32)
    mask[20:60, 50:70] = 1.0  # 40 tall, 20 wide
    x = category_input(rgb, mask, 32)
    assert x.shape == (32, 32, 4) and x.dtype == np.uint8
    # The square is centred on the box: the mask sits in the middle, not at the edges.
    assert x[16, 16, 3] == 255 and x[0, 0, 3] == 0 and x[16, 0, 3] == 0
    # The photo keeps its background (not whitened): dark here, as the photo is.
    assert (x[2, 2, :3] == 0).all()
    # A given square overrides the box: the whole photo's right half.
    right = category_input(rgb, mask, 32, square=(100.0, 0.0, 100.0))
    assert (right[..., :3] == 200).all() and (right[..., 3] == 0).all()
    with pytest.raises(ValueError, match="no garment"):
        category_input(rgb, np.zeros((100, 200)), 32)


def test_coarse_mask_is_soft_at_the_edge_as_the_parser_s() -> None:
    mask = np.zeros((256, 256), bool)
    mask[64:192, 64:192] = True
    soft = coarse_mask(mask)
    assert soft.shape == mask.shape and soft.dtype == np.float32
    assert soft[128, 128] == pytest.approx(1.0) and soft[5, 5] == 0.0
    edge = soft[128, 60:68]
    assert ((edge > 0.05) & (edge < 0.95)).any()  # a ramp, not a step


def test_round_trip_and_mirror_invariance(tmp_path: Path) -> None:
    head = _head()
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (60, 80, 3), np.uint8)
    mask = np.zeros((60, 80), np.float32)
    mask[10:50, 20:70] = 1.0
    p = head.probabilities(rgb, mask)
    assert p.shape == (len(CATEGORIES),) and p.sum() == pytest.approx(1.0, abs=1e-5)
    # The mirror image of a photo is the same garment: the same belief.
    mirrored = head.probabilities(rgb[:, ::-1].copy(), mask[:, ::-1].copy())
    np.testing.assert_allclose(mirrored, p, atol=1e-5)
    head.save_pretrained(tmp_path / "w")
    again = CategoryClassifier.from_pretrained(tmp_path / "w")
    np.testing.assert_allclose(again.probabilities(rgb, mask), p, atol=1e-6)
    assert json.loads((tmp_path / "w" / "config.json").read_text())["categories"] == \
        list(CATEGORIES)
    with pytest.raises(ValueError, match="trained for categories"):
        CategoryClassifier.from_pretrained(PATTERN_WEIGHTS)  # a pattern head is not one


def test_the_parser_mixes_the_head_into_its_category() -> None:
    s = generate(SPLITS["val"][0] + 3, size=256)
    alone = GarmentParser.from_pretrained(PARSER_WEIGHTS)
    parsed = alone.parse(s.wild_image)
    head = _head(1)
    with_head = GarmentParser.from_pretrained(PARSER_WEIGHTS, head=head)
    with_head.head_weight = 0.25
    mixed = with_head.parse(s.wild_image)
    expect = 0.75 * np.array([parsed.category_probs[c] for c in CATEGORIES]) + \
        0.25 * head.probabilities(s.wild_image, parsed.mask)
    got = np.array([mixed.category_probs[c] for c in CATEGORIES])
    np.testing.assert_allclose(got, expect, atol=1e-5)
    assert mixed.category == CATEGORIES[int(got.argmax())]
    np.testing.assert_array_equal(mixed.mask, parsed.mask)  # the category only
    with_head.head_weight = 0.0
    np.testing.assert_allclose([with_head.parse(s.wild_image).category_probs[c]
                                for c in CATEGORIES],
                               [parsed.category_probs[c] for c in CATEGORIES], atol=1e-6)


def test_category_training_writes_a_head_that_loads(tmp_path: Path) -> None:
    from models.train.pattern import CategoryTrainConfig, train_pattern

    cfg = CategoryTrainConfig(out=str(tmp_path / "w"), run_dir=str(tmp_path / "run"),
                              model={"width": 4, "input_size": 32}, n_train=8, n_val=4,
                              render=64, steps=2, batch=4, eval_every=2, workers=1,
                              device="cpu")
    metrics = train_pattern(cfg)
    assert 0 <= metrics["accuracy"] <= 1 and "accuracy_flat" not in metrics  # photos only
    head = CategoryClassifier.from_pretrained(tmp_path / "w")
    assert head.net.classes == len(CATEGORIES)
    card = (tmp_path / "w" / "MODEL_CARD.md").read_text()
    assert card.startswith("# Category head") and "flatlay train category --config tiny" in card
    assert "| step | loss | accuracy | wild |" in card


def test_served_training_views_are_what_the_service_gives_the_head() -> None:
    """`flatlay train category`'s default views: the decoded photo, the shipped parser's own
    mask and the second-look square around it, as `GarmentParser.parse` hands them over."""
    from models.garments import generate
    from models.io import decode_image
    from models.pattern import category_input
    from models.train.pattern import CategoryTrainConfig, _served_category_views

    assert CategoryTrainConfig().view == "served"
    views, label, category = _served_category_views(1_000_001, 256, 48)
    s = generate(1_000_001, size=256)
    photo = decode_image(s.wild_jpeg)
    mask = GarmentParser.from_pretrained(PARSER_WEIGHTS).parse(photo).mask
    np.testing.assert_array_equal(views[0], category_input(photo, mask, 48))
    assert label == category == CATEGORIES.index(s.category)
