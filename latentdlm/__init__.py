"""latentdlm: latent paragraph-level diffusion language models."""

__version__ = "0.1.0"
