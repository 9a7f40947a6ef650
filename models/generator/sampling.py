"""`FlatLayGenerator`: the trained parts of stage 6 together, from conditions to a flat-lay at
the working resolution. Batched: N assets go through the denoiser in one forward pass.

Weights are two local folders: the latent space (`vae-tiny/`: `vae/` and `decoder_adapter/`,
from `flatlay train vae`) and the generator (`generator-tiny/`: `unet/`, `conditioner/`,
`scheduler/`, `generator.json`, from `flatlay train generator`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)

from models.generator.autoencoder import DecoderAdapter, decode_aligned, encode_mean
from models.generator.conditioning import (
    CoarseConditions,
    Conditioner,
    crop_tensor,
    images_to_tensor,
)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
VAE_WEIGHTS = WEIGHTS_DIR / "vae-tiny"
GENERATOR_WEIGHTS = WEIGHTS_DIR / "generator-tiny"
DEFAULT_STEPS = 8


def validity_map(validity: torch.Tensor, latent_size: int) -> torch.Tensor:
    """(N, 1, R, R) V in {0, 1} → (N, 1, r, r) share of known pixels per latent cell."""
    return F.adaptive_avg_pool2d(validity.float(), latent_size)


def pattern_inputs(vae: AutoencoderKL, rgb: np.ndarray, alpha: np.ndarray,
                   latent_size: int) -> torch.Tensor:
    """The pattern channels of the denoiser, (N, 5, r, r): W (on white where V is 0) through
    the VAE encoder, then V's share per latent cell. rgb (N, R, R, 3) uint8; alpha (N, R, R)
    in [0, 1] (V, or the cutout's alpha for `noretrieval`)."""
    images = images_to_tensor(rgb, alpha).to(vae.device, vae.dtype)
    with torch.no_grad():
        latent = encode_mean(vae, images)
    return torch.cat([latent, validity_map(images[:, 3:] > 0, latent_size)], 1)


class FlatLayGenerator:
    """Conditions (soft ê, hard Ŝ/L̂, pattern W/V/crop) → RGBA flat-lays at resolution R."""

    def __init__(self, vae: AutoencoderKL, adapter: DecoderAdapter | None,
                 unet: UNet2DConditionModel, conditioner: Conditioner,
                 scheduler: DDPMScheduler, meta: dict) -> None:
        self.vae, self.adapter, self.unet, self.conditioner = vae, adapter, unet, conditioner
        self.train_scheduler = scheduler
        self.meta = meta
        self.resolution = int(meta["resolution"])
        self.latent_size = int(unet.config.sample_size)

    @classmethod
    def from_pretrained(cls, vae_dir: Path = VAE_WEIGHTS, generator_dir: Path = GENERATOR_WEIGHTS,
                        device: str | torch.device = "cpu") -> FlatLayGenerator:
        vae_dir, generator_dir = Path(vae_dir), Path(generator_dir)
        for folder, what in ((vae_dir / "vae", "flatlay train vae"),
                             (generator_dir / "unet", "flatlay train generator")):
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"{folder} holds no weights; `{what}` makes them")
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
        scheduler = DDPMScheduler.from_pretrained(generator_dir / "scheduler")
        meta = json.loads((generator_dir / "generator.json").read_text())
        return cls(vae, adapter, unet, conditioner, scheduler, meta)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    def conditions(self, conds: Sequence[CoarseConditions], drop: frozenset[str] = frozenset(),
                   noretrieval: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(spatial (N, 8, r, r), tokens (N, T, d)) for a batch; `drop` switches levels off
        (zeros, as in training); `noretrieval` takes the pattern from the cutout placement
        and drops soft and hard guidance."""
        dev, dtype = self.device, self.unet.dtype
        if noretrieval:
            drop = drop | {"soft", "hard"}
            rgb = np.stack([c.cutout[..., :3] for c in conds])
            alpha = np.stack([c.cutout[..., 3] / 255.0 for c in conds])
        else:
            rgb = np.stack([c.warp for c in conds])
            alpha = np.stack([c.validity.astype(np.float32) for c in conds])
        pattern = pattern_inputs(self.vae, rgb, alpha, self.latent_size).to(dtype)
        structure = torch.from_numpy(np.stack([c.structure for c in conds])).to(dev, dtype)
        embedding = torch.from_numpy(np.stack([c.embedding for c in conds])).to(dev, dtype)
        crop = crop_tensor(np.stack([c.crop for c in conds])).to(dev, dtype)
        if "hard" in drop:
            structure = torch.zeros_like(structure)
        if "soft" in drop:
            embedding = torch.zeros_like(embedding)
        if "pattern" in drop:
            pattern, crop = torch.zeros_like(pattern), torch.zeros_like(crop)
        with torch.no_grad():
            tokens = self.conditioner(embedding, crop)
        return torch.cat([structure, pattern], 1), tokens

    @torch.no_grad()
    def sample(self, spatial: torch.Tensor, tokens: torch.Tensor, seeds: Sequence[int],
               steps: int = DEFAULT_STEPS, guidance: float = 1.0,
               uncond: tuple[torch.Tensor, torch.Tensor] | None = None,
               strength: float = 1.0) -> torch.Tensor:
        """Latents (N, 4, r, r) by DPM-Solver++ in `steps` steps from per-asset seeded noise.
        With guidance > 1 and `uncond` (the conditions without structure), classifier-free
        guidance on the structure. With strength < 1 the sampler starts from W's latent
        noised to that share of the schedule and runs only the rest of it (SDEdit): the
        photo's known colours are the starting point instead of pure noise."""
        if not 1 <= steps <= 100:
            raise ValueError(f"steps must be within 1–100, got {steps}")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be within (0, 1], got {strength}")
        scheduler = DPMSolverMultistepScheduler.from_config(
            self.train_scheduler.config, algorithm_type="dpmsolver++")
        scheduler.set_timesteps(steps, device=self.device)
        shape = (4, self.latent_size, self.latent_size)
        noise = [torch.randn(shape, generator=torch.Generator().manual_seed(int(s)))
                 for s in seeds]
        latents = torch.stack(noise).to(self.device, self.unet.dtype)
        timesteps = scheduler.timesteps
        if strength < 1.0:
            skip = steps - max(1, round(steps * strength))
            timesteps = timesteps[skip:]
            scheduler.set_begin_index(skip)
            init = spatial[:, 3:7]  # W through the VAE encoder (see `conditions`)
            latents = scheduler.add_noise(init, latents, timesteps[:1].repeat(len(seeds)))
        else:
            latents = latents * scheduler.init_noise_sigma
        for t in timesteps:
            x = torch.cat([latents, spatial], 1)
            out = self.unet(x, t, encoder_hidden_states=tokens).sample
            if guidance != 1.0 and uncond is not None:
                x0 = torch.cat([latents, uncond[0]], 1)
                base = self.unet(x0, t, encoder_hidden_states=uncond[1]).sample
                out = base + guidance * (out - base)
            latents = scheduler.step(out, t, latents).prev_sample
        return latents

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
                 steps: int = DEFAULT_STEPS, drop: frozenset[str] = frozenset(),
                 noretrieval: bool = False, aligned: bool = True,
                 guidance: float = 1.0, strength: float = 1.0) -> np.ndarray:
        """Conditions of N assets → (N, R, R, 4) float32 RGBA flat-lays in [0, 1]."""
        spatial, tokens = self.conditions(conds, drop, noretrieval)
        uncond = None
        if guidance != 1.0:
            uncond = self.conditions(conds, drop | {"soft", "hard"}, noretrieval)
        if "pattern" in drop:
            strength = 1.0  # no W to start from: the pattern level is off
        latents = self.sample(spatial, tokens, seeds, steps, guidance, uncond, strength)
        return self.decode(latents, conds, aligned and not noretrieval)
