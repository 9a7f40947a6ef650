"""The latent space: an `AutoencoderKL` over RGBA flat-lays, and the decoder aligned to the
photo (DESIGN.md, three-level alignment, *decoding*).

Images are (N, 4, R, R) float in [-1, 1]: RGB composited on white, then the garment alpha, so
a decoded latent carries its own silhouette. The latent is (N, 4, R/4, R/4) for the tiny
config, scaled by the VAE's `scaling_factor` (measured on the training flat-lays) to unit
variance for the denoiser.

`DecoderAdapter` turns the warped photo W and its validity V into one feature map per decoder
scale; each enters through a zero-initialised 1×1 convolution, so an untrained adapter leaves
the decoder exactly as it was and training only adds what the photo's real print adds.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from torch import nn


def build_vae(config: dict) -> AutoencoderKL:
    """An untrained AutoencoderKL from the `vae` block of a generator config."""
    return AutoencoderKL(**config)


def decoder_targets(vae: AutoencoderKL) -> list[tuple[int, int]]:
    """(channels, downscale from the image) after the mid block and after each up block."""
    channels = list(reversed(vae.config.block_out_channels))
    factor = 2 ** (len(channels) - 1)
    targets = [(channels[0], factor)]
    for i, ch in enumerate(channels):
        if i < len(channels) - 1:
            factor //= 2
        targets.append((ch, factor))
    return targets


class DecoderAdapter(ModelMixin, ConfigMixin):
    """W (RGB in [-1, 1]) and V ({0, 1}) at the working resolution → one residual per decoder
    scale (see `decoder_targets`)."""

    @register_to_config
    def __init__(self, targets: list[list[int]] | tuple = ((64, 4), (64, 2), (64, 1), (32, 1)),
                 in_channels: int = 4, width: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.SiLU(),
                                  nn.Conv2d(width, width, 3, padding=1), nn.SiLU())
        factors = sorted({int(f) for _, f in targets})
        self.factors = factors
        # Factor f's features come from a stride-2 chain of log2(f) steps.
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, width, 3, stride=2, padding=1), nn.SiLU())
            for _ in range(max(factors).bit_length() - 1))
        self.heads = nn.ModuleList(nn.Conv2d(width, int(ch), 1) for ch, _ in targets)
        for head in self.heads:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, photo: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(photo)
        pyramid = {1: x}
        f = 1
        for down in self.down:
            x = down(x)
            f *= 2
            pyramid[f] = x
        return [head(pyramid[int(f)]) for head, (_, f) in zip(self.heads,
                                                              self.config.targets, strict=True)]


def decode_aligned(vae: AutoencoderKL, latents: torch.Tensor,
                   adapter: DecoderAdapter | None = None,
                   photo: torch.Tensor | None = None) -> torch.Tensor:
    """Decode scaled latents (N, 4, r, r) → images (N, 4, R, R) in [-1, 1]; with an adapter
    and photo (N, 4, R, R: W and V), the photo's features join at every decoder scale.
    Without, this equals `vae.decode(latents / scaling_factor)`."""
    z = latents / vae.config.scaling_factor
    if vae.post_quant_conv is not None:
        z = vae.post_quant_conv(z)
    dec = vae.decoder
    residuals = adapter(photo) if adapter is not None and photo is not None else None
    x = dec.conv_in(z)
    x = dec.mid_block(x, None)
    if residuals is not None:
        x = x + residuals[0]
    for i, block in enumerate(dec.up_blocks):
        x = block(x, None)
        if residuals is not None:
            x = x + residuals[i + 1]
    x = dec.conv_act(dec.conv_norm_out(x))
    return dec.conv_out(x)


def encode_mean(vae: AutoencoderKL, images: torch.Tensor) -> torch.Tensor:
    """Images (N, 4, R, R) in [-1, 1] → scaled latent means (N, 4, r, r)."""
    return vae.encode(images).latent_dist.mean * vae.config.scaling_factor
