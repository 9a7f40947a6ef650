"""Stage 2, embed: StructureNet, a dual-tower contrastive model built with open_clip.

The photo tower embeds an in-the-wild garment photo; the structure tower embeds a
standardized structure rendered on the canonical canvas (silhouette plus landmark heatmaps).
Trained with open_clip's ClipLoss on (wild photo, own flat-lay structure) pairs, a photo lands
next to the structure of its own flat-lay, so the bank can be searched with it.

Configs are JSON files in `models/configs/` (`structurenet-tiny` for CPUs, `structurenet-base`
for a GPU), registered in open_clip's model-config registry; both towers are open_clip vision
towers (ModifiedResNet when `layers` is a list, ViT when it is an int).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from open_clip.model import _build_vision_tower
from PIL import Image
from torch import nn

from models import config
from models.config import config_id, config_names
from models.pretrained import load_weights, read_meta, save_weights, weights_fingerprint

if TYPE_CHECKING:
    from structure_bank.bank import StructureBank

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "structurenet-tiny"

# Photo normalisation (per channel, on [0, 1] RGB).
PHOTO_MEAN = (0.5, 0.5, 0.5)
PHOTO_STD = (0.25, 0.25, 0.25)


def register_configs() -> list[str]:
    """Put our JSON configs into open_clip's registry (`open_clip.get_model_config`).

    open_clip's own scanner only takes image–text configs, so ours go in directly.
    """
    names = [config_id("structurenet", n) for n in config_names("structurenet")]
    for name in names:
        open_clip.factory._MODEL_CONFIGS[name] = config.model_config("structurenet", name)
    return names


register_configs()


def model_config(name: str) -> dict[str, Any]:
    """The architecture `NAME` or `structurenet-NAME`, from open_clip's registry."""
    return open_clip.get_model_config(config_id("structurenet", name))


