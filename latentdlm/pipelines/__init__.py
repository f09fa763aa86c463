"""The one-folder text pipeline: autoencoder + latent DiT + scheduler."""

from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline, LatentTextOutput

__all__ = ["LatentDiffusionTextPipeline", "LatentTextOutput"]
