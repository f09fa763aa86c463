"""Training a `LatentClassifier` on a pipeline's noised latents, for classifier guidance (above the pipeline layer)."""

from __future__ import annotations

import time
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from latentdlm.diffusion.classifier import LatentClassifier
from latentdlm.diffusion.schedulers import add_noise
from latentdlm.errors import LatentDLMError
from latentdlm.pipelines.latent_edits import flat


def pipeline_latents(pipe, texts: Sequence[str], batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Texts -> the denoiser's normalised latents (N, S*k, d) and their mask (N, S*k)."""
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

    start, losses = time.monotonic(), []
    model.train()
    with tqdm(desc="classifier", unit="step") as bar:
        while time.monotonic() - start < minutes * 60:
            rows = train[torch.randint(len(train), (batch_size,), generator=generator)]
            timesteps = torch.randint(0, steps_total, (len(rows),), generator=generator)
            loss = F.cross_entropy(model(noisy(rows, timesteps), timesteps, mask[rows]), targets[rows])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
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
    record = {"steps": len(losses), "train_minutes": (time.monotonic() - start) / 60, "final_loss": sum(losses[-50:]) / max(len(losses[-50:]), 1),
              "train_texts": len(train), "validation_texts": len(held), "classes": names,
              "validation_accuracy_by_timestep": accuracy}
    return model, record
