"""latentdlm: latent paragraph-level diffusion language models.

    from latentdlm import LatentDiffusionTextPipeline
    pipe = LatentDiffusionTextPipeline.from_pretrained("runs/demo/pipeline")  # or a hub repo id
    pipe(num_samples=2).texts

The public classes load on first use, so that `import latentdlm` (and the command line's `--help`)
stays quick without importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "ParagraphAutoencoder": "latentdlm.autoencoder.model",
    "AutoencoderConfig": "latentdlm.autoencoder.config",
    "LatentDiT": "latentdlm.diffusion.denoiser",
    "ConditionEncoder": "latentdlm.diffusion.condition",
    "LatentClassifier": "latentdlm.diffusion.classifier",
    "LatentDiffusionTextPipeline": "latentdlm.pipelines.latent_text",
    "LatentDLMError": "latentdlm.errors",
    "load_config": "latentdlm.config",
}
__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'latentdlm' has no attribute {name!r}")
    value = getattr(import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
