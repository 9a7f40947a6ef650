"""From the working resolution to the delivered canvas (DESIGN.md: *decoding*, above the
working resolution).

The generated flat-lay carries shape, colour, shading and folds (all low frequencies); the
full-resolution warp of the photo carries the real print, text and weave. The canvas takes
the generated image upsampled, plus the warp's band above the model's resolution where V says
the photo is known: a Laplacian-style split at the generator's Nyquist scale.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage


def upscale(image: np.ndarray, size: int) -> np.ndarray:
    """(R, R, C) float32 → (size, size, C) float32, bicubic per channel."""
    planes = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32), "F")
                         .resize((size, size), Image.Resampling.BICUBIC))
              for c in range(image.shape[-1])]
    return np.stack(planes, -1)


def generated_alpha(alpha: np.ndarray, size: int) -> np.ndarray:
    """A generated (R, R) alpha in [0, 1] → (size, size): upsampled, then its edge ramp
    narrowed back to about one output pixel (an 8× bicubic ramp would look soft)."""
    big = upscale(alpha[..., None], size)[..., 0]
    k = size / alpha.shape[0]
    return np.clip((big - 0.5) * k + 0.5, 0.0, 1.0).astype(np.float32)


def _resized(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A float (H, W) map resized to `shape`: area-averaged down, bilinear up."""
    method = Image.Resampling.BOX if shape[0] < plane.shape[0] else Image.Resampling.BILINEAR
    img = Image.fromarray(np.ascontiguousarray(plane, np.float32), "F")
    return np.asarray(img.resize((shape[1], shape[0]), method))


def smooth(plane: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur of a float (H, W) map at `sigma` px, computed on a grid f = ⌊σ/2⌋
    times coarser and brought back bilinearly: a blur this wide leaves nothing the coarse
    grid cannot hold (within about one grey level of the full-size filter on photos) at a
    third of the cost on a 1024² canvas. The box average down adds f²/12 of variance, which
    the coarse blur leaves out."""
    f = int(sigma // 2)
    if f < 2:
        return ndimage.gaussian_filter(plane, sigma)
    h, w = plane.shape
    small = _resized(plane, (max(1, round(h / f)), max(1, round(w / f))))
    return _resized(ndimage.gaussian_filter(small, np.sqrt(sigma**2 - f**2 / 12) / f), (h, w))


# Where `printed` keeps the band: the band's local mean magnitude (0–255 scale) ramps from
# "none" at PRINT_LOW (sensor noise, JPEG, soft creases) to "all" at PRINT_HIGH (print edges,
# text, stripes).
PRINT_LOW, PRINT_HIGH = 4.0, 12.0


def transfer_detail(image: np.ndarray, warp: np.ndarray, validity: np.ndarray,
                    resolution: int, strength: float = 1.0, printed: bool = False,
                    scale: float = 1.0) -> np.ndarray:
    """Add the warp's detail above `resolution` to `image` where the photo is known.

    image: (S, S, 3) float32 in [0, 255], the upsampled generation; warp: (S, S, 3) uint8, W
    at full size; validity: (S, S) bool, V. The band is W minus W blurred at the generator's
    scale; V's edge is feathered over the same scale so no seam shows. printed: only where
    the band is strong (prints, text, stripes), not on the fine creases and noise of plain
    cloth. scale > 1 widens the band to `scale` times the generator's scale (a print's
    motifs, which the generation washes out), where the warp's band replaces the image's own
    instead of adding to it, and feathers V's edge over the wider scale too. Where a region
    counts as printed is read at the generator's scale always.
    """
    size = image.shape[0]
    if strength <= 0 or size <= resolution or not validity.any():
        return image
    sigma = 0.5 * size / resolution
    w = warp.astype(np.float32)
    band = w - np.stack([smooth(w[..., c], sigma) for c in range(3)], -1)
    # A wide band stays well inside V: its blurs would mix in what lies beyond V's edge
    # (measured: averaging over V alone, to reach the edge, cost garment SSIM and ΔE).
    wide = sigma * scale
    known = ndimage.binary_erosion(validity, iterations=max(1, round(2 * wide)))
    weight = smooth(known.astype(np.float32), wide)
    if printed:
        energy = smooth(np.abs(band).mean(-1), 2 * sigma)
        weight = weight * np.clip((energy - PRINT_LOW) / (PRINT_HIGH - PRINT_LOW), 0.0, 1.0)
    if scale > 1:
        band = w - np.stack([smooth(w[..., c], wide) for c in range(3)], -1)
        band -= image - np.stack([smooth(image[..., c], wide) for c in range(3)], -1)
    return np.clip(image + strength * weight[..., None] * band, 0.0, 255.0)
