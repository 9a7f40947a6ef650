"""Stage 1, parse: where is the garment in the photo.

For now a classical parser: a colour model of the background learned from the image
border, the largest connected foreground component, holes filled. It is what a simple
background remover does and stays as the `cutout` baseline's mask.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.cluster.vq import kmeans2
from skimage.color import rgb2lab
from skimage.filters import threshold_otsu

# The mask is found at this long side; the alpha is upsampled to the photo's full size.
WORK_SIDE = 320
# Colour distance (CIE76 ΔE) below which a pixel always counts as background.
MIN_BACKGROUND_DELTA_E = 10.0


class GarmentNotFound(ValueError):
    code = "garment_not_found"


def _working_copy(rgb: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    scale = WORK_SIDE / max(h, w)
    if scale >= 1.0:
        return rgb
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.BOX))


def _border_pixels(lab: np.ndarray, band: int) -> np.ndarray:
    top, bottom = lab[:band].reshape(-1, 3), lab[-band:].reshape(-1, 3)
    left, right = lab[band:-band, :band].reshape(-1, 3), lab[band:-band, -band:].reshape(-1, 3)
    return np.concatenate([top, bottom, left, right])


def background_distance(rgb: np.ndarray, clusters: int = 6, seed: int = 0) -> np.ndarray:
    """Per-pixel colour distance to the nearest background cluster.

    rgb: (H, W, 3) uint8. Returns (H, W) float32, CIE76 ΔE to the closest of `clusters`
    k-means centres of the border band's Lab colours.
    """
    lab = rgb2lab(rgb).astype(np.float32)
    band = max(2, round(0.03 * min(lab.shape[:2])))
    border = _border_pixels(lab, band)
    k = min(clusters, len(border))
    with warnings.catch_warnings():
        # A plain border gives duplicate or empty clusters; harmless for a nearest-centre test.
        warnings.simplefilter("ignore")
        centres, _ = kmeans2(border.astype(np.float64), k, seed=seed, minit="++")
    centres = centres[np.isfinite(centres).all(axis=1)]
    flat = lab.reshape(-1, 3)
    dist = np.full(flat.shape[0], np.inf, dtype=np.float32)
    for c in centres.astype(np.float32):
        np.minimum(dist, np.linalg.norm(flat - c, axis=1), out=dist)
    return dist.reshape(lab.shape[:2])


def classical_garment_mask(rgb: np.ndarray) -> np.ndarray:
    """Soft garment mask of a photo with a background model from its border.

    rgb: (H, W, 3) uint8 photo. Returns (H, W) float32 in [0, 1] at the photo's size
    (found at a long side of WORK_SIDE and upsampled smoothly, so edges stay soft).
    Raises GarmentNotFound when nothing stands out from the background.
    """
    small = _working_copy(rgb)
    dist = ndimage.gaussian_filter(background_distance(small), 1.0)
    try:
        otsu = float(threshold_otsu(dist))
    except ValueError:  # a constant image
        otsu = np.inf
    fg = dist > max(otsu, MIN_BACKGROUND_DELTA_E)
    fg = ndimage.binary_opening(fg, iterations=1)
    fg = ndimage.binary_closing(fg, iterations=2)
    labels, n = ndimage.label(fg)
    if n == 0:
        raise GarmentNotFound("no garment stands out from the background of this photo")
    sizes = ndimage.sum_labels(fg, labels, index=np.arange(1, n + 1))
    garment = ndimage.binary_fill_holes(labels == (int(np.argmax(sizes)) + 1))
    if garment.mean() < 0.005:
        raise GarmentNotFound("the only object found is too small to be the garment")
    soft = ndimage.gaussian_filter(garment.astype(np.float32), 0.7)
    h, w = rgb.shape[:2]
    if soft.shape != (h, w):
        soft = np.asarray(Image.fromarray(soft, "F").resize((w, h), Image.Resampling.BILINEAR))
    # Re-sharpen the upsampled ramp to about two photo pixels of edge.
    return np.clip((soft - 0.5) * 2.0 + 0.5, 0.0, 1.0).astype(np.float32)
