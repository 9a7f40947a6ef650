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


def deepen_denoiser(unet: UNet2DConditionModel, layers_per_block: int) -> UNet2DConditionModel:
    """`unet` with `layers_per_block` ResNet (and attention) layers per block, computing the
    same function: a trained denoiser grows capacity without starting from zero.

    New down-block layers are identities (ResNet `conv2` and attention `proj_out` zero), so
    the extra skips they emit repeat the block's last one. In an up block, layer 0 keeps its
    weights (its skip, the repeated one, is unchanged), the new layers after it are
    identities that ignore their skip (the 1×1 shortcut passes the hidden state and drops
    the skip half), and the old later layers follow, each reading the skip it read before.
    """
    old = int(unet.config.layers_per_block) if isinstance(
        unet.config.layers_per_block, int) else -1
    if old < 1 or layers_per_block < old:
        raise ValueError(f"can only deepen a denoiser with one layer count per block to a "
                         f"larger one: {unet.config.layers_per_block} → {layers_per_block}")
    deep = UNet2DConditionModel.from_config({**unet.config, "layers_per_block": layers_per_block})
    extra = layers_per_block - old
    source = unet.state_dict()
    target = deep.state_dict()

    def moved(key: str) -> str:
        # Up-block layer i ≥ 1 of the old denoiser is layer i + extra of the deep one.
        parts = key.split(".")
        if parts[0] == "up_blocks" and parts[2] in ("resnets", "attentions") \
                and int(parts[3]) >= 1:
            parts[3] = str(int(parts[3]) + extra)
        return ".".join(parts)

    for key, value in source.items():
        target[moved(key)] = value.clone()
    new_layers = [(f"down_blocks.{b}", range(old, layers_per_block))
                  for b in range(len(deep.down_blocks))]
    new_layers += [(f"up_blocks.{b}", range(1, 1 + extra)) for b in range(len(deep.up_blocks))]
    for block, indices in new_layers:
        for i in indices:
            prefix = f"{block}.resnets.{i}"
            for name in ("conv2.weight", "conv2.bias"):
                target[f"{prefix}.{name}"].zero_()
            shortcut = f"{prefix}.conv_shortcut.weight"
            if shortcut in target:
                w = target[shortcut]
                w.zero_()
                w[:, : w.shape[0], 0, 0] = torch.eye(w.shape[0])
                target[f"{prefix}.conv_shortcut.bias"].zero_()
            for name in ("proj_out.weight", "proj_out.bias"):
                key = f"{block}.attentions.{i}.{name}"
                if key in target:
                    target[key].zero_()
    deep.load_state_dict(target)
    return deep.to(next(unet.parameters()).device)
