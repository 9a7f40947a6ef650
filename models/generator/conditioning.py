"""The generator's conditions at its three levels, from what stages 1–5 found.

*structure*: Ŝ and the landmark heatmaps of L̂, rendered at the latent size (spatial, input
channels of the denoiser), and ê (soft guidance, cross-attention tokens). *pattern*: the warp
W with its validity V (input channels: W through the VAE encoder, V as is) and the garment
crop the parser found, turned into tokens by a small reference encoder (ReferenceNet-like).
The `cutout` placement of the photo is kept too: it is what `noretrieval` starts from.

`coarse_conditions` is the one place that turns a `CoarseAlignment` into these arrays, used
both to cache the training pairs and at inference, so the two cannot drift apart. W and the
cutout arrive colour-corrected: multiplied by the illuminant estimator's gain for the photo
(`models.illuminant`, `corrected`), so the bridge starts from the catalog's colours as far as
the scene reveals them; the crop stays as photographed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from PIL import Image
from torch import nn

# Condition levels that training drops at random and the ablations switch off.
LEVELS = ("soft", "hard", "pattern")


@dataclass
class CoarseConditions:
    """One asset's conditions. R: working resolution, r: latent size, P: crop size.

    warp (R, R, 3) uint8 W; validity (R, R) bool V; structure (3, r, r) float32 in [0, 1]
    (Ŝ, landmark blobs, blobs by contour rank: `structurenet.structure_map`); embedding (D,)
    float32 ê; crop (P, P, 3) uint8; cutout (R, R, 4) uint8, the photo's garment centred on
    the canvas by the parsed mask alone (no retrieval).
    """

    warp: np.ndarray
    validity: np.ndarray
    structure: np.ndarray
    embedding: np.ndarray
    crop: np.ndarray
    cutout: np.ndarray

    def mirrored(self) -> CoarseConditions:
        """The same asset seen in a mirror: every image flipped left to right, ê kept."""
        def flip(a: np.ndarray, width_axis: int = 1) -> np.ndarray:
            return np.ascontiguousarray(np.flip(a, width_axis))

        return CoarseConditions(warp=flip(self.warp), validity=flip(self.validity),
                                structure=flip(self.structure, 2), embedding=self.embedding,
                                crop=flip(self.crop), cutout=flip(self.cutout))


def _area(image: np.ndarray, size: int) -> np.ndarray:
    img = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(img if img.size == (size, size)
                      else img.resize((size, size), Image.Resampling.BOX))


def corrected(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    """(…, 3 or 4) uint8 with its RGB times the (3,) gain (an alpha channel kept as is)."""
    from models.illuminant import apply_gain

    out = np.array(rgb, copy=True)
    out[..., :3] = apply_gain(out[..., :3], gain)
    return out


def cutout_layer(photo: np.ndarray, mask: np.ndarray, resolution: int,
                 gain: np.ndarray) -> np.ndarray:
    """(R, R, 4) uint8: the photo's garment centred by its parsed mask alone (what
    `noretrieval` starts from), colour-corrected by `gain`."""
    from models.compose import CATALOG_FILL, place_garment

    return corrected(np.asarray(place_garment(photo, mask, resolution, CATALOG_FILL).layer),
                     gain)


def photo_gain(photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The shipped illuminant estimator's (3,) RGB gain for the photo and its parsed garment
    mask."""
    from models.illuminant import shipped_estimator

    return shipped_estimator().gain(photo, mask)


def coarse_conditions(coarse, photo: np.ndarray, resolution: int,  # noqa: ANN001
                      latent_size: int) -> CoarseConditions:
    """`coarse` (models.pipelines.stages.CoarseAlignment, its warp at any canvas size ≥ resolution)
    and the photo (H, W, 3) uint8 → the generator's conditions at `resolution`."""
    from models.structurenet import structure_map

    warped = coarse.warped
    valid = _area((warped.validity * 255).astype(np.uint8), resolution) > 127
    fused = coarse.fused
    structure = structure_map(fused.landmarks, fused.silhouette, latent_size)
    gain = photo_gain(photo, coarse.parsed.mask)
    return CoarseConditions(
        warp=corrected(_area(warped.image, resolution), gain), validity=valid,
        structure=structure.astype(np.float32),
        embedding=np.asarray(fused.embedding, np.float32), crop=np.asarray(coarse.crop),
        cutout=cutout_layer(photo, coarse.parsed.mask, resolution, gain))


def images_to_tensor(rgb: np.ndarray, alpha: np.ndarray) -> torch.Tensor:
    """(N, R, R, 3) uint8 + (N, R, R) alpha in [0, 1] → (N, 4, R, R) float in [-1, 1]:
    RGB on white where the alpha says (what the VAE reads), then the alpha."""
    rgb = torch.from_numpy(np.ascontiguousarray(rgb)).float().permute(0, 3, 1, 2) / 255.0
    a = torch.from_numpy(np.ascontiguousarray(alpha, np.float32))[:, None]
    rgb = rgb * a + (1 - a)
    return torch.cat([rgb, a], 1) * 2 - 1


class Conditioner(ModelMixin, ConfigMixin):
    """ê → `soft_tokens` tokens; the garment crop → (P/8)² reference tokens; both of width
    `token_dim`, each with a learned type embedding, concatenated for cross-attention.

    A level switched off arrives as zeros (ê = 0, crop = 0), which is also how training
    drops it, so the network learns a proper "unknown" for each.
    """

    @register_to_config
    def __init__(self, embed_dim: int = 128, token_dim: int = 128, soft_tokens: int = 4,
                 reference_size: int = 64, reference_channels: tuple = (32, 64, 128)) -> None:
        super().__init__()
        self.soft = nn.Sequential(nn.Linear(embed_dim, token_dim * soft_tokens), nn.SiLU(),
                                  nn.Linear(token_dim * soft_tokens, token_dim * soft_tokens))
        layers: list[nn.Module] = []
        c_in = 3
        for c in reference_channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(8, c), nn.SiLU()]
            c_in = c
        layers.append(nn.Conv2d(c_in, token_dim, 1))
        self.reference = nn.Sequential(*layers)
        n_ref = (reference_size // 2 ** len(reference_channels)) ** 2
        self.position = nn.Parameter(torch.zeros(1, n_ref, token_dim))
        self.kind = nn.Parameter(torch.zeros(2, token_dim))
        nn.init.normal_(self.position, std=0.02)
        nn.init.normal_(self.kind, std=0.02)

    def forward(self, embedding: torch.Tensor, crop: torch.Tensor) -> torch.Tensor:
        """embedding (N, D); crop (N, 3, P, P) in [-1, 1] → tokens (N, T, token_dim)."""
        n = embedding.shape[0]
        soft = self.soft(embedding).view(n, self.config.soft_tokens, -1) + self.kind[0]
        ref = self.reference(crop).flatten(2).transpose(1, 2) + self.position + self.kind[1]
        return torch.cat([soft, ref], 1)


def crop_tensor(crops: np.ndarray) -> torch.Tensor:
    """(N, P, P, 3) uint8 → (N, 3, P, P) float in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(crops)).float().permute(0, 3, 1, 2) / 127.5 - 1
