"""The `flatten` pipeline (and its `nearest` baseline) with the shipped parser, StructureNet
and structure bank, on garment-world photos whose true flat-lay is known."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.garments import generate, num_landmarks
from models.pipeline import (
    FlatLayResult,
    PipelineError,
    PipelineOptions,
    StructureSpec,
    get_pipeline,
    side_output_files,
)
from models.presets import check_compliance, get_preset

SEEDS = [1_100_000 + i for i in range(6)]


@pytest.fixture(scope="module")
def flatten():  # noqa: ANN201
    p = get_pipeline("flatten")
    p.load()
    return p


def _iou(result: FlatLayResult, truth: np.ndarray) -> float:
    size = truth.shape[0]
    alpha = np.asarray(Image.fromarray((result.alpha * 255).astype(np.uint8)).resize(
        (size, size), Image.Resampling.BOX)) > 127
    return float((alpha & truth).sum() / max(1, (alpha | truth).sum()))


def test_flatten_gives_the_structure_it_used(flatten) -> None:  # noqa: ANN001
    s = generate(SEEDS[0], size=512)
    r = flatten(s.wild_image, PipelineOptions(output_size=512))
    assert r.image.shape == (512, 512, 4) and r.alpha.shape == (512, 512)
    assert r.landmarks.shape == (num_landmarks(r.category), 2)
    # The photo's own landmarks in the decided schema, for the neckline attribute.
    assert r.photo_landmarks.shape == r.landmarks.shape
    # square-white keeps the canonical frame: the canvas is the canonical canvas.
    assert np.allclose(r.canvas_landmarks, r.landmarks)
    assert len(r.neighbours) == flatten.aligner.K
    assert sum(n["weight"] for n in r.neighbours) == pytest.approx(1.0, abs=1e-3)
    assert set(side_output_files(r)) == {"mask", "landmarks", "neighbours", "overlay"}
    assert list(r.timings) == flatten.stages


def test_flatten_beats_cutout_on_silhouette_iou(flatten) -> None:  # noqa: ANN001
    cutout = get_pipeline("cutout")
    cutout.load()
    ours, theirs = [], []
    for seed in SEEDS:
        s = generate(seed, size=512)
        ours.append(_iou(flatten(s.wild_image, PipelineOptions(output_size=512)), s.flat_mask))
        theirs.append(_iou(cutout(s.wild_image, PipelineOptions(output_size=512)), s.flat_mask))
    assert np.mean(ours) > np.mean(theirs)
    assert np.mean(ours) > 0.6


def test_nearest_uses_one_structure() -> None:
    p = get_pipeline("nearest")
    p.load()
    s = generate(SEEDS[1], size=384)
    r = p(s.wild_image, PipelineOptions(output_size=384))
    assert len(r.neighbours) == 1 and r.neighbours[0]["weight"] == 1.0


def test_a_given_structure_replaces_retrieval(flatten) -> None:  # noqa: ANN001
    """Moving the hem down by hand makes a longer garment: structure control."""
    s = generate(SEEDS[2], size=512)
    first = flatten(s.wild_image, PipelineOptions(output_size=512))
    spec = StructureSpec.parse(first.structure_json())
    lower = spec.landmarks.copy()
    hem = lower[:, 1] > np.median(lower[:, 1])
    lower[hem, 1] = np.minimum(lower[hem, 1] + 0.06, 0.99)
    longer = flatten(s.wild_image, PipelineOptions(
        output_size=512, structure=StructureSpec(spec.category, lower)))
    assert longer.category == spec.category
    assert np.allclose(longer.landmarks, lower, atol=1e-5)
    assert longer.photo_landmarks is None  # the given structure tells the neckline
    bottom = lambda r: np.nonzero((r.alpha > 0.5).any(1))[0].max()  # noqa: E731
    assert bottom(longer) > bottom(first) + 0.03 * 512


def test_amazon_main_fills_the_frame_and_passes_its_check(flatten) -> None:  # noqa: ANN001
    s = generate(SEEDS[3], size=512)
    r = flatten(s.wild_image, PipelineOptions(output_size=2000, preset="amazon-main"))
    report = check_compliance(r.image, r.alpha, get_preset("amazon-main"), "png")
    assert report["passed"], report
    # The landmarks stay canonical; the canvas ones moved with the garment.
    assert not np.allclose(r.canvas_landmarks, r.landmarks)


def test_transparent_preset_keeps_alpha(flatten) -> None:  # noqa: ANN001
    s = generate(SEEDS[4], size=384)
    r = flatten(s.wild_image, PipelineOptions(output_size=384, background="transparent",
                                              preset="transparent"))
    assert r.image[0, 0, 3] == 0 and r.image[..., 3].max() == 255


def test_sharpness_follows_the_photo(flatten) -> None:  # noqa: ANN001
    """The same garment (a printed dress) photographed at 16× the pixels gives a much
    sharper 1024 px flat-lay: the warp samples the photo, not a model-resolution copy."""
    from scipy import ndimage

    s = generate(1_100_003, size=1024)

    def detail(photo: np.ndarray) -> float:
        r = flatten(photo, PipelineOptions(output_size=1024))
        inside = ndimage.binary_erosion(r.alpha > 0.99, iterations=3)
        return float(np.abs(ndimage.laplace(r.image[..., :3].mean(-1)))[inside].mean())

    small = np.asarray(Image.fromarray(s.wild_image).resize((256, 256), Image.Resampling.BOX))
    assert detail(s.wild_image) > 2.0 * detail(small)


def test_a_blank_photo_is_a_clear_error(flatten) -> None:  # noqa: ANN001
    with pytest.raises(PipelineError) as err:
        flatten(np.full((300, 300, 3), 128, np.uint8), PipelineOptions(output_size=256))
    assert err.value.code == "garment_not_found"
