"""Diffusion in the autoencoder's latent space: the DiT denoiser, its condition encoder, schedulers, objective and sampling."""

from latentdlm.diffusion.condition import ConditionConfig, ConditionEncoder
from latentdlm.diffusion.denoiser import LatentDiT

__all__ = ["ConditionConfig", "ConditionEncoder", "LatentDiT"]
