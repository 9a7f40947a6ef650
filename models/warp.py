"""Stage 5, coarse align: thin-plate-spline warps between landmark sets.

Landmarks are (N, 2) arrays of (x, y). A warp is computed backwards: for each output pixel
the spline maps its position in the target frame to where it comes from in the source, and
the source is sampled there. The spline is evaluated on a coarse grid and upsampled, so a
large output costs little more than a small one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage


def _kernel(r2: np.ndarray) -> np.ndarray:
    # U(r) = r² log r², with U(0) = 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        out = r2 * np.log(r2)
    return np.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


@dataclass(frozen=True)
class ThinPlateSpline:
    """f(p) = a0 + A p + Σ w_i U(|p − c_i|), fitted so that f(src_i) ≈ dst_i."""

    centres: np.ndarray  # (N, 2)
    weights: np.ndarray  # (N, 2)
    affine: np.ndarray  # (3, 2)

    @classmethod
    def fit(cls, src: np.ndarray, dst: np.ndarray, smoothing: float = 1e-5) -> ThinPlateSpline:
        """src, dst: (N, 2) corresponding points. `smoothing` > 0 relaxes exact
        interpolation, which keeps near-duplicate points from making the system singular."""
        src = np.asarray(src, np.float64)
        dst = np.asarray(dst, np.float64)
        if src.shape != dst.shape or src.ndim != 2 or src.shape[1] != 2:
            raise ValueError(f"src and dst must both be (N, 2); got {src.shape} and {dst.shape}")
        n = len(src)
        if n < 3:
            raise ValueError(f"a thin-plate spline needs at least 3 points, got {n}")
        k = _kernel(((src[:, None] - src[None]) ** 2).sum(-1)) + smoothing * np.eye(n)
        p = np.hstack([np.ones((n, 1)), src])
        system = np.zeros((n + 3, n + 3))
        system[:n, :n] = k
        system[:n, n:] = p
        system[n:, :n] = p.T
        rhs = np.vstack([dst, np.zeros((3, 2))])
        try:
            sol = np.linalg.solve(system, rhs)
        except np.linalg.LinAlgError:
            sol = np.linalg.lstsq(system, rhs, rcond=None)[0]
        return cls(centres=src, weights=sol[:n], affine=sol[n:])

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """points (M, 2) → (M, 2)."""
        pts = np.asarray(points, np.float64)
        u = _kernel(((pts[:, None] - self.centres[None]) ** 2).sum(-1))
        return self.affine[0] + pts @ self.affine[1:] + u @ self.weights


def backward_map(
    src_landmarks: np.ndarray,
    dst_landmarks: np.ndarray,
    out_shape: tuple[int, int],
    grid: int = 48,
    smoothing: float = 1e-5,
) -> np.ndarray:
    """Source coordinates of every output pixel, for a warp taking src landmarks to dst.

    Landmarks are in the unit square of their own image (x right, y down). Returns
    (2, H, W) float32: source (x, y) in the source's unit square for each output pixel.
    """
    h, w = out_shape
    tps = ThinPlateSpline.fit(dst_landmarks, src_landmarks, smoothing)
    gh, gw = min(grid, h), min(grid, w)
    ys, xs = np.meshgrid(
        (np.arange(gh) + 0.5) / gh, (np.arange(gw) + 0.5) / gw, indexing="ij"
    )
    coarse = tps(np.stack([xs.ravel(), ys.ravel()], 1)).reshape(gh, gw, 2)
    if (gh, gw) == (h, w):
        return np.moveaxis(coarse, -1, 0).astype(np.float32)
    # Upsample the smooth coordinate field (pixel centres of the coarse grid map to the fine):
    # bilinear is separable, so two small matrix products instead of a per-pixel lookup.
    ry = _linear_weights(h, gh)
    rx = _linear_weights(w, gw)
    return np.stack([ry @ coarse[..., c].astype(np.float32) @ rx.T for c in range(2)])


def _linear_weights(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) bilinear interpolation weights between pixel-centre grids, clamped at
    the ends (what map_coordinates with mode="nearest" gives)."""
    pos = np.clip((np.arange(n_out) + 0.5) / n_out * n_in - 0.5, 0, n_in - 1)
    lo = np.floor(pos).astype(int)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] += 1 - frac
    m[np.arange(n_out), hi] += frac
    return m


