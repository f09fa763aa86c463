"""Latent designs: how a unit's encoder states become its k x d latents, and what that space is.

Each design is one small module behind one interface:
- `forward(states, mask) -> Latents`: encoder states -> latents (a Gaussian posterior or deterministic);
- `project(latents)`: back onto the design's manifold (what the decoder reads from sampled latents);
- `perturb(latents, std)`: the training-time latent noise (projected back by `project`);
- `check(config, encoder_width)`: the config values the design needs, as one clear error;
- `fixed`: whether latents are a fixed function of a frozen encoder's states (then they are cached).
A new design is one new class here, registered in `LATENT_DESIGNS`; nothing else reads `latent_type`.
Whatever the design, `DecoderMemory` turns latents into what the decoder reads, and `LatentSpace` holds
the latent space's statistics as the denoiser sees it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from latentdlm.autoencoder.bottleneck import Bottleneck, Latents
from latentdlm.autoencoder.perceiver import PerceiverResampler
from latentdlm.errors import LatentDLMError


class LatentDesign(nn.Module):
    fixed = False  # latents depend on trained weights of the design itself

    @staticmethod
    def check(config, encoder_width: int) -> None:
        pass

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        return latents

    def perturb(self, latents: torch.Tensor, std: float) -> torch.Tensor:
        """Gaussian latent noise, projected back onto the manifold that decoding always reads from: the
        decoder trains on latents as imperfect as the DiT's samples, but in the same place."""
        return self.project(latents + std * torch.randn_like(latents)) if std > 0 else latents


class PerceiverLatents(LatentDesign):
    """LD4LG / SLD: token states -> Perceiver resampler -> k x d latents (VAE, L2 or plain); reconstructs wording."""

    def __init__(self, config, encoder_width: int):
        super().__init__()
        self.compressor = PerceiverResampler(encoder_width, config.compressor_dim, config.num_latents, config.compressor_layers,
                                             config.compressor_heads, config.dropout)
        self.bottleneck = Bottleneck(config.compressor_dim, config.latent_dim, config.regularization,
                                     config.num_latents if config.latent_batch_norm else None)
        if config.pooled_residual:
            # one projection of the sentence embedding per latent vector (together they hold all of it), and the
            # Perceiver's output gated in from zero (ReZero): at step 0 the latents are exactly a linear map of
            # the normalised sentence embedding that design (b)'s decoder learns to read at once, and the
            # Perceiver learns what that embedding misses (wording) as a residual
            self.pooled = nn.Linear(encoder_width, config.num_latents * config.compressor_dim)
            self.compressor_gate = nn.Parameter(torch.zeros(()))
        else:
            self.pooled = None

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> Latents:
        features = self.compressor(states, attention_mask)
        if self.pooled is not None:
            pooled = self.pooled(onto_sphere(mean_pool(states, attention_mask)))
            features = pooled.view_as(features) + self.compressor_gate * features
        return self.bottleneck(features)


class PooledLatents(LatentDesign):
    """The Large Concept Model's: the encoder's mean-pooled, L2-normalised sentence embedding, scaled to
    norm sqrt(d) (unit-scale coordinates, as LD4LG's normalised latents), is the unit's one latent."""

    fixed = True  # no weights of its own: with a frozen encoder the latent is a fixed function of the text

    @staticmethod
    def check(config, encoder_width: int) -> None:
        if config.num_latents != 1 or config.latent_dim != encoder_width or config.regularization != "none":
            raise LatentDLMError(
                f"latent_type: pooled makes the encoder's {encoder_width}-d sentence embedding the latent: set num_latents: 1, "
                f"latent_dim: {encoder_width}, regularization: none (got {config.num_latents}, {config.latent_dim}, "
                f"{config.regularization})"
            )

    def __init__(self, config, encoder_width: int):
        super().__init__()

    def forward(self, states: torch.Tensor, attention_mask: torch.Tensor) -> Latents:
        return Latents(onto_sphere(mean_pool(states, attention_mask)).unsqueeze(1))

    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """Sampled latents drift off the sphere the decoder was trained on."""
        return onto_sphere(latents)


LATENT_DESIGNS = {"perceiver": PerceiverLatents, "pooled": PooledLatents}


def make_latent_design(config, encoder_width: int) -> LatentDesign:
    if config.latent_type not in LATENT_DESIGNS:
        raise LatentDLMError(f"unknown latent_type '{config.latent_type}': choose one of {', '.join(LATENT_DESIGNS)}")
    design = LATENT_DESIGNS[config.latent_type]
    design.check(config, encoder_width)
    return design(config, encoder_width)


def mean_pool(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D) token states -> (B, D), the mean over the real tokens."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return (states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)


def onto_sphere(vectors: torch.Tensor) -> torch.Tensor:
    """Each vector rescaled to norm sqrt(d): where pooled latents live."""
    return torch.nn.functional.normalize(vectors, dim=-1) * math.sqrt(vectors.shape[-1])


