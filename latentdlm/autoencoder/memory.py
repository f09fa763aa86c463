"""What the decoder reads: latents (B, k, d) -> decoder memory (B, m, decoder width), LD4LG's
"reconstruction" network (cross-attended by a seq2seq decoder, or a causal decoder's prefix)."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class DecoderMemory(nn.Module):
    """Projection, positions, transformer.
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

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        memory = self.input_projection(latents) + self.positions
        if self.transformer is not None:
            memory = self.transformer(memory)
        return self.norm(memory)
