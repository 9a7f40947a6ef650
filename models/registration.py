"""Stage 5's registration: the photo's evidence corrects the landmark spline's warp.

The thin-plate spline puts the photo's parsed landmarks on the fused ones; between them a worn,
draped or folded garment lands where the spline guesses, and the parsed points themselves are
off by a few pixels. That misplacement costs more than anything the generator corrects: the
photo moved through the renderer's *true* correspondence scores garment SSIM 0.667 on test
against flatten's 0.434 (docs/generator.md, *Where the error is*). `RegistrationNet`, a small
U-Net at half the `CANVAS`² canvas, reads what the silhouette refiner reads (Ŝ's signed
distance, the warped photo mask, the photo's coverage, W) and predicts a smooth displacement
field at FIELD²: each canvas pixel takes the photo from where the spline's map points at the
displaced position, so the correction composes with the spline instead of replacing it, and
the full-resolution photo is sampled once through the composed map (its sharpness is kept).
A zero-initialised output layer makes an untrained net return the spline's warp exactly.
Trained by `flatlay train registration` against the renderer's correspondence.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.config import model_config
from models.pretrained import load_weights, read_meta, save_weights
from models.silhouette import (
    CANVAS,
    canvas_encoder,
    conv_block,
    refiner_inputs,
    refiner_views,
)
from models.warp import PhotoWarp, resample_photo

REGISTRATION_WEIGHTS = Path(__file__).parent / "weights" / "registration-tiny"
# The displacement field's resolution (4 canvas pixels a cell; chosen, not tuned): the spline
# errs per garment part and fold, smoothly, and a coarse field cannot tear the photo.
FIELD = 32


class RegistrationNet(nn.Module):
    """(the refiner's inputs (B, N_INPUTS, C, C)) → the displacement (B, 2, FIELD, FIELD) in
    canvas pixels at C = CANVAS, (x, y): where on the spline's canvas each pixel takes its
    photo from, relative to itself. Encoder at C/2 … C/16, decoder back to FIELD."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.enc = canvas_encoder(w)
        self.dec = nn.ModuleList([conv_block(7 * w, 3 * w), conv_block(5 * w, 2 * w)])
        self.out = nn.Conv2d(2 * w, 2, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.width = width

    @classmethod
    def from_config(cls, config: str | dict[str, Any]) -> RegistrationNet:
        """A fresh net from `models/configs/registration-NAME.json` or its dict."""
        cfg = model_config("registration", config) if isinstance(config, str) else config
        return cls(width=int(cfg["width"]))

    def config(self) -> dict[str, int]:
        return {"width": self.width}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self.enc[0](F.avg_pool2d(x, 2))]
        for block in self.enc[1:]:
            skips.append(block(F.avg_pool2d(skips[-1], 2)))
        h = skips.pop()
        for block in self.dec:
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="bilinear"),
                                 skips.pop()], 1))
        return self.out(h)


def composed_map(photo_map: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """The spline's backward map (B, 2, S, S) (photo rows, cols per canvas pixel) read at
    each pixel's displaced position: the registered map, same shape. `displacement`
    (B, 2, FIELD, FIELD) in CANVAS pixels is upsampled to S (any canvas size)."""
    b, _, s, _ = photo_map.shape
    d = F.interpolate(displacement, size=(s, s), mode="bilinear", align_corners=False)
    centres = (torch.arange(s, dtype=photo_map.dtype, device=photo_map.device) + 0.5) / s * 2 - 1
    gy, gx = torch.meshgrid(centres, centres, indexing="ij")
    grid = torch.stack([gx, gy], -1)[None] + d.permute(0, 2, 3, 1) * (2.0 / CANVAS)
    # Past the canvas's edge the map goes on as at the edge (the spline is smooth there).
    return F.grid_sample(photo_map, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def true_photo_map(visible: np.ndarray, coords: np.ndarray, size: int = CANVAS
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The map a warp without error would use: for each pixel of a size² canvas the mean
    photo (row, col) of the photo's `visible` garment pixels whose true flat-lay position
    (`coords`, `GarmentSample.wild_flat_coords`) falls in it. Returns ((2, size, size)
    float32, (size, size) bool where some photo pixel landed: the rest is occluded or out of
    frame, and has no truth)."""
    ok = visible & np.isfinite(coords[..., 0])
    cell = np.clip((coords[ok] * size).astype(np.int64), 0, size - 1)
    flat = cell[:, 1] * size + cell[:, 0]
    count = np.bincount(flat, minlength=size * size).astype(np.float64)
    rows, cols = np.nonzero(ok)
    sums = [np.bincount(flat, v.astype(np.float64), size * size) for v in (rows, cols)]
    known = count > 0
    out = np.stack([np.where(known, t / np.maximum(count, 1), 0.0) for t in sums])
    return out.reshape(2, size, size).astype(np.float32), known.reshape(size, size)


def endpoint_error(photo_map: torch.Tensor, truth: torch.Tensor, known: torch.Tensor,
                   scale: torch.Tensor | float) -> torch.Tensor:
    """Per photo, the mean distance between a map's and the true photo positions (B, 2, S, S)
    over the `known` (B, S, S) pixels, times `scale` (B,) (photo pixels → the unit the caller
    reports in)."""
    err = ((photo_map - truth) ** 2).sum(1).add(1e-6).sqrt()
    k = known.to(err.dtype)
    per = (err * k).flatten(1).sum(1) / k.flatten(1).sum(1).clamp(min=1)
    return per * scale


class PhotoRegistration:
    """The trained net: `register(...)` per photo."""

    def __init__(self, net: RegistrationNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}

    @classmethod
    def from_pretrained(cls, folder: Path = REGISTRATION_WEIGHTS) -> PhotoRegistration:
        meta = read_meta(folder, "registration", "flatlay train registration")
        return cls(load_weights(folder, RegistrationNet.from_config(meta["model_cfg"])), meta)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {"architecture": "RegistrationNet",
                                        "model_cfg": self.net.config(), **(extra or {})})

    @torch.inference_mode()
    def displacement(self, silhouette: np.ndarray, warped: PhotoWarp) -> torch.Tensor:
        """Ŝ (CANVAS, CANVAS) bool and the spline's warp → (1, 2, FIELD, FIELD)."""
        if silhouette.shape != (CANVAS, CANVAS):
            raise ValueError(f"Ŝ is {silhouette.shape}, registration works at {CANVAS}²")
        v = refiner_views(warped)
        x, _ = refiner_inputs(silhouette[None], v["mask"][None], v["coverage"][None],
                              v["rgb"][None])
        return self.net(x)

    @torch.inference_mode()
    def register(self, rgb: np.ndarray, mask: np.ndarray, photo_map: np.ndarray,
                 silhouette: np.ndarray, warped: PhotoWarp) -> tuple[PhotoWarp, np.ndarray]:
        """The photo (H, W, 3) uint8 and its mask warped again through the corrected map:
        (the new warp, its map (2, S, S) float32). `photo_map` and `warped` are the spline's
        (`models.warp.photo_to_canvas_map`, `resample_photo`)."""
        d = self.displacement(silhouette, warped)
        fixed = composed_map(torch.from_numpy(np.ascontiguousarray(photo_map))[None], d)[0]
        fixed = fixed.numpy()
        return resample_photo(rgb, mask, fixed), fixed


@functools.cache
def shipped_registration() -> PhotoRegistration:
    """The shipped registration, loaded once per process."""
    return PhotoRegistration.from_pretrained()