class StructureNet(nn.Module):
    """Two open_clip vision towers and a learned temperature."""

    def __init__(self, config: dict[str, Any], name: str = "custom") -> None:
        super().__init__()
        self.name = name
        self.config = config
        self.embed_dim = int(config["embed_dim"])
        self.photo_size = int(config["photo_cfg"]["image_size"])
        self.structure_size = int(config["structure_cfg"]["image_size"])
        self.photo = _build_vision_tower(self.embed_dim, config["photo_cfg"])
        # `photo_mask`: the photo tower also sees the parsed garment mask as a 4th channel, so
        # the silhouette it must match is given, not inferred from texture against background.
        self.photo_channels = 4 if config.get("photo_mask") else 3
        if self.photo_channels != 3:  # both open_clip towers open with `conv1` on RGB
            stem = self.photo.conv1
            self.photo.conv1 = nn.Conv2d(self.photo_channels, stem.out_channels,
                                         stem.kernel_size, stem.stride, stem.padding,
                                         bias=stem.bias is not None)
        self.structure = _build_vision_tower(self.embed_dim, config["structure_cfg"])
        self.logit_scale = nn.Parameter(torch.tensor(float(config.get("init_logit_scale",
                                                                      math.log(1 / 0.07)))))
        # Training-only heads on the shared embedding space: the category and the flat-lay
        # landmarks, read from either tower. They give the towers a dense signal early
        # (contrastive loss alone learns slowly from scratch on a CPU) and make distances in
        # the space follow garment shape, which is what SLLE interpolates.
        n_cat = int(config.get("aux_categories", 0))
        n_lm = int(config.get("aux_landmarks", 0))
        self.category_head = nn.Linear(self.embed_dim, n_cat) if n_cat else None
        self.landmark_head = nn.Linear(self.embed_dim, 2 * n_lm) if n_lm else None
        # Which weights (`from_pretrained`): a bank records the fingerprint it was embedded
        # with, and one embedded by other weights is embedded again before it is searched.
        self.fingerprint: str | None = None

    @classmethod
    def from_config(cls, name: str) -> StructureNet:
        return cls(model_config(name), name=config_id("structurenet", name))

    def encode_photo(self, photos: torch.Tensor) -> torch.Tensor:
        """(B, C, P, P) normalised photo views (`photo_view`) → (B, D) unit vectors."""
        return F.normalize(self.photo(photos), dim=-1)

    def encode_structure(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) structure maps in [0, 1] → (B, D) unit vectors."""
        return F.normalize(self.structure(maps * 2.0 - 1.0), dim=-1)

    def forward(
        self, photos: torch.Tensor, maps: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.encode_photo(photos), self.encode_structure(maps), self.logit_scale.exp()

    # Local folders only: config.json + model.safetensors (+ a model card written by training).

    def save_pretrained(self, folder: Path, extra: dict[str, Any] | None = None) -> None:
        save_weights(folder, self, {"architecture": "StructureNet", "name": self.name,
                                    "model_cfg": self.config, **(extra or {})})

    @classmethod
    def from_pretrained(cls, folder: Path, device: str | torch.device = "cpu") -> StructureNet:
        meta = read_meta(folder, "StructureNet", "flatlay train structurenet")
        model = cls(meta["model_cfg"], name=meta.get("name", "custom"))
        model.fingerprint = weights_fingerprint(folder)
        return load_weights(folder, model).to(device).eval()


# Inputs ----------------------------------------------------------------------------------------


def photo_tensor_uint8(rgb: np.ndarray, size: int, mask: np.ndarray | None = None,
                       pad: float = 0.06, with_mask: bool = False, crop: bool = True
                       ) -> np.ndarray:
    """The photo tower's view of a photo: (size, size, 3) uint8, or (size, size, 4) with the
    mask cropped the same way as the 4th channel (`with_mask`; no mask: all zero).

    With a garment mask (H, W) and `crop`, the photo is cropped to the mask's square box plus
    `pad`; otherwise the whole photo is letterboxed to a square (outside the photo is black).
    """
    h, w = rgb.shape[:2]
    if crop and mask is not None and mask.any():
        ys, xs = np.nonzero(mask)
        cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
        half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 * (1 + 2 * pad) + 1
    else:
        cy, cx, half = h / 2, w / 2, max(h, w) / 2

    def square(img: Image.Image) -> np.ndarray:
        # A square canvas around the box; outside the photo stays black (0).
        side = int(np.ceil(2 * half))
        canvas = Image.new(img.mode, (side, side))
        canvas.paste(img, (int(round(half - cx)), int(round(half - cy))))
        return np.asarray(canvas.resize((size, size), Image.Resampling.BILINEAR,
                                        reducing_gap=2.0))

    view = square(Image.fromarray(rgb))
    if not with_mask:
        return view
    m = mask if mask is not None else np.zeros((h, w), bool)
    return np.concatenate([view, square(Image.fromarray(m.astype(np.uint8) * 255))[..., None]],
                          axis=-1)


def photo_view(model: StructureNet, rgb: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """What `model`'s photo tower embeds of a photo and its parsed garment mask: the crop, with
    the mask as a 4th channel where the model was trained with it."""
    return photo_tensor_uint8(rgb, model.photo_size, mask, with_mask=model.photo_channels == 4)


def normalise_photos(photos: np.ndarray) -> torch.Tensor:
    """(N, P, P, C) uint8 views → (N, C, P, P) float tensor, normalised for the photo tower
    (a 4th channel, the mask, maps to [-1, 1])."""
    t = torch.from_numpy(np.array(photos, copy=True)).permute(0, 3, 1, 2).float() / 255.0
    c = t.shape[1]
    mean = torch.tensor((*PHOTO_MEAN, 0.5)[:c]).view(1, c, 1, 1)
    std = torch.tensor((*PHOTO_STD, 0.5)[:c]).view(1, c, 1, 1)
    return (t - mean) / std


def structure_map(landmarks: np.ndarray, silhouette: np.ndarray, size: int) -> np.ndarray:
    """A structure on the canonical canvas → (3, size, size) float32 in [0, 1].

    Channel 0: the silhouette; 1: Gaussian blobs at the landmarks; 2: the same blobs scaled
    by their rank along the contour, so the tower can tell where the contour starts.
    landmarks: (L, 2) canonical unit square; silhouette: (S, S) bool.
    """
    sil = np.asarray(
        Image.fromarray(silhouette.astype(np.uint8) * 255).resize(
            (size, size), Image.Resampling.BILINEAR), np.float32) / 255.0
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    sigma = 1.5 / size
    gx = np.exp(-((c[None, :] - landmarks[:, :1]) ** 2) / (2 * sigma**2))  # (L, size)
    gy = np.exp(-((c[None, :] - landmarks[:, 1:]) ** 2) / (2 * sigma**2))
    blobs = gy[:, :, None] * gx[:, None, :]  # (L, size, size)
    rank = (np.arange(len(landmarks), dtype=np.float32) + 1) / len(landmarks)
    heat = np.clip(blobs.sum(0), 0, 1)
    ordered = np.clip((blobs * rank[:, None, None]).max(0), 0, 1)
    return np.stack([sil, heat, ordered]).astype(np.float32)


def structure_map_u8(landmarks: np.ndarray, silhouette: np.ndarray, size: int) -> np.ndarray:
    """`structure_map` as cached and embedded everywhere: (3, size, size) uint8 (×255)."""
    return (structure_map(landmarks, silhouette, size) * 255 + 0.5).astype(np.uint8)


@torch.no_grad()
def embed_structures(model: StructureNet, maps: np.ndarray, batch: int = 256) -> np.ndarray:
    """(N, 3, S, S) uint8 structure maps (`structure_map_u8`, as cached) → (N, D) float32
    unit embeddings; scaled to [0, 1] a batch at a time, never as one float copy."""
    model.eval()
    device = next(model.parameters()).device
    out = [model.encode_structure(torch.from_numpy(maps[i : i + batch]).to(device).float()
                                  / 255.0).cpu()
           for i in range(0, len(maps), batch)]
    return torch.cat(out).numpy().astype(np.float32) if out else np.zeros((0, model.embed_dim),
                                                                          np.float32)


@torch.no_grad()
def embed_photos(model: StructureNet, photos: torch.Tensor, batch: int = 128) -> np.ndarray:
    """(N, C, P, P) normalised photo views → (N, D) float32 unit embeddings."""
    model.eval()
    device = next(model.parameters()).device
    out = [model.encode_photo(photos[i : i + batch].to(device)).cpu()
           for i in range(0, len(photos), batch)]
    return torch.cat(out).numpy().astype(np.float32)


def embedding_record(model: StructureNet) -> dict:
    """What a bank's header says of the StructureNet weights that embedded it: their name
    and fingerprint (`StructureNet.from_pretrained`)."""
    return {"weights": model.name, "fingerprint": model.fingerprint}


def embedded_by(bank: StructureBank, model: StructureNet) -> bool:
    """Whether the bank's embeddings come from `model`'s weights (its header's fingerprint)."""
    return model.fingerprint is not None and bank.model.get("fingerprint") == model.fingerprint


def reembed_bank(bank: StructureBank, model: StructureNet, batch: int = 512) -> StructureBank:
    """The bank's entries embedded again by `model`'s structure tower, from the landmarks and
    silhouettes it stores: a bank built with other StructureNet weights searched by this
    model's photo tower would return noise."""
    embs = [embed_structures(model, np.stack([
        structure_map_u8(bank.entry_landmarks(r), bank.entry_silhouette(r),
                         model.structure_size) for r in range(a, min(a + batch, len(bank)))]
    )) for a in range(0, len(bank), batch)]
    embs = np.concatenate(embs) if embs else np.zeros((0, bank.embedding_dim), np.float32)
    return bank.reembedded(embs, {**bank.model, **embedding_record(model)})
