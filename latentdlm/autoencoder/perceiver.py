"""Perceiver resampler: a variable-length token sequence -> a fixed set of latent vectors."""

from __future__ import annotations

import torch
from torch import nn


class ResamplerLayer(nn.Module):
    """Latents attend to [tokens; latents] (as in Flamingo's resampler), then a feed-forward block."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.norm_latents = nn.LayerNorm(dim)
        self.norm_context = nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.norm_ff = nn.LayerNorm(dim)
        self.feed_forward = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(4 * dim, dim))

    def forward(self, latents: torch.Tensor, context: torch.Tensor, context_pad: torch.Tensor) -> torch.Tensor:
        query = self.norm_latents(latents)
        keys = torch.cat([self.norm_context(context), query], dim=1)
        latent_pad = torch.zeros(latents.shape[:2], dtype=torch.bool, device=latents.device)
        pad = torch.cat([context_pad, latent_pad], dim=1)
        latents = latents + self.attention(query, keys, keys, key_padding_mask=pad, need_weights=False)[0]
        return latents + self.feed_forward(self.norm_ff(latents))


class PerceiverResampler(nn.Module):
    def __init__(self, input_dim: int, dim: int, num_latents: int, num_layers: int, heads: int, dropout: float = 0.0):
        super().__init__()
        self.input_projection = nn.Linear(input_dim, dim)
        self.latent_queries = nn.Parameter(torch.randn(num_latents, dim) * dim**-0.5)
        self.layers = nn.ModuleList(ResamplerLayer(dim, heads, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, L, input_dim) states with a (B, L) 1/0 mask -> (B, num_latents, dim)."""
        context = self.input_projection(hidden_states)
        latents = self.latent_queries.unsqueeze(0).expand(context.shape[0], -1, -1)
        pad = attention_mask == 0
        for layer in self.layers:
            latents = layer(latents, context, pad)
        return self.norm(latents)