def warp_to_landmarks(
    image: np.ndarray,
    src_landmarks: np.ndarray,
    dst_landmarks: np.ndarray,
    out_shape: tuple[int, int],
    order: int = 1,
    cval: float = 0.0,
) -> np.ndarray:
    """Warp `image` so that its landmarks move onto `dst_landmarks`.

    image: (H, W) or (H, W, C), any dtype; landmarks (N, 2) in unit squares of the source and
    output images. Returns an array of `out_shape` (+ channels) and the image's dtype;
    pixels that come from outside the source get `cval`.
    """
    coords = backward_map(src_landmarks, dst_landmarks, out_shape)
    h, w = image.shape[:2]
    rows = coords[1] * h - 0.5
    cols = coords[0] * w - 0.5
    src = image.astype(np.float32) if image.dtype == bool else image
    if src.ndim == 2:
        out = ndimage.map_coordinates(src, [rows, cols], order=order, mode="constant", cval=cval)
    else:
        out = np.stack(
            [ndimage.map_coordinates(src[..., c], [rows, cols], order=order, mode="constant",
                                     cval=cval) for c in range(src.shape[2])],
            axis=-1,
        )
    if image.dtype == bool:
        return out > 0.5
    return out.astype(image.dtype)


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool → (H, W) float32 signed distance in pixels: negative inside, positive out."""
    mask = mask.astype(bool)
    if not mask.any():
        return np.full(mask.shape, float(sum(mask.shape)), np.float32)
    if mask.all():
        return np.full(mask.shape, -float(sum(mask.shape)), np.float32)
    outside = ndimage.distance_transform_edt(~mask)
    inside = ndimage.distance_transform_edt(mask)
    return (outside - inside).astype(np.float32)


@dataclass
class PhotoWarp:
    """The photo re-sampled onto the canonical canvas.

    image: (S, S, 3) uint8; mask: (S, S) float32, the photo's garment mask carried along;
    validity: (S, S) bool, V: where texture is known (inside the photo and on the garment);
    coverage: (S, S) bool, where the canvas maps inside the photo at all (the silhouette
    refiner tells a garment cut by the frame from one that ends).
    """

    image: np.ndarray
    mask: np.ndarray
    validity: np.ndarray
    coverage: np.ndarray


def photo_to_canvas_map(photo_landmarks: np.ndarray, canvas_landmarks: np.ndarray,
                        photo_shape: tuple[int, int], size: int,
                        smoothing: float = 1e-3) -> np.ndarray:
    """Photo pixel coordinates (rows, cols) of every canvas pixel, (2, S, S) float32.

    photo_landmarks: (N, 2) in the photo's unit square; canvas_landmarks: (N, 2) in the
    canvas's unit square. The spline works in the photo's pixels over its longer side, so a
    non-square photo is not stretched; `smoothing` lets noisy parsed points pull rather than
    pin the warp.
    """
    h, w = photo_shape
    side = float(max(h, w))
    src = np.asarray(photo_landmarks, np.float64) * (w, h) / side
    coords = backward_map(src, canvas_landmarks, (size, size), smoothing=smoothing)
    return np.stack([coords[1] * side - 0.5, coords[0] * side - 0.5])


def warp_photo(rgb: np.ndarray, mask: np.ndarray, photo_landmarks: np.ndarray,
               canvas_landmarks: np.ndarray, size: int, smoothing: float = 1e-3) -> PhotoWarp:
    """Re-sample the full-resolution photo onto a `size`² canvas so that its landmarks land
    on `canvas_landmarks` (`photo_to_canvas_map`, then `resample_photo`)."""
    return resample_photo(rgb, mask, photo_to_canvas_map(photo_landmarks, canvas_landmarks,
                                                         rgb.shape[:2], size, smoothing))


def resample_photo(rgb: np.ndarray, mask: np.ndarray, photo_map: np.ndarray) -> PhotoWarp:
    """The photo and its mask sampled at a backward map (2, S, S) of photo (rows, cols) per
    canvas pixel (bilinear: sharpness follows the photo, not a model resolution).

    rgb: (H, W, 3) uint8; mask: (H, W) float in [0, 1]. Sampling runs in torch's
    grid_sample (threaded), about ten times faster than per-channel scipy at 2000².
    """
    import torch
    import torch.nn.functional as F

    rows, cols = photo_map
    h, w = rgb.shape[:2]
    inside = (rows >= -0.5) & (rows <= h - 0.5) & (cols >= -0.5) & (cols <= w - 0.5)
    planes = np.concatenate([rgb, (np.clip(mask, 0, 1) * 255)[..., None]], axis=-1)
    src = torch.from_numpy(np.ascontiguousarray(planes, np.float32)).permute(2, 0, 1)[None]
    # Pixel-centre coordinates to grid_sample's [-1, 1] (align_corners=False convention).
    grid = np.stack([(cols + 0.5) / w * 2 - 1, (rows + 0.5) / h * 2 - 1], -1)[None]
    with torch.inference_mode():
        out = F.grid_sample(src, torch.from_numpy(grid.astype(np.float32)), mode="bilinear",
                            padding_mode="border", align_corners=False)[0]
    out = out.permute(1, 2, 0).numpy()
    image = np.clip(out[..., :3] + 0.5, 0, 255).astype(np.uint8)
    warped_mask = np.where(inside, out[..., 3] / 255.0, 0.0).astype(np.float32)
    return PhotoWarp(image, warped_mask, inside & (warped_mask > 0.5), inside)
