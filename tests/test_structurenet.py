"""StructureNet: configs in open_clip's registry, inputs, save/load, training, shipped weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from models.structurenet import (
    DEFAULT_WEIGHTS,
    StructureNet,
    model_config,
    normalise_photos,
    photo_tensor_uint8,
    structure_map,
)

# Trained on the parser's view; not the service's until the generator is retrained on the
# structures it gives (its model card).
CANDIDATE = DEFAULT_WEIGHTS.parent / "structurenet-tiny-candidate"


def test_configs_are_registered_with_open_clip() -> None:
    assert {"structurenet-tiny", "structurenet-base"} <= set(open_clip.list_models())
    assert open_clip.get_model_config("structurenet-tiny")["embed_dim"] == 128
    with pytest.raises(ValueError, match="available: base, tiny|available: .*tiny"):
        model_config("structurenet-huge")


def test_towers_give_unit_embeddings_and_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = StructureNet.from_config("structurenet-tiny").eval()
    assert model.photo_channels == 4  # the tiny config sees the parsed mask
    photos = torch.randn(3, 4, model.photo_size, model.photo_size)
    maps = torch.rand(3, 3, model.structure_size, model.structure_size)
    with torch.no_grad():
        p, s, scale = model(photos, maps)
    assert p.shape == s.shape == (3, 128)
    assert torch.allclose(p.norm(dim=1), torch.ones(3), atol=1e-5)
    assert scale.item() > 1
    model.save_pretrained(tmp_path / "w")
    again = StructureNet.from_pretrained(tmp_path / "w")
    with torch.no_grad():
        assert torch.allclose(again.encode_photo(photos), p, atol=1e-6)
    assert (tmp_path / "w" / "model.safetensors").is_file()
    with pytest.raises(FileNotFoundError, match="config.json"):
        StructureNet.from_pretrained(tmp_path / "nothing")


def test_structure_map_marks_silhouette_and_landmarks() -> None:
    sil = np.zeros((128, 128), bool)
    sil[32:96, 40:88] = True
    lm = np.array([[0.25, 0.25], [0.75, 0.5], [0.5, 0.75]], np.float32)
    m = structure_map(lm, sil, 64)
    assert m.shape == (3, 64, 64) and m.dtype == np.float32
    assert 0 <= m.min() and m.max() <= 1
    assert m[0, 32, 32] == 1 and m[0, 2, 2] == 0
    assert m[1, 16, 16] > 0.7 and m[1, 40, 10] < 0.01  # a blob at (0.25, 0.25)
    assert m[2, 48, 32] > m[2, 16, 16]  # later contour points are brighter in channel 2


def test_photo_crop_follows_the_mask() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[40:60, 150:170] = 255
    mask = rgb[..., 0] > 0
    crop = photo_tensor_uint8(rgb, 32, mask, pad=0.0)
    whole = photo_tensor_uint8(rgb, 32)
    assert crop.shape == whole.shape == (32, 32, 3)
    assert (crop > 127).mean() > 0.8  # the garment fills its own crop
    assert (whole > 127).mean() < 0.05
    t = normalise_photos(np.stack([crop, whole]))
    assert t.shape == (2, 3, 32, 32) and t.dtype == torch.float32


def test_photo_view_carries_the_mask_cropped_like_the_photo() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    rgb[40:60, 150:170] = (200, 100, 50)
    mask = rgb[..., 0] > 0
    view = photo_tensor_uint8(rgb, 32, mask, pad=0.0, with_mask=True)
    assert view.shape == (32, 32, 4)
    assert np.array_equal(view[..., :3], photo_tensor_uint8(rgb, 32, mask, pad=0.0))
    # The mask channel is the mask through the same crop: where the photo is the garment.
    assert np.array_equal(view[..., 3] > 127, view[..., 0] > 100)
    whole = photo_tensor_uint8(rgb, 32, mask, with_mask=True, crop=False)
    assert np.array_equal(whole[..., :3], photo_tensor_uint8(rgb, 32))
    assert 0 < (whole[..., 3] > 127).mean() < 0.05  # the mask letterboxed with the photo
    assert not photo_tensor_uint8(rgb, 32, None, with_mask=True)[..., 3].any()
    t = normalise_photos(view[None])
    assert t.shape == (1, 4, 32, 32)
    assert t[0, 3].max() == 1.0 and t[0, 3].min() == -1.0


def test_parsed_pairs_are_the_view_the_pipeline_embeds() -> None:
    """Training pairs in the "parsed" view: the crop and mask the pipeline's stage 2 gives
    the same photo (the parser's own mask, the second look changing only the category)."""
    from models.garments import generate
    from models.pipelines.stages import load_parser, parse_garment
    from models.train.pairs import RENDER_SIZE, render_pairs

    pairs = render_pairs([1_000_001], 96, 64, workers=1, view="parsed")
    s = generate(1_000_001, size=RENDER_SIZE)
    mask = parse_garment(load_parser(), s.wild_image).mask > 0.5
    expected = photo_tensor_uint8(s.wild_image, 96, mask, with_mask=True)
    assert pairs.photos.shape == (1, 96, 96, 4)
    assert np.abs(pairs.photos[0].astype(int) - expected).max() <= 1
    with pytest.raises(ValueError, match="view"):
        render_pairs([1_000_001], 96, 64, workers=1, view="true")


def test_a_three_channel_model_takes_its_view_without_the_mask() -> None:
    from models.structurenet import photo_view

    cfg = {**model_config("structurenet-tiny"), "photo_mask": False}
    plain, masked = StructureNet(cfg), StructureNet.from_config("structurenet-tiny")
    rgb = np.random.default_rng(0).integers(0, 255, (80, 60, 3), np.uint8)
    mask = np.zeros((80, 60), bool)
    mask[20:60, 10:50] = True
    assert photo_view(plain, rgb, mask).shape == (64, 64, 3)
    assert photo_view(masked, rgb, mask).shape == (64, 64, 4)
    assert plain.photo.conv1.in_channels == 3 and masked.photo.conv1.in_channels == 4


@pytest.mark.slow
def test_training_writes_weights_card_and_resumes(tmp_path: Path) -> None:
    from models.train.structurenet import TrainConfig, train

    cfg = TrainConfig(run_dir=str(tmp_path / "run"), out=str(tmp_path / "out"), n_train=96,
                      n_val=48, steps=3, batch=16, warmup=1, eval_every=3, ckpt_every=1,
                      workers=1, device="cpu")
    metrics = train(cfg)
    assert 0 <= metrics["recall_at_1"] <= 1
    assert (tmp_path / "out" / "MODEL_CARD.md").read_text().count("recall@1") >= 1
    cfg.steps = 5
    train(cfg)  # resumes at step 3
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert state["step"] == 5 and len(state["history"]) == 2


def test_hard_negative_batches_group_one_category() -> None:
    from models.train.structurenet import batch_indices

    cats = torch.arange(1100) % 11
    idx = batch_indices(cats, 128, 0.5, 32, torch.Generator().manual_seed(0))
    assert idx.shape == (128,)
    for g in range(2):  # half the batch: two groups of 32 pairs of one category each
        assert len(torch.unique(cats[idx[32 * g: 32 * (g + 1)]])) == 1
    assert len(torch.unique(cats[idx[64:]])) > 5  # the rest uniform
    # Without hard negatives the draw is the plain uniform one (the shipped weights' batches).
    plain = batch_indices(cats, 128, 0.0, 32, torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randint(1100, (128,), generator=torch.Generator()
                                            .manual_seed(0)))


@pytest.mark.skipif(not (DEFAULT_WEIGHTS / "model.safetensors").is_file(),
                    reason="shipped weights not trained yet")
@pytest.mark.parametrize("folder", [DEFAULT_WEIGHTS, CANDIDATE])
def test_shipped_weights_retrieve_their_own_structure(folder: Path) -> None:
    from models.train.pairs import render_pairs
    from models.train.structurenet import evaluate

    model = StructureNet.from_pretrained(folder)
    view = "parsed" if model.photo_channels == 4 else "box"  # the view it was trained on
    pairs = render_pairs(list(range(1_000_000, 1_000_060)), model.photo_size,
                         model.structure_size, workers=1, view=view)
    metrics = evaluate(model, pairs, "cpu")
    # Chance is 1/60 for recall@1 and 1/12 for the category.
    assert metrics["recall_at_5"] > 0.3
    assert metrics["category_accuracy"] > 0.6


def test_the_retrieval_benchmark_embeds_what_the_pipeline_embeds() -> None:
    """The headline view is the parser's crop (stage 2's input); the whole photo and the true
    box are reported beside it, each with recall and the fused structure's quality."""
    from models.eval.retrieval import benchmark_retrieval, render_eval

    model = StructureNet.from_pretrained(DEFAULT_WEIGHTS)
    sample = render_eval([1_000_003], model)[0]
    c = model.photo_channels
    assert sample.photo_parsed.shape == sample.photo_whole.shape == (64, 64, c)
    assert not np.array_equal(sample.photo_parsed, sample.photo_whole)
    result = benchmark_retrieval(split="val", n=4, zero_shot_n=2, zero_shot_bank_n=4,
                                 workers=1)
    for view in (result, result["whole_photo"], result["with_garment_box"]):
        assert 0.0 <= view["recall_at_1"] <= view["recall_at_5"] <= 1.0
        assert 0.0 < view["silhouette_iou_slle"] <= 1.0
