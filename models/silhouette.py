"""Stage 5's silhouette refiner: the photo's evidence corrects the fused silhouette Ŝ.

Ŝ comes from the bank's structures fitted to the parsed landmarks, and a worn, draped or
folded garment's outline is not pinned by its landmarks: with the photo's *true* landmarks
the same fit reaches only IoU 0.876 on validation (docs/flatten.md, *What the parsed landmarks
can still give*). The warp has by then put the photo on the canonical canvas, so what the
photo says about the outline is there to read: `RefinerNet`, a small U-Net at half the
`CANVAS`² canvas, reads Ŝ's signed distance, the warped photo mask, where the photo covers
the canvas and the warped photo W, and adds a correction to Ŝ's logit through a
zero-initialised output layer (an untrained refiner returns Ŝ exactly). Trained by
`flatlay train silhouette` on photos through the served stages 1–5; measured in its model
card and docs/flatten.md.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from models.config import model_config
from models.pretrained import load_weights, read_meta, save_weights
from models.warp import PhotoWarp, signed_distance

SILHOUETTE_WEIGHTS = Path(__file__).parent / "weights" / "silhouette-tiny"
# Ŝ's own resolution (the bank's silhouettes): the refiner works on the same canvas.
CANVAS = 128
N_INPUTS = 6  # Ŝ's signed distance, warped mask, coverage, W's RGB
# The side of the spline's warp that the refiner's and registration's CANVAS² views are
# area-downsampled from: the photo size both were trained at, so a larger served canvas
# samples the photo at this side for them and at full size only once, through the final map.
VIEW_SIZE = 512
# Ŝ's signed distance is fed clipped at ±SDF_SCALE px: the correction is local to the edge.
SDF_SCALE = 16.0


def conv_block(i: int, o: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU(),
                         nn.Conv2d(o, o, 3, padding=1), nn.GroupNorm(4, o), nn.SiLU())


def canvas_encoder(width: int) -> nn.ModuleList:
    """Four levels from the N_INPUTS canvas channels at C/2 down to C/16 (width 1–4×): the
    encoder the refiner and registration share (each pools before its level)."""
    w = width
    return nn.ModuleList([conv_block(N_INPUTS, w), conv_block(w, 2 * w),
                          conv_block(2 * w, 3 * w), conv_block(3 * w, 4 * w)])


class RefinerNet(nn.Module):
    """(inputs (B, N_INPUTS, C, C), Ŝ's signed distance (B, 1, C, C) in px) → the refined
    silhouette's logit (B, 1, C, C): −distance / tau plus a U-Net's correction computed at
    C/2 (four levels) and upsampled."""

    def __init__(self, width: int, tau: float) -> None:
        super().__init__()
        w = width
        self.enc = canvas_encoder(w)
        self.dec = nn.ModuleList([conv_block(7 * w, 3 * w), conv_block(5 * w, 2 * w),
                                  conv_block(3 * w, w)])
        self.out = nn.Conv2d(w, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.width, self.tau = width, tau

    @classmethod
    def from_config(cls, config: str | dict[str, Any]) -> RefinerNet:
        """A fresh net from a named architecture (`models/configs/silhouette-NAME.json`) or
        its dict."""
        cfg = model_config("silhouette", config) if isinstance(config, str) else config
        return cls(width=int(cfg["width"]), tau=float(cfg["tau"]))

    def config(self) -> dict[str, float]:
        return {"width": self.width, "tau": self.tau}

    def forward(self, x: torch.Tensor, sdf: torch.Tensor) -> torch.Tensor:
        skips = [self.enc[0](F.avg_pool2d(x, 2))]
        for block in self.enc[1:]:
            skips.append(block(F.avg_pool2d(skips[-1], 2)))
        h = skips.pop()
        for block in self.dec:
            h = block(torch.cat([F.interpolate(h, scale_factor=2, mode="bilinear"),
                                 skips.pop()], 1))
        delta = F.interpolate(self.out(h), scale_factor=2, mode="bilinear")
        return -sdf / self.tau + delta


def refiner_views(warped: PhotoWarp) -> dict[str, np.ndarray]:
    """The warp as the refiner reads it, area-downsampled to CANVAS²: `mask` and `coverage`
    uint8 (0–255), `rgb` (C, C, 3) uint8 — compact enough to cache thousands for training."""
    def box(a: np.ndarray) -> np.ndarray:
        img = Image.fromarray(np.ascontiguousarray(a))
        if img.size != (CANVAS, CANVAS):
            img = img.resize((CANVAS, CANVAS), Image.Resampling.BOX)
        return np.asarray(img)

    return {"mask": box((np.clip(warped.mask, 0, 1) * 255 + 0.5).astype(np.uint8)),
            "coverage": box(warped.coverage.astype(np.uint8) * 255),
            "rgb": box(warped.image)}


def refiner_inputs(silhouettes: np.ndarray, mask: np.ndarray, coverage: np.ndarray,
                   rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched network inputs from N photos' Ŝ (N, C, C) bool and their `refiner_views`
    (stacked): (inputs (N, N_INPUTS, C, C), Ŝ's signed distance (N, 1, C, C) in px)."""
    return refiner_tensors(np.stack([signed_distance(s) for s in silhouettes]), mask,
                           coverage, rgb)


def refiner_tensors(sdf: np.ndarray, mask: np.ndarray, coverage: np.ndarray,
                    rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """`refiner_inputs` from Ŝ's signed distances (N, C, C) already computed (a trainer
    keeps them compact and builds each batch's tensors from its indices)."""
    sdf = np.asarray(sdf, np.float32)
    x = np.concatenate([np.clip(sdf / SDF_SCALE, -1, 1)[:, None],
                        np.asarray(mask, np.float32)[:, None] / 255.0,
                        np.asarray(coverage, np.float32)[:, None] / 255.0,
                        np.asarray(rgb, np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0], 1)
    return torch.from_numpy(x), torch.from_numpy(sdf[:, None])


class SilhouetteRefiner:
    """The trained net: `refine(Ŝ, warp)` per photo."""

    def __init__(self, net: RefinerNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}

    @classmethod
    def from_pretrained(cls, folder: Path = SILHOUETTE_WEIGHTS) -> SilhouetteRefiner:
        meta = read_meta(folder, "silhouette refiner", "flatlay train silhouette")
        return cls(load_weights(folder, RefinerNet.from_config(meta["model_cfg"])), meta)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {"architecture": "RefinerNet",
                                        "model_cfg": self.net.config(), **(extra or {})})

    @torch.inference_mode()
    def refine(self, silhouette: np.ndarray, warped: PhotoWarp) -> np.ndarray:
        """Ŝ (CANVAS, CANVAS) bool and the photo's warp (any canvas size) → the refined
        silhouette, (CANVAS, CANVAS) bool. A result without a single pixel keeps Ŝ (the
        garment is never refined away)."""
        if silhouette.shape != (CANVAS, CANVAS):
            raise ValueError(f"Ŝ is {silhouette.shape}, the refiner works at {CANVAS}²")
        v = refiner_views(warped)
        x, sdf = refiner_inputs(silhouette[None], v["mask"][None], v["coverage"][None],
                                v["rgb"][None])
        refined = (self.net(x, sdf)[0, 0] > 0).numpy()
        return refined if refined.any() else silhouette


@functools.cache
def shipped_refiner() -> SilhouetteRefiner:
    """The shipped refiner, loaded once per process."""
    return SilhouetteRefiner.from_pretrained()
