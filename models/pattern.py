"""The pattern head: which retail pattern (models.attributes.PATTERNS) a delivered garment
wears, read from its pixels by a small CNN trained on the garment world (`flatlay train
pattern`), which knows every garment's fabric and print.

Input: the garment's RGBA, cropped to its alpha's box, squared on white and reduced to
`input_size`² (`pattern_input`), so stripes and checks keep their size relative to the
garment. Trained on true flat-lays and on wild photos' visible garments (with blur, as a
generated 128² garment delivers them), so it reads any pipeline's output.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.attributes import PATTERNS, garment_attributes
from models.config import model_config
from models.parser import conv_block
from models.pretrained import load_weights, read_meta, save_weights

if TYPE_CHECKING:
    from models.pipeline import FlatLayResult

PATTERN_WEIGHTS = Path(__file__).parent / "weights" / "pattern-tiny"


def pattern_input(rgb: np.ndarray, alpha: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 and (H, W) alpha (bool or [0, 1] float) → (size, size, 4) uint8: the
    garment's box, squared and centred on white, RGB on white plus its alpha."""
    inside = np.asarray(alpha) > 0.5
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    if len(rows) == 0:
        y0, x0, y1, x1 = 0, 0, inside.shape[0], inside.shape[1]
    else:
        y0, x0, y1, x1 = rows[0], cols[0], rows[-1] + 1, cols[-1] + 1
    crop_rgb = Image.fromarray(np.ascontiguousarray(rgb[y0:y1, x0:x1]))
    a8 = np.asarray(alpha[y0:y1, x0:x1], np.float32)
    crop_a = Image.fromarray((np.clip(a8, 0, 1) * 255 + 0.5).astype(np.uint8))
    # A delivered canvas is 1024² or more: reduce it first (box filter, in C), so the
    # compositing below works on a few hundred pixels a side (the result is the same box
    # average to within rounding).
    factor = max(1, max(crop_rgb.size) // (2 * size))
    if factor > 1:
        crop_rgb, crop_a = crop_rgb.reduce(factor), crop_a.reduce(factor)
    w, h = crop_rgb.size
    side = max(w, h)
    a_f = np.asarray(crop_a, np.float32)[..., None] / 255.0
    on_white = np.asarray(crop_rgb, np.float32) * a_f + 255.0 * (1 - a_f)
    rgba = np.full((side, side, 4), 255, np.uint8)
    rgba[..., 3] = 0
    oy, ox = (side - h) // 2, (side - w) // 2
    rgba[oy:oy + h, ox:ox + w, :3] = (on_white + 0.5).astype(np.uint8)
    rgba[oy:oy + h, ox:ox + w, 3] = np.asarray(crop_a)
    # RGB and alpha apart: PIL resizes RGBA premultiplied, which would blacken the margin.
    rgb_small = Image.fromarray(rgba[..., :3]).resize((size, size), Image.Resampling.BOX)
    a_small = Image.fromarray(rgba[..., 3]).resize((size, size), Image.Resampling.BOX)
    return np.dstack([np.asarray(rgb_small), np.asarray(a_small)])


def to_tensor(batch: np.ndarray) -> torch.Tensor:
    """(N, S, S, 4) uint8 → (N, 4, S, S) float, RGB centred, alpha in [0, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float() / 255.0
    return torch.cat([(t[:, :3] - 0.5) / 0.25, t[:, 3:]], 1)


class PatternNet(nn.Module):
    """(B, 4, S, S) → (B, len(PATTERNS)) logits: four stride-2 blocks, then the mean and the
    max over the garment (a print is local, a stripe everywhere)."""

    def __init__(self, width: int, input_size: int) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(conv_block(4, w, 2), conv_block(w, 2 * w, 2),
                                      conv_block(2 * w, 4 * w, 2), conv_block(4 * w, 8 * w, 2))
        self.head = nn.Linear(16 * w, len(PATTERNS))
        self.width, self.input_size = width, input_size

    @classmethod
    def from_config(cls, config: str | dict[str, Any]) -> PatternNet:
        """A fresh net from a named architecture (`models/configs/pattern-NAME.json`) or its
        dict."""
        cfg = model_config("pattern", config) if isinstance(config, str) else config
        return cls(width=int(cfg["width"]), input_size=int(cfg["input_size"]))

    def config(self) -> dict[str, int]:
        return {"width": self.width, "input_size": self.input_size}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return self.head(torch.cat([f.mean((2, 3)), f.amax((2, 3))], 1))


class PatternClassifier:
    """The trained head with its input preparation: `read(rgb, alpha)` per garment."""

    def __init__(self, net: PatternNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}

    @classmethod
    def from_pretrained(cls, folder: Path = PATTERN_WEIGHTS) -> PatternClassifier:
        meta = read_meta(folder, "pattern head", "flatlay train pattern")
        if list(meta["patterns"]) != list(PATTERNS):
            raise ValueError(f"{folder} was trained for patterns {meta['patterns']}, "
                             f"not {list(PATTERNS)}")
        return cls(load_weights(folder, PatternNet.from_config(meta["model_cfg"])), meta)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {"architecture": "PatternNet",
                                        "model_cfg": self.net.config(),
                                        "patterns": list(PATTERNS), **(extra or {})})

    @torch.inference_mode()
    def probabilities(self, rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """(len(PATTERNS),) probabilities for one garment."""
        x = to_tensor(pattern_input(rgb, alpha, self.net.input_size)[None])
        return torch.softmax(self.net(x), 1)[0].numpy()

    def read(self, rgb: np.ndarray, alpha: np.ndarray) -> str:
        return PATTERNS[int(np.argmax(self.probabilities(rgb, alpha)))]


@functools.cache
def shipped_classifier() -> PatternClassifier:
    """The shipped head, loaded once per process."""
    return PatternClassifier.from_pretrained()


def delivered_attributes(result: FlatLayResult) -> dict[str, Any]:
    """A pipeline result's catalog attributes, pattern included (read from the photo's own
    texture where the pipeline re-draws the garment, else from the delivered pixels): what
    the worker stores and the attributes benchmark scores (one definition for both)."""
    rgb, alpha = result.texture or (result.image[..., :3], result.alpha)
    pattern = shipped_classifier().read(rgb, alpha) if float(np.max(alpha)) > 0.5 else None
    out = garment_attributes(result.category, result.landmarks, result.image, result.alpha,
                             category_confidence=result.category_confidence,
                             frame=result.frame, pattern=pattern,
                             photo_landmarks=result.photo_landmarks)
    if result.hint is not None:
        out["hint"] = result.hint
    return out
