"""`FlatLayGenerator`: the trained parts of stage 6 together, from conditions to a flat-lay at
the working resolution. Batched: N assets go through the denoiser in one forward pass.

The diffusion is a bridge from the coarse latent ŷ (W through the VAE encoder) to the
flat-lay's latent (`bridge`): sampling starts at ŷ plus a little noise, more where V says the
photo does not know the garment, and an untrained denoiser returns ŷ.

Weights are two local folders: the latent space (`vae-tiny/`: `vae/` and `decoder_adapter/`,
from `flatlay train vae`) and the generator (`generator-tiny/`: `unet/`, `conditioner/`,
`generator.json` with the bridge's schedule and the default step count, from `flatlay train
generator`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel

from models.generator.autoencoder import DecoderAdapter, decode_aligned, encode_mean
from models.generator.bridge import BridgeSchedule, check_steps
from models.generator.conditioning import (
    CoarseConditions,
    Conditioner,
    crop_tensor,
    images_to_tensor,
)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
VAE_WEIGHTS = WEIGHTS_DIR / "vae-tiny"
GENERATOR_WEIGHTS = WEIGHTS_DIR / "generator-tiny"


def validity_map(validity: torch.Tensor, latent_size: int) -> torch.Tensor:
    """(N, 1, R, R) V in {0, 1} → (N, 1, r, r) share of known pixels per latent cell."""
    return F.adaptive_avg_pool2d(validity.float(), latent_size)


def pattern_inputs(vae: AutoencoderKL, rgb: np.ndarray, alpha: np.ndarray,
                   latent_size: int) -> torch.Tensor:
    """The pattern channels of the denoiser, (N, C + 1, r, r): W (on white where V is 0) through
    the VAE encoder, then V's share per latent cell. rgb (N, R, R, 3) uint8; alpha (N, R, R)
    in [0, 1] (V, or the cutout's alpha for `noretrieval`)."""
    images = images_to_tensor(rgb, alpha).to(vae.device, vae.dtype)
    with torch.no_grad():
        latent = encode_mean(vae, images)
    return torch.cat([latent, validity_map(images[:, 3:] > 0, latent_size)], 1)


def blank_pattern(vae: AutoencoderKL, n: int, resolution: int,
                  latent_size: int) -> torch.Tensor:
    """The pattern channels of "the photo knows nothing" (N, C + 1, r, r): an empty white
    canvas through the encoder and V = 0. What the bridge starts from when the pattern level
    is switched off."""
    rgb = np.full((1, resolution, resolution, 3), 255, np.uint8)
    alpha = np.zeros((1, resolution, resolution), np.float32)
    return pattern_inputs(vae, rgb, alpha, latent_size).expand(n, -1, -1, -1)


@dataclass
class DenoiserInputs:
    """One batch's inputs besides x_τ: structure (N, 3, r, r), the coarse latent ŷ (N, C, r, r)
    the bridge starts from, V's share per latent cell (N, 1, r, r), tokens (N, T, d)."""

    structure: torch.Tensor
    coarse: torch.Tensor
    validity: torch.Tensor
    tokens: torch.Tensor

    def spatial(self) -> torch.Tensor:
        """The condition channels in `denoiser.input_layout` order."""
        return torch.cat([self.structure, self.coarse, self.validity], 1)


def predict_x0(unet: UNet2DConditionModel, state: torch.Tensor, t: torch.Tensor,
               inputs: DenoiserInputs) -> torch.Tensor:
    """x̂₀ = ŷ + the denoiser's correction (its output layer starts at zero)."""
    x = torch.cat([state, inputs.spatial()], 1)
    return inputs.coarse + unet(x, t, encoder_hidden_states=inputs.tokens).sample


class FlatLayGenerator:
    """Conditions (soft ê, hard Ŝ/L̂, pattern W/V/crop) → RGBA flat-lays at resolution R."""

    def __init__(self, vae: AutoencoderKL, adapter: DecoderAdapter | None,
                 unet: UNet2DConditionModel, conditioner: Conditioner,
                 schedule: BridgeSchedule, meta: dict) -> None:
        self.vae, self.adapter, self.unet, self.conditioner = vae, adapter, unet, conditioner
        self.schedule = schedule
        self.meta = meta
        self.resolution = int(meta["resolution"])
        self.latent_size = int(unet.config.sample_size)
        self.default_steps = check_steps(int(meta["sampling"]["steps"]))
        # The sampling noise as a share of the trained κ (chosen on validation; 1 if unsaid).
        self.noise = float(meta["sampling"].get("noise", 1.0))
        # Whether each asset is also generated in a mirror and the two flat-lays averaged
        # (chosen on validation; off if unsaid).
        self.mirror = bool(meta["sampling"].get("mirror", False))

    @classmethod
    def from_pretrained(cls, vae_dir: Path = VAE_WEIGHTS, generator_dir: Path = GENERATOR_WEIGHTS,
                        device: str | torch.device = "cpu") -> FlatLayGenerator:
        vae_dir, generator_dir = Path(vae_dir), Path(generator_dir)
        for folder, what in ((vae_dir / "vae", "flatlay train vae"),
                             (generator_dir / "unet", "flatlay train generator")):
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder} holds no weights; `{what}` makes them")
        meta = json.loads((generator_dir / "generator.json").read_text())
        if "bridge" not in meta:
            raise FileNotFoundError(f"{generator_dir} holds no bridge generator (a noise-start "
                                    "model); `flatlay train generator` makes one")
        dtype = torch.float16 if str(device).startswith("cuda") else torch.float32
        # Local folders only; accelerate's low-memory loading is not needed at this size.
        kw = {"torch_dtype": dtype, "low_cpu_mem_usage": False}
        vae = AutoencoderKL.from_pretrained(vae_dir / "vae", **kw).to(device).eval()
        adapter = None
        if (vae_dir / "decoder_adapter" / "config.json").is_file():
            adapter = DecoderAdapter.from_pretrained(vae_dir / "decoder_adapter", **kw).to(
                device).eval()
        unet = UNet2DConditionModel.from_pretrained(generator_dir / "unet", **kw).to(
            device).eval()
        conditioner = Conditioner.from_pretrained(generator_dir / "conditioner", **kw).to(
            device).eval()
        return cls(vae, adapter, unet, conditioner, BridgeSchedule(**meta["bridge"]), meta)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def conditions(self, conds: Sequence[CoarseConditions], drop: frozenset[str] = frozenset(),
                   noretrieval: bool = False) -> DenoiserInputs:
        """The denoiser's inputs for a batch; `drop` switches levels off (zeros; the pattern
        level becomes the blank canvas, as in training); `noretrieval` takes the pattern from
        the cutout placement and drops soft and hard guidance."""
        dev, dtype = self.device, self.unet.dtype
        if noretrieval:
            drop = drop | {"soft", "hard"}
            rgb = np.stack([c.cutout[..., :3] for c in conds])
            alpha = np.stack([c.cutout[..., 3] / 255.0 for c in conds])
        else:
            rgb = np.stack([c.warp for c in conds])
            alpha = np.stack([c.validity.astype(np.float32) for c in conds])
        if "pattern" in drop:
            pattern = blank_pattern(self.vae, len(conds), self.resolution, self.latent_size)
        else:
            pattern = pattern_inputs(self.vae, rgb, alpha, self.latent_size)
        pattern = pattern.to(dtype)
        structure = torch.from_numpy(np.stack([c.structure for c in conds])).to(dev, dtype)
        embedding = torch.from_numpy(np.stack([c.embedding for c in conds])).to(dev, dtype)
        crop = crop_tensor(np.stack([c.crop for c in conds])).to(dev, dtype)
        if "hard" in drop:
            structure = torch.zeros_like(structure)
        if "soft" in drop:
            embedding = torch.zeros_like(embedding)
        if "pattern" in drop:
            crop = torch.zeros_like(crop)
        with torch.no_grad():
            tokens = self.conditioner(embedding, crop)
        return DenoiserInputs(structure, pattern[:, :-1], pattern[:, -1:], tokens)

    @torch.no_grad()
    def sample(self, inputs: DenoiserInputs, seeds: Sequence[int], steps: int | None = None,
               noise: float | None = None) -> torch.Tensor:
        """Latents (N, C, r, r) by the bridge in `steps` steps from ŷ plus per-asset seeded
        noise scaled by `noise` (defaults: the generator's, from its generator.json)."""
        return self.schedule.sample(
            lambda x, t: predict_x0(self.unet, x, t, inputs), inputs.coarse,
            self.schedule.kappa(inputs.validity), seeds, steps or self.default_steps,
            self.noise if noise is None else noise)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, conds: Sequence[CoarseConditions] | None = None,
               aligned: bool = True) -> np.ndarray:
        """Latents → (N, R, R, 4) float32 RGBA in [0, 1] (RGB on white, then alpha). With
        `aligned` and conditions, the decoder adapter reads W and V."""
        photo = None
        if aligned and self.adapter is not None and conds is not None:
            photo = images_to_tensor(np.stack([c.warp for c in conds]),
                                     np.stack([c.validity for c in conds])).to(
                self.device, self.vae.dtype)
        out = decode_aligned(self.vae, latents.to(self.vae.dtype),
                             self.adapter if photo is not None else None, photo)
        return ((out.float().clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()

    def __call__(self, conds: Sequence[CoarseConditions], seeds: Sequence[int],
                 steps: int | None = None, drop: frozenset[str] = frozenset(),
                 noretrieval: bool = False, aligned: bool = True,
                 noise: float | None = None, mirror: bool | None = None) -> np.ndarray:
        """Conditions of N assets → (N, R, R, 4) float32 RGBA flat-lays in [0, 1]. With
        `mirror` (default: the generator's), each asset's mirror image is generated in the
        same batch and its flat-lay, flipped back, averaged with the asset's own."""
        mirror = self.mirror if mirror is None else mirror
        n = len(conds)
        batch, seeds = list(conds), list(seeds)
        if mirror:
            batch, seeds = [*batch, *(c.mirrored() for c in conds)], seeds * 2
        latents = self.sample(self.conditions(batch, drop, noretrieval), seeds, steps, noise)
        images = self.decode(latents, batch, aligned and not noretrieval)
        if mirror:
            # Decoded images, not latents, are averaged: the average of two latents decodes
            # softer (validation SSIM 0.489 against 0.506 for the images).
            images = (images[:n] + images[n:, :, ::-1]) / 2
        return images
