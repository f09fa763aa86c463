"""Latent regularisation: a VAE head (mean, log-variance, KL) or LD4LG's L2 normalisation to norm sqrt(d)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from latentdlm.errors import LatentDLMError

REGULARIZATIONS = ("vae", "l2", "none")
INITIAL_LOGVAR = -5.0


@dataclass
class Latents:
    """A design's latents for a batch of units: deterministic (`logvar` None), or a VAE's Gaussian posterior."""

    mean: torch.Tensor  # (B, k, d): the latent used at inference
    logvar: Optional[torch.Tensor] = None  # VAE only

    def sample(self) -> torch.Tensor:
        if self.logvar is None:
            return self.mean
        return self.mean + torch.randn_like(self.mean) * torch.exp(0.5 * self.logvar)

    def kl_per_dim(self) -> torch.Tensor:
        """KL(q(z|x) || N(0, I)) averaged over the batch, one value per latent dimension: (k, d)."""
        if self.logvar is None:
            return torch.zeros(self.mean.shape[1:], device=self.mean.device)
        kl = 0.5 * (self.mean.pow(2) + self.logvar.exp() - 1.0 - self.logvar)
        return kl.mean(dim=0)


class Bottleneck(nn.Module):
    def __init__(self, input_dim: int, latent_dim: int, regularization: str, standardize_units: Optional[int] = None):
        super().__init__()
        if regularization not in REGULARIZATIONS:
            raise LatentDLMError(f"unknown regularization '{regularization}': choose one of {', '.join(REGULARIZATIONS)}")
        self.regularization = regularization
        self.latent_dim = latent_dim
        out = 2 * latent_dim if regularization == "vae" else latent_dim
        self.projection = nn.Linear(input_dim, out)
        # BN-VAE (Zhu et al., 2020): every coordinate of the k x d latents batch-normalised (no affine), so no
        # coordinate can settle on one value for every unit: a latent that is the same for all texts (a
        # learned soft prompt, the easy path of posterior collapse) is impossible by construction
        self.standardize = nn.BatchNorm1d(standardize_units * latent_dim, affine=False) if standardize_units else None
        if regularization == "vae":
            # start near-deterministic (sigma ~ 0.08): unit posterior noise at init drowns the latent and
            # the decoder learns to ignore it before it can learn to read it (posterior collapse)
            with torch.no_grad():
                self.projection.bias[latent_dim:].fill_(INITIAL_LOGVAR)

    def forward(self, features: torch.Tensor) -> Latents:
        out = self.projection(features)
        if self.regularization == "vae":
            mean, logvar = out.chunk(2, dim=-1)
            return Latents(self._standardized(mean), logvar.clamp(-12.0, 6.0))
        out = self._standardized(out)
        if self.regularization == "l2":
            out = nn.functional.normalize(out, dim=-1) * math.sqrt(self.latent_dim)
        return Latents(out, None)

    def _standardized(self, latents: torch.Tensor) -> torch.Tensor:
        if self.standardize is None:
            return latents
        return self.standardize(latents.flatten(1).float()).view_as(latents).to(latents.dtype)
