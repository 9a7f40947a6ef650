"""The denoiser: a diffusers `UNet2DConditionModel` on the latent, conditioned at two levels
spatially and one by tokens, predicting the correction of the coarse latent (`bridge`).

Input channels, in order (`input_layout`): the bridge's state x_τ (C, the latent's channels),
the hard structure guidance Ŝ + landmark heatmaps of L̂ (3, `conditioning.CoarseConditions.
structure`), the coarse latent ŷ, i.e. the warp W through the VAE encoder (C), and V's share
of known pixels per latent cell (1). Cross-attention reads the soft guidance ê and the
reference tokens of the garment crop (`conditioning.Conditioner`). Extra input channels won
over a ControlNet branch here by cost: a ControlNet copies the encoder, doubling the
denoiser's time per step on a CPU budget (see docs/generator.md).

The output layer starts at zero: x̂₀ = ŷ + output, so an untrained denoiser returns ŷ.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel

STRUCTURE_CHANNELS = 3


def input_layout(latent_channels: int) -> dict[str, slice]:
    """Where each input sits along the denoiser's channel axis."""
    c, s = latent_channels, STRUCTURE_CHANNELS
    return {"state": slice(0, c), "structure": slice(c, c + s),
            "coarse": slice(c + s, 2 * c + s), "validity": slice(2 * c + s, 2 * c + s + 1)}


def build_denoiser(config: dict) -> UNet2DConditionModel:
    """An untrained denoiser from the `unet` block of a generator config (`out_channels` is
    the latent's channel count), its output layer zero."""
    c = int(config["out_channels"])
    unet = UNet2DConditionModel(in_channels=2 * c + STRUCTURE_CHANNELS + 1, **config)
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.zero_()
    return unet