class LatentSpace(nn.Module):
    """The latent space as the denoiser sees it: per-dimension mean and std of the latents it was trained
    on (set once before training; identity until then), applied by the pipeline around the denoiser, as
    diffusers keeps a VAE's shift and scale with its autoencoder."""

    def __init__(self, latent_dim: int):
        super().__init__()
        self.register_buffer("mean", torch.zeros(latent_dim))
        self.register_buffer("std", torch.ones(latent_dim))

    @torch.no_grad()
    def fit(self, units) -> None:
        """units (N, k, d): every training unit's latents, a tensor or a cache's `LatentShards` (read in one pass,
        shard by shard: memory does not grow with the corpus)."""
        count, total, squares = 0, 0.0, 0.0
        for chunk in units.chunks() if hasattr(units, "chunks") else [units]:
            flat = chunk.reshape(-1, chunk.shape[-1]).double()
            count, total, squares = count + flat.shape[0], total + flat.sum(0), squares + flat.pow(2).sum(0)
        mean = total / count
        variance = (squares - count * mean.pow(2)) / max(count - 1, 1)  # float64 sums of unit-scale latents
        self.mean.copy_(mean)
        self.std.copy_(variance.clamp_min(0).sqrt().clamp_min(1e-5))

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.mean) / self.std

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.std + self.mean


class DecoderMemory(nn.Module):
    """What the decoder reads: latents (B, k, d) -> decoder memory (B, m, decoder width) through a projection,
    positions and a transformer (LD4LG's "reconstruction" network; cross-attended, or a causal decoder's prefix).
    With m = k each latent vector projects to one memory vector; otherwise an MLP expands the k x d
    latents into m vectors (a pooled sentence embedding -> an m-vector decoder prefix)."""

    def __init__(self, latent_dim: int, decoder_dim: int, num_latents: int, num_layers: int, heads: int,
                 dropout: float = 0.0, memory_length: Optional[int] = None):
        super().__init__()
        length = memory_length or num_latents
        if length == num_latents:
            self.input_projection = nn.Linear(latent_dim, decoder_dim)
        else:
            self.input_projection = nn.Sequential(
                nn.Flatten(1), nn.Linear(num_latents * latent_dim, decoder_dim), nn.GELU(),
                nn.Linear(decoder_dim, length * decoder_dim), nn.Unflatten(1, (length, decoder_dim)),
            )
        self.positions = nn.Parameter(torch.zeros(length, decoder_dim))
        layer = nn.TransformerEncoderLayer(
            decoder_dim, heads, 4 * decoder_dim, dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False) if num_layers else None
        self.norm = nn.LayerNorm(decoder_dim)

    @property
    def length(self) -> int:
        """Memory vectors per unit (m)."""
        return self.positions.shape[0]

    @torch.no_grad()
    def match_scale(self, token_embeddings: torch.Tensor) -> None:
        """Start the memory at the RMS of the decoder's token embeddings (the final LayerNorm's gain): a
        prefix of gain 1 has ~8x the norm of a pretrained LM's tokens and swamps every pre-norm layer."""
        self.norm.weight.fill_(float(token_embeddings.float().pow(2).mean().sqrt()))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        memory = self.input_projection(latents) + self.positions
        if self.transformer is not None:
            memory = self.transformer(memory)
        return self.norm(memory)


@dataclass
class Plan:
    """decoder_plan: for each unit decoded, its text's latents (n, S, k, d), which exist (n, S), and its own position (n,)."""

    latents: torch.Tensor
    mask: torch.Tensor
    own: torch.Tensor

    @classmethod
    def gather(cls, latents: torch.Tensor, index: torch.Tensor, own: torch.Tensor) -> "Plan":
        """Units' plans from all units' latents (N, k, d) through `plan_index`'s index (n, S; -1: none) and own positions."""
        return cls(latents[index.clamp(min=0)], index >= 0, own)


class PlanMemory(nn.Module):
    """decoder_plan: what a segment decoded in parallel reads of its whole text, before its own prefix: one vector
    per segment of the text (its latent projected as `DecoderMemory` with m = 1), in order, the segment's own
    vector marked by a learned offset, so that it knows which sentence of the plan it writes."""

    def __init__(self, latent_dim: int, decoder_dim: int, num_latents: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.project = DecoderMemory(latent_dim, decoder_dim, num_latents, 0, heads, dropout, memory_length=1)
        self.own = nn.Parameter(torch.zeros(decoder_dim))

    def match_scale(self, token_embeddings: torch.Tensor) -> None:
        self.project.match_scale(token_embeddings)

    def forward(self, plan: torch.Tensor, plan_mask: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
        """plan (n, S, k, d): the latents of each row's text (S positions, `plan_mask` (n, S) True where a segment is),
        own (n,): the position of the row's own segment -> (n, S, decoder width)."""
        n, positions = plan_mask.shape
        vectors = self.project(plan.flatten(0, 1)).view(n, positions, -1)
        is_own = torch.arange(positions, device=own.device) == own.unsqueeze(1)
        return vectors + is_own.unsqueeze(-1).to(vectors.dtype) * self.own


def plan_index(counts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Units of texts with `counts` units each, in order -> for every unit, the indices of its text's units
    (N, max count; -1 where the text has fewer) and its own position among them (N,)."""
    index = torch.full((sum(counts), max(counts, default=0)), -1, dtype=torch.long)
    own = torch.empty(sum(counts), dtype=torch.long)
    start = 0
    for count in counts:
        index[start : start + count, :count] = torch.arange(start, start + count)
        own[start : start + count] = torch.arange(count)
        start += count
    return index, own
