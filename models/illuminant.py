"""Colour constancy for the generator: how much brighter or redder the true flat-lay is than
the photo's garment, estimated from the whole scene.

A wild photo carries its camera's white balance and exposure (and the light's fall-off) on
every pixel, background included; the garment's own pixels alone cannot tell a blue shirt
under warm light from a grey one under cold. `scene_features` summarises the photo at
`scene_size`² in log RGB (the whole frame, its background and its garment: means,
percentiles, the mean gradient of grey-edge colour constancy), and `IlluminantNet`, a small
MLP trained on the garment world (`flatlay train illuminant`), maps them to the per-channel
log gain from the photo's garment to the truth. The generator's conditions (W, and the
cutout `noretrieval` starts from) are multiplied by that gain before they are encoded
(`models.generator.conditioning.coarse_conditions`), so the bridge starts from corrected
colours. Measured on validation in docs/generator.md.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from models.config import model_config
from models.pretrained import load_weights, read_meta, save_weights

ILLUMINANT_WEIGHTS = Path(__file__).parent / "weights" / "illuminant-tiny"
N_FEATURES = 21
# The gain is clamped to what the garment world's cameras produce (about ±3.5 σ of
# exposure × white balance), so a strange scene cannot paint the garment.
MAX_LOG_GAIN = 0.7


def scene_features(photo: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """(N_FEATURES,) float32 from the photo (H, W, 3) uint8 and the garment's mask (H, W) in
    the photo (bool or [0, 1]): log RGB of the whole frame (mean, 95th and 50th percentile),
    its mean absolute gradient, the background's mean and 95th percentile, the garment's
    mean."""
    small = np.asarray(Image.fromarray(np.ascontiguousarray(photo)).resize(
        (size, size), Image.Resampling.BOX), np.float32) / 255.0 + 1e-3
    m8 = (np.clip(np.asarray(mask, np.float32), 0, 1) * 255 + 0.5).astype(np.uint8)
    inside = np.asarray(Image.fromarray(m8).resize((size, size), Image.Resampling.BOX)) > 127
    log = np.log(small).reshape(-1, 3)
    inside = inside.reshape(-1)
    # Too few pixels on one side (a garment filling the frame, or none found): the whole
    # frame stands in for it.
    bg = log[~inside] if (~inside).sum() >= 16 else log
    garment = log[inside] if inside.sum() >= 16 else log
    edge = np.abs(np.diff(small, axis=0)).reshape(-1, 3).mean(0)
    return np.concatenate([log.mean(0), np.percentile(log, 95, 0), np.percentile(log, 50, 0),
                           np.log(edge + 1e-3), bg.mean(0), np.percentile(bg, 95, 0),
                           garment.mean(0)]).astype(np.float32)


class IlluminantNet(nn.Module):
    """(B, N_FEATURES) → (B, 3) log gain, clamped to ±MAX_LOG_GAIN. Features are standardised
    by the training set's mean and spread, kept as buffers so the weights carry them."""

    def __init__(self, hidden: int, scene_size: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(N_FEATURES, hidden), nn.SiLU(),
                                 nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3))
        self.register_buffer("mean", torch.zeros(N_FEATURES))
        self.register_buffer("std", torch.ones(N_FEATURES))
        self.hidden, self.scene_size = hidden, scene_size

    @classmethod
    def from_config(cls, config: str | dict[str, Any]) -> IlluminantNet:
        """A fresh net from a named architecture (`models/configs/illuminant-NAME.json`) or
        its dict."""
        cfg = model_config("illuminant", config) if isinstance(config, str) else config
        return cls(hidden=int(cfg["hidden"]), scene_size=int(cfg["scene_size"]))

    def config(self) -> dict[str, int]:
        return {"hidden": self.hidden, "scene_size": self.scene_size}

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        out = self.mlp((features - self.mean) / self.std)
        return MAX_LOG_GAIN * torch.tanh(out / MAX_LOG_GAIN)


class IlluminantEstimator:
    """The trained net with its features: `gain(photo, mask)` per photo."""

    def __init__(self, net: IlluminantNet, meta: dict[str, Any] | None = None) -> None:
        self.net = net.eval()
        self.meta = meta or {}

    @classmethod
    def from_pretrained(cls, folder: Path = ILLUMINANT_WEIGHTS) -> IlluminantEstimator:
        meta = read_meta(folder, "illuminant estimator", "flatlay train illuminant")
        return cls(load_weights(folder, IlluminantNet.from_config(meta["model_cfg"])), meta)

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self.net, {"architecture": "IlluminantNet",
                                        "model_cfg": self.net.config(), **(extra or {})})

    @torch.inference_mode()
    def gain(self, photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """(3,) float32 multiplicative RGB gain, photo's garment → flat-lay."""
        f = torch.from_numpy(scene_features(photo, mask, self.net.scene_size))[None]
        return np.exp(self.net(f)[0].numpy()).astype(np.float32)


def apply_gain(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(…, 3) uint8 times a (3,) gain, rounded and clipped to uint8."""
    return np.clip(rgb.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)


@functools.cache
def shipped_estimator() -> IlluminantEstimator:
    """The shipped estimator, loaded once per process."""
    return IlluminantEstimator.from_pretrained()
