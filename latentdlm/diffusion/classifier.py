"""A classifier on noised latents, for classifier guidance (Dhariwal & Nichol 2021; Diffusion-LM's control).

It reads the denoiser's normalised latents (B, S*k, d) at a training timestep and predicts a class. Trained
by `latentdlm.training.classifier.train_latent_classifier` (scripts/train_latent_classifier.py) on a
pipeline's own latent space, it then steers that pipeline's unconditional sampling: `pipe(..., classifier=clf,
class_labels="Sports", classifier_scale=S)`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from latentdlm.diffusion.denoiser import resolve_class_label
from latentdlm.errors import LatentDLMError
from latentdlm.hub import HubMixin, load_config_model


class LatentClassifier(HubMixin, ModelMixin, ConfigMixin):
    """Latent tokens + segment/latent positions + the timestep's embedding -> a small pre-norm transformer
    encoder -> masked mean -> class logits. Saved as a diffusers model folder (config.json + safetensors
    weights) through `save_pretrained` / `from_pretrained` (latentdlm.hub.HubMixin, as every latentdlm folder)."""

    folder_kind = "latent classifier"

    @register_to_config
    def __init__(self, latent_dim: int, num_latents: int, max_segments: int, class_names: Sequence[str],
                 hidden_size: int = 256, num_layers: int = 2, num_heads: int = 4):
        super().__init__()
        self.proj_in = nn.Linear(latent_dim, hidden_size)
        self.position = nn.Parameter(torch.zeros(max_segments * num_latents, hidden_size))
        self.time_proj = Timesteps(hidden_size, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden_size, hidden_size)
        layer = nn.TransformerEncoderLayer(hidden_size, num_heads, 4 * hidden_size, dropout=0.1, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.head = nn.Linear(hidden_size, len(class_names))

    def forward(self, latents: torch.Tensor, timesteps: torch.Tensor, latent_mask: torch.Tensor) -> torch.Tensor:
        """latents (B, L, d) normalised and noised to `timesteps` (B,); latent_mask (B, L) True where a
        latent exists. Returns logits (B, classes)."""
        time = self.time_embedding(self.time_proj(timesteps.reshape(-1)).to(latents.dtype))
        hidden = self.proj_in(latents) + self.position[: latents.shape[1]] + time[:, None]
        hidden = self.encoder(hidden, src_key_padding_mask=~latent_mask.bool())
        keep = latent_mask[..., None].to(hidden.dtype)
        pooled = (self.norm(hidden) * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        return self.head(pooled)

    def class_index(self, label: str | int) -> int:
        return resolve_class_label(self.config.class_names, label)

    def _save_folder(self, folder: Path) -> None:
        ModelMixin.save_pretrained(self, folder)

    @classmethod
    def _load_folder(cls, folder: Path) -> "LatentClassifier":
        return load_config_model(cls, folder, cls.folder_kind)


def check_classifier(classifier: LatentClassifier, denoiser) -> None:
    """The classifier must read the denoiser's latent space."""
    c, d = classifier.config, denoiser.config
    if (c.latent_dim, c.num_latents) != (d.latent_dim, d.num_latents) or c.max_segments < d.max_segments:
        raise LatentDLMError(
            f"the classifier reads {c.max_segments} segment(s) x {c.num_latents} x {c.latent_dim} latents but the "
            f"pipeline's denoiser makes {d.max_segments} x {d.num_latents} x {d.latent_dim}: train the classifier on "
            "this pipeline's latents (train_latent_classifier)"
        )


def classifier_labels(classifier: Optional[LatentClassifier], labels, count: int) -> Optional[torch.Tensor]:
    """One wanted class per sample (a name or index for all, or one each), as the classifier's indices."""
    if classifier is None:
        return None
    if labels is None:
        raise LatentDLMError("classifier guidance needs class_labels: the class to steer towards")
    labels = [labels] * count if isinstance(labels, (str, int)) else list(labels)
    if len(labels) != count:
        raise LatentDLMError(f"{len(labels)} class labels for {count} samples")
    return torch.tensor([classifier.class_index(label) for label in labels])
