"""The `cutout` baseline: classical mask, tight crop, centered canvas."""

from __future__ import annotations

import numpy as np
import pytest

from models.parser import classical_garment_mask
from models.pipeline import PipelineError, PipelineOptions, get_pipeline, pipeline_names
from tests.support import garment_photo


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


@pytest.mark.parametrize("background", ["coffee", "astronaut", "chelsea"])
def test_classical_mask_finds_the_garment_on_real_photos(background: str) -> None:
    rgb, truth = garment_photo(640, 480, background=background)
    mask = classical_garment_mask(rgb) > 0.5
    assert mask.shape == truth.shape
    assert _iou(mask, truth) > 0.85


def test_uniform_photo_has_no_garment() -> None:
    with pytest.raises(ValueError, match="no garment"):
        classical_garment_mask(np.full((200, 300, 3), 128, np.uint8))


def test_registry_lists_cutout_and_refuses_unknown_names() -> None:
    assert "cutout" in pipeline_names()
    with pytest.raises(KeyError, match="available: .*cutout"):
        get_pipeline("no-such-pipeline")


@pytest.mark.parametrize("size", [256, 1024])
def test_cutout_centers_the_garment_on_the_requested_background(size: int) -> None:
    rgb, _ = garment_photo(640, 480, offset=(-0.15, 0.05))  # garment off-centre in the photo
    result = get_pipeline("cutout")(rgb, PipelineOptions(output_size=size, background="#00ff00"))
    canvas = result.image
    assert canvas.shape == (size, size, 4) and canvas.dtype == np.uint8
    assert (canvas[..., 3] == 255).all()
    bg = np.all(canvas[..., :3] == (0, 255, 0), axis=-1)
    assert bg[0].all() and bg[-1].all() and bg[:, 0].all() and bg[:, -1].all()
    ys, xs = np.nonzero(~bg)
    # Centered: the garment's box is symmetric about the canvas centre within 2 %.
    assert abs((xs.min() + xs.max()) / 2 - size / 2) < 0.02 * size
    assert abs((ys.min() + ys.max()) / 2 - size / 2) < 0.02 * size
    # Its longer side spans the canvas less the margins.
    span = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
    assert 0.80 * size < span < 0.86 * size
    assert set(result.timings) == {"parse", "compose"}


def test_cutout_transparent_background_has_alpha() -> None:
    rgb, _ = garment_photo(400, 300)
    canvas = get_pipeline("cutout")(rgb, PipelineOptions(output_size=256,
                                                         background="transparent")).image
    alpha = canvas[..., 3]
    assert alpha[0, 0] == 0 and alpha[128, 128] == 255
    assert 0.15 < (alpha > 127).mean() < 0.7


def test_cutout_reports_progress_per_stage() -> None:
    seen: list[tuple[str, int]] = []
    rgb, _ = garment_photo(300, 200)
    get_pipeline("cutout")(rgb, PipelineOptions(output_size=256), lambda s, p: seen.append((s, p)))
    assert [s for s, _ in seen] == ["parse", "compose"]
    assert seen[0][1] < seen[1][1] < 100


def test_cutout_fails_with_a_code_on_an_empty_photo() -> None:
    with pytest.raises(PipelineError) as info:
        get_pipeline("cutout")(np.full((300, 300, 3), 40, np.uint8), PipelineOptions())
    assert info.value.code == "garment_not_found"


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="output_size"):
        PipelineOptions(output_size=100)
    with pytest.raises(ValueError, match="background"):
        PipelineOptions(background="blue-ish")
