"""The full-resolution photo warp, the flatten compose steps and the preset compliance check,
on pictures whose right answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from models.compose import (
    draw_overlay,
    fill_unknown,
    garment_bbox,
    over_background,
    place_garment,
    refine_alpha,
    silhouette_alpha,
)
from models.presets import PRESETS, check_compliance, garment_band, get_preset
from models.warp import photo_to_canvas_map, warp_photo


def _checker(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return np.dstack([((yy // 8 + xx // 8) % 2 * 255).astype(np.uint8)] * 3)


def test_identity_correspondences_give_the_photo_back() -> None:
    rgb = _checker(64, 64)
    pts = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9], [0.5, 0.5]])
    out = warp_photo(rgb, np.ones((64, 64), np.float32), pts, pts, 64)
    assert np.abs(out.image.astype(int) - rgb).mean() < 3
    assert out.validity.mean() > 0.97


def test_warp_samples_the_full_resolution_photo() -> None:
    """The same scene photographed at 4× the pixels gives a sharper canvas: the warp reads
    the photo's own pixels, so sharpness follows the photo, not a model resolution."""
    from PIL import Image

    pts = np.array([[0.25, 0.25], [0.75, 0.25], [0.75, 0.75], [0.25, 0.75]])
    canvas = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])

    def blurry_pixels(side: int) -> int:
        photo = np.asarray(Image.fromarray(_checker(512, 512)).resize((side, side),
                                                                      Image.Resampling.BOX))
        out = warp_photo(photo, np.ones((side, side), np.float32), pts, canvas, 512)
        grey = out.image[..., 0].astype(int)
        return int(((grey > 30) & (grey < 225)).sum())

    assert blurry_pixels(512) * 2 < blurry_pixels(128)


def test_non_square_photos_map_without_stretch() -> None:
    coords = photo_to_canvas_map(np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]),
                                 np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]),
                                 (100, 200), 50)
    rows, cols = coords
    assert rows.min() == pytest.approx(0.0, abs=2.5) and rows.max() == pytest.approx(99, abs=2.5)
    assert cols.min() == pytest.approx(1.5, abs=3) and cols.max() == pytest.approx(198, abs=3)


def test_validity_is_false_outside_the_photo_and_off_the_garment() -> None:
    rgb = _checker(64, 64)
    mask = np.zeros((64, 64), np.float32)
    mask[:, :32] = 1.0  # left half is garment
    pts = np.array([[0.1, 0.1], [0.9, 0.1], [0.9, 0.9], [0.1, 0.9]])
    out = warp_photo(rgb, mask, pts, pts * 0.5 + 0.25, 64)  # photo shrunk into the middle
    assert not out.validity[:8].any()  # outside the photo
    assert not out.validity[32, 40:].any()  # right half: not garment
    assert out.validity[32, 20:28].all()


def test_silhouette_alpha_is_smooth_and_sized() -> None:
    sil = np.zeros((32, 32), bool)
    sil[8:24, 8:24] = True
    alpha, sdf = silhouette_alpha(sil, 256)
    assert alpha.shape == (256, 256)
    assert alpha[128, 128] == 1.0 and alpha[5, 5] == 0.0
    assert 0 < ((alpha > 0) & (alpha < 1)).sum() < 256 * 8  # a one-pixel ramp
    assert (alpha > 0.5).mean() == pytest.approx(0.25, abs=0.02)
    assert sdf[128, 128] < 0 < sdf[5, 5]


def test_refine_alpha_takes_the_photo_edge_only_near_the_structure_edge() -> None:
    sil = np.zeros((64, 64), bool)
    sil[16:48, 16:48] = True
    alpha, sdf = silhouette_alpha(sil, 64)
    photo = np.zeros((64, 64), np.float32)
    photo[17:49, 16:48] = 1.0  # one pixel lower
    refined = refine_alpha(alpha, sdf, photo, band=0.05)
    assert refined[48, 30] == 1.0 and alpha[48, 30] == 0.0
    assert refined[32, 32] == 1.0  # deep inside: the structure
    assert np.array_equal(refine_alpha(alpha, sdf, photo, band=0.0), alpha)


def test_fill_unknown_fills_holes_from_known_texture() -> None:
    img = np.zeros((128, 128, 3), np.uint8)
    img[..., 0] = 200  # red garment
    valid = np.ones((128, 128), bool)
    valid[40:80, 40:80] = False
    img[~valid] = 0  # unknown texture is black
    alpha = np.ones((128, 128), np.float32)
    out = fill_unknown(img, valid, alpha)
    assert out[60, 60, 0] > 150 and out[60, 60, 1] < 30
    assert np.array_equal(out[5, 5], img[5, 5])


