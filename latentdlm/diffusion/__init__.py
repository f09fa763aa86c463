"""Diffusion in the autoencoder's latent space: the DiT denoiser, schedulers, objective and sampling."""

from latentdlm.diffusion.denoiser import LatentDiT

__all__ = ["LatentDiT"]
