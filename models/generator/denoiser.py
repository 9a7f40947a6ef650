"""The denoiser: a diffusers `UNet2DConditionModel` on the latent, conditioned at two levels
spatially and one by tokens.

Input channels, in order: the noisy latent (4), the hard structure guidance Ŝ + landmark
heatmaps of L̂ (3, `conditioning.CoarseConditions.structure`), the warp W through the VAE
encoder (4) and its validity V (1). Cross-attention reads the soft guidance ê and the
reference tokens of the garment crop (`conditioning.Conditioner`). Extra input channels won
over a ControlNet branch here by cost: a ControlNet copies the encoder, doubling the denoiser's
time per step on a CPU budget of ~40 ms a step (see docs/generator.md).
"""

from __future__ import annotations

from diffusers import UNet2DConditionModel

LATENT_CHANNELS = 4
STRUCTURE_CHANNELS = 3
PATTERN_CHANNELS = LATENT_CHANNELS + 1
IN_CHANNELS = LATENT_CHANNELS + STRUCTURE_CHANNELS + PATTERN_CHANNELS


def build_denoiser(config: dict) -> UNet2DConditionModel:
    """An untrained denoiser from the `unet` block of a generator config."""
    return UNet2DConditionModel(in_channels=IN_CHANNELS, **config)