def test_place_garment_maps_points_with_the_garment() -> None:
    rgb = np.zeros((100, 200, 3), np.uint8)
    alpha = np.zeros((100, 200), np.float32)
    alpha[20:60, 50:150] = 1.0
    placed = place_garment(rgb, alpha, 400, 0.9)
    top, left, bottom, right = garment_bbox(placed.alpha)
    assert max(bottom - top, right - left) == pytest.approx(360, abs=2)
    corner = placed.to_canvas(np.array([[50 / 200, 20 / 100]]), (100, 200))[0] * 400
    assert corner == pytest.approx([left, top], abs=2)


def test_overlay_is_an_opaque_picture_of_the_canvas() -> None:
    from models.garments import num_landmarks

    canvas = over_background(np.zeros((64, 64, 4), np.uint8), (255, 255, 255))
    alpha = np.zeros((64, 64), np.float32)
    alpha[16:48, 16:48] = 1
    lm = np.random.default_rng(0).uniform(0.2, 0.8, (num_landmarks("skirt"), 2))
    out = draw_overlay(canvas, alpha, lm, "skirt")
    assert out.shape == (64, 64, 4) and (out[..., 3] == 255).all()
    assert (out[..., :3] != 255).any()


def _delivered(size: int, fill: float, background: tuple[int, int, int] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    rgb = np.full((50, 50, 3), 90, np.uint8)
    alpha = np.ones((50, 50), np.float32)
    placed = place_garment(rgb, alpha, size, fill)
    return over_background(placed.layer, background), placed.alpha


def test_amazon_main_compliance_passes_and_fails_on_what_it_checks() -> None:
    preset = get_preset("amazon-main")
    image, alpha = _delivered(2000, 0.9, (255, 255, 255))
    ok = check_compliance(image, alpha, preset, "jpeg")
    assert ok["passed"], ok
    small, small_alpha = _delivered(1024, 0.7, (250, 250, 250))
    bad = check_compliance(small, small_alpha, preset, "webp", background="#fafafa")
    failed = {c["name"] for c in bad["checks"] if not c["passed"]}
    assert failed == {"size", "format", "fill_ratio", "background_colour"}
    assert not bad["passed"]


def test_background_purity_catches_a_shadow() -> None:
    preset = get_preset("square-white")
    image, alpha = _delivered(1024, 0.8, (255, 255, 255))
    image = image.copy()
    image[900:1000, 100:900, :3] = 235  # a grey shadow under the garment
    result = check_compliance(image, alpha, preset, "png")
    purity = next(c for c in result["checks"] if c["name"] == "background_purity")
    assert not purity["passed"] and purity["value"] < 0.999


@pytest.mark.parametrize("band", [1, 2, 8])
def test_garment_band_is_the_full_canvas_dilation(band: int) -> None:
    rng = np.random.default_rng(band)
    for box in [(slice(300, 700), slice(200, 650)), (slice(0, 90), slice(980, 1024)),
                (slice(1020, 1024), slice(0, 3))]:  # inside, and touching the canvas edges
        garment = np.zeros((1024, 1024), bool)
        garment[box] = rng.random(garment[box].shape) < 0.3
        assert np.array_equal(garment_band(garment, band),
                              ndimage.binary_dilation(garment, iterations=band))
    assert not garment_band(np.zeros((64, 64), bool), band).any()


def test_transparent_preset_needs_an_alpha_channel() -> None:
    preset = PRESETS["transparent"]
    image, alpha = _delivered(1024, 0.8, None)
    assert check_compliance(image, alpha, preset, "png")["passed"]
    flat = over_background(image, (255, 255, 255))[..., :3]
    assert not check_compliance(flat, alpha, preset, "jpeg")["passed"]


def test_unknown_preset_names_the_choices() -> None:
    with pytest.raises(ValueError, match="amazon-main"):
        get_preset("ebay")


def test_transparent_preset_fails_over_an_opaque_background() -> None:
    image, alpha = _delivered(1024, 0.8, (255, 255, 255))
    report = check_compliance(image, alpha, PRESETS["transparent"], "png", "#ffffff")
    assert not report["passed"]
    square, square_alpha = _delivered(1024, 0.8, None)
    report = check_compliance(square, square_alpha, PRESETS["square-white"], "png",
                              "transparent")
    failed = {c["name"] for c in report["checks"] if not c["passed"]}
    assert failed == {"background_purity", "background_colour"}


def test_amazon_main_jpeg_passes_after_encoding() -> None:
    import io

    from PIL import Image

    from models.io import encode_image

    rgb = (np.random.default_rng(0).integers(0, 255, (200, 200, 3))).astype(np.uint8)
    placed = place_garment(rgb, np.ones((200, 200), np.float32), 2000, 0.9)
    data, _ = encode_image(over_background(placed.layer, (255, 255, 255)), "jpeg")
    decoded = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    report = check_compliance(decoded, placed.alpha, get_preset("amazon-main"), "jpeg")
    assert report["passed"], report
