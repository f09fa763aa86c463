"""A classifier on noised latents, for classifier guidance (Dhariwal & Nichol 2021; Diffusion-LM's control).

It reads the denoiser's normalised latents (B, S*k, d) at a training timestep and predicts a class. Trained
by `train_latent_classifier` (scripts/train_latent_classifier.py) on a pipeline's own latent space, it then
steers that pipeline's unconditional sampling: `pipe(..., classifier=clf, class_labels="Sports",
classifier_scale=S)`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn
from tqdm.auto import tqdm

from latentdlm.diffusion.denoiser import resolve_class_label
from latentdlm.diffusion.schedulers import add_noise
from latentdlm.errors import LatentDLMError
from latentdlm.io import check_saved_folder


class LatentClassifier(ModelMixin, ConfigMixin):
    """Latent tokens + segment/latent positions + the timestep's embedding -> a small pre-norm transformer
    encoder -> masked mean -> class logits."""

    config_name = "config.json"

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

    @classmethod
    def load(cls, path: str | Path) -> "LatentClassifier":
        path = Path(path)
        if not (path / cls.config_name).is_file():
            raise LatentDLMError(f"{path} is not a latent classifier folder (no {cls.config_name}; train one with "
                                 "scripts/train_latent_classifier.py)")
        check_saved_folder(path, "the latent classifier folder")
        return cls.from_pretrained(path, use_safetensors=True).eval()


def check_classifier(classifier: LatentClassifier, denoiser) -> None:
    """The classifier must read the denoiser's latent space."""
    c, d = classifier.config, denoiser.config
    if (c.latent_dim, c.num_latents) != (d.latent_dim, d.num_latents) or c.max_segments < d.max_segments:
        raise LatentDLMError(
            f"the classifier reads {c.max_segments} segment(s) x {c.num_latents} x {c.latent_dim} latents but the "
            f"pipeline's denoiser makes {d.max_segments} x {d.num_latents} x {d.latent_dim}: train the classifier on "
            "this pipeline (scripts/train_latent_classifier.py --pipeline ...)"
        )


def pipeline_latents(pipe, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> the denoiser's normalised latents (N, S*k, d) and their mask (N, S*k)."""
    from latentdlm.pipelines.latent_edits import flat  # the pipeline layer, above this module

    encoded = pipe.autoencoder.encode(list(texts), batch_size)
    return flat(pipe, encoded.latents, encoded.segment_mask)


def train_latent_classifier(
    pipe, texts: Sequence[str], labels: Sequence[str], minutes: float, batch_size: int = 64, learning_rate: float = 3e-4,
    validation_fraction: float = 0.1, seed: int = 0, hidden_size: int = 256, num_layers: int = 2,
    report_timesteps: Sequence[int] = (0, 250, 500, 750, 900),
) -> tuple[LatentClassifier, dict]:
    """A classifier on `pipe`'s noised latents of `texts`, trained `minutes` at uniformly drawn timesteps;
    returns it with its held-out accuracy at `report_timesteps`."""
    if len(texts) != len(labels) or not texts:
        raise LatentDLMError(f"{len(texts)} texts and {len(labels)} labels: need equally many, at least one")
    names = sorted(set(labels))
    if len(names) < 2:
        raise LatentDLMError(f"a classifier needs at least 2 classes, the data has {len(names)}")
    latents, mask = pipeline_latents(pipe, texts)
    targets = torch.tensor([names.index(label) for label in labels])
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(seed))
    held = order[: max(1, int(len(texts) * validation_fraction))]
    train = order[len(held):]
    den = pipe.denoiser.config
    torch.manual_seed(seed)
    model = LatentClassifier(den.latent_dim, den.num_latents, den.max_segments, names, hidden_size, num_layers)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01)
    steps_total = pipe.scheduler.config.num_train_timesteps
    generator = torch.Generator().manual_seed(seed)

    def noisy(rows: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        return add_noise(pipe.scheduler, latents[rows], torch.randn(latents[rows].shape, generator=generator), timesteps)

    start, step, losses = time.monotonic(), 0, []
    model.train()
    with tqdm(desc="classifier", unit="step") as bar:
        while time.monotonic() - start < minutes * 60:
            rows = train[torch.randint(len(train), (batch_size,), generator=generator)]
            timesteps = torch.randint(0, steps_total, (len(rows),), generator=generator)
            loss = F.cross_entropy(model(noisy(rows, timesteps), timesteps, mask[rows]), targets[rows])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            losses.append(float(loss.detach()))
            bar.update(1)
            bar.set_postfix(loss=f"{sum(losses[-50:]) / len(losses[-50:]):.3f}", refresh=False)
    model.eval()
    accuracy = {}
    with torch.no_grad():
        for t in report_timesteps:
            timesteps = torch.full((len(held),), min(t, steps_total - 1))
            predicted = model(noisy(held, timesteps), timesteps, mask[held]).argmax(dim=-1)
            accuracy[str(t)] = float((predicted == targets[held]).float().mean())
    record = {"steps": step, "train_minutes": (time.monotonic() - start) / 60, "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1),
              "train_texts": len(train), "validation_texts": len(held), "classes": names,
              "validation_accuracy_by_timestep": accuracy}
    return model, record


def classifier_labels(classifier: Optional[LatentClassifier], labels, count: int) -> Optional[torch.Tensor]:
    """One wanted class per sample (a name or index for all, or one each), as the classifier's indices."""
    if classifier is None:
        return None
    if labels is None:
        raise LatentDLMError("classifier guidance needs the class to steer towards (--class-label)")
    labels = [labels] * count if isinstance(labels, (str, int)) else list(labels)
    if len(labels) != count:
        raise LatentDLMError(f"{len(labels)} class labels for {count} samples")
    return torch.tensor([classifier.class_index(label) for label in labels])
