"""The diffusion of stage 6 as a bridge from the coarse image, not a generation from noise.

Residual shifting as in ResShift (Yue et al., NeurIPS 2023): the process runs between the
flat-lay's latent x₀ and the coarse latent ŷ (the warp W through the VAE encoder),

    x_τ = x₀ + η(τ)(ŷ − x₀) + κ √η(τ) ε,      η(τ) = η_min (η_max / η_min)^(τ^p),  τ ∈ [0, 1],

so x_1 is ŷ plus a little noise and x_0 is the flat-lay. κ is a map, not a number: small
where V says the photo knows the garment (those parts are corrected), large where it does not
(occluded, out of frame: those parts are generated). The denoiser predicts x̂₀ = ŷ + f(x_τ,
conditions, τ) through a zero-initialised output layer, so an untrained generator returns ŷ,
the coarse image, and training only moves it towards a clean flat-lay.

Sampling walks N steps down τ = 1 … 0 (evenly spaced) with the posterior
q(x_s | x_t, x̂₀) = N((η_s/η_t) x_t + (α/η_t) x̂₀, κ² η_s α / η_t), α = η_t − η_s, and returns
the last x̂₀.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch

from models.pipeline import MAX_STEPS

DEFAULT_STEPS = 4  # what a config without `sampling.steps` samples with

X0Fn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_τ, τ·1000) → x̂₀


def check_steps(steps: int) -> int:
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be within 1–{MAX_STEPS}, got {steps}")
    return steps


@dataclass(frozen=True)
class BridgeSchedule:
    """η(τ) and κ(V) of the bridge (the `bridge` block of a generator config)."""

    eta_min: float = 0.04
    eta_max: float = 0.99
    power: float = 0.5
    kappa_known: float = 0.25
    kappa_unknown: float = 1.0

    def __post_init__(self) -> None:
        if not 0 < self.eta_min < self.eta_max <= 1:
            raise ValueError("the bridge needs 0 < eta_min < eta_max <= 1")

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def eta(self, tau: torch.Tensor) -> torch.Tensor:
        """τ (any shape, in [0, 1]) → η(τ), geometric from η_min to η_max."""
        return self.eta_min * (self.eta_max / self.eta_min) ** tau.clamp(0, 1).pow(self.power)

    def kappa(self, validity: torch.Tensor) -> torch.Tensor:
        """V's share of known pixels per latent cell (N, 1, r, r) → the noise scale κ there."""
        return self.kappa_unknown + (self.kappa_known - self.kappa_unknown) * validity

    def taus(self, steps: int) -> list[float]:
        """The N sampling times, from 1 down to 0 (one step: τ = 1 alone)."""
        check_steps(steps)
        return [1.0] if steps == 1 else [1 - i / (steps - 1) for i in range(steps)]

    def noised(self, x0: torch.Tensor, coarse: torch.Tensor, tau: torch.Tensor,
               noise: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
        """The forward process: x_τ for a batch. x0, coarse, noise (N, C, r, r); tau (N,);
        kappa (N, 1, r, r)."""
        eta = self.eta(tau).view(-1, 1, 1, 1)
        return x0 + eta * (coarse - x0) + kappa * eta.sqrt() * noise

    def sample(self, predict_x0: X0Fn, coarse: torch.Tensor, kappa: torch.Tensor,
               seeds: Sequence[int], steps: int = DEFAULT_STEPS,
               noise: float = 1.0) -> torch.Tensor:
        """x̂₀ after `steps` steps from x_1 = ŷ + κ√η_max ε. Each asset's noise comes from its
        own seed, so a batch gives what its members give alone. `noise` scales the sampling
        noise (1: the process as trained; 0: deterministic, each step from the mean, as
        DDIM's η = 0)."""
        taus = self.taus(steps)
        shape = coarse.shape[1:]
        eps = torch.stack([torch.randn((len(taus), *shape),
                                         generator=torch.Generator().manual_seed(int(s)))
                             for s in seeds]).to(coarse.device, coarse.dtype)
        kappa = kappa * noise
        x = coarse + kappa * math.sqrt(self.eta_max) * eps[:, 0]
        x0 = coarse
        for i, tau in enumerate(taus):
            t = torch.full((len(coarse),), tau * 1000.0, device=coarse.device)
            x0 = predict_x0(x, t)
            if i == len(taus) - 1:
                break
            eta_t = float(self.eta(torch.tensor(tau)))
            eta_s = float(self.eta(torch.tensor(taus[i + 1])))
            alpha = eta_t - eta_s
            x = (eta_s / eta_t) * x + (alpha / eta_t) * x0 + \
                kappa * math.sqrt(eta_s * alpha / eta_t) * eps[:, i + 1]
        return x0
