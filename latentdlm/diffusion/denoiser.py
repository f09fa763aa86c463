"""The latent DiT: a diffusers model that denoises (batch, segments x latents, dim) sequences.

Built from diffusers blocks (PixArt-style `BasicTransformerBlock` with `ada_norm_single`):
timestep (+ class) embedding -> one shared adaLN modulation, `patch_size` consecutive latents of a
segment per token (DiT's patchify: fewer, wider tokens), learned positions over segment and token
index, optional cross-attention to a condition sequence with a padding mask (optionally resampled by a
Perceiver; projected, and every layer's keys and values computed in one matrix product, once per training
step or sampling call), a learned null class
and a learned null condition for classifier-free guidance, and a zero-initialised output.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from latentdlm.autoencoder.perceiver import PerceiverResampler
from latentdlm.errors import LatentDLMError

MASKED = -1e4  # additive attention bias for padding (finite: a fully padded row stays finite)


def attention_bias(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) bool keep-mask -> (B, 1, L) additive bias, the form diffusers attention expects."""
    return ((~keep).to(dtype) * MASKED).unsqueeze(1)


def resolve_class_label(class_names: Optional[Sequence[str]], label: str | int) -> int:
    """One rule for a class label, whether typed on the command line ("1") or passed from Python (1):
    first a class NAME (compared as text), else an INDEX 0..n-1 into the model's class names.
    So with class names ["1", "2", "3", "4"] both "1" and 1 mean the first class."""
    names = [str(name) for name in class_names or []]
    if not names:
        raise LatentDLMError("this model was trained without class labels: it takes no class label")
    text = str(label).strip()
    if text in names:
        return names.index(text)
    if text.lstrip("-").isdigit():
        index = int(text)
        if not 0 <= index < len(names):
            raise LatentDLMError(f"class index {index} out of range: the model knows {len(names)} classes "
                                 f"(0..{len(names) - 1}: {', '.join(names)})")
        return index
    raise LatentDLMError(f"unknown class label '{label}': the model was trained with {', '.join(names)}")


class SourceKeysValuesAttention:
    """Cross-attention processor that reads layer `layer`'s keys and values of the source from the stack the
    DiT computed once (`LatentDiT.prepare_conditions`): (layers, 2, B, heads, L, head_dim) in place of the
    source states. The block's own to_k / to_v weights make that stack, so the weights are diffusers' as ever."""

    def __init__(self, layer: int):
        self.layer = layer

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                 attention_mask: Optional[torch.Tensor] = None, **_) -> torch.Tensor:
        keys, values = encoder_hidden_states[self.layer]
        batch, heads, _, head_dim = keys.shape
        query = attn.to_q(hidden_states).view(batch, -1, heads, head_dim).transpose(1, 2)
        bias = None if attention_mask is None else attention_mask.view(batch, 1, 1, -1)
        out = F.scaled_dot_product_attention(query, keys, values, attn_mask=bias)
        out = out.transpose(1, 2).reshape(batch, -1, heads * head_dim)
        return attn.to_out[1](attn.to_out[0](out))


class LatentDiT(ModelMixin, ConfigMixin):
    # folders saved before the latent space's statistics moved to the autoencoder: the pipeline reads them there
    _keys_to_ignore_on_load_unexpected = ["latent_mean", "latent_std"]

    @register_to_config
    def __init__(
        self,
        latent_dim: int = 64,
        num_latents: int = 16,
        max_segments: int = 1,
        hidden_size: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
        patch_size: int = 1,
        dropout: float = 0.0,
        self_conditioning: bool = True,
        class_names: Optional[list[str]] = None,
        condition_dim: Optional[int] = None,
        condition_dropout: Optional[float] = None,  # recorded at training: guidance needs a trained null condition
        source_latents: Optional[int] = None,  # a Perceiver resamples the source states to this many vectors
    ):
        super().__init__()
        if hidden_size % num_heads:
            raise LatentDLMError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
        if patch_size < 1 or num_latents % patch_size:
            raise LatentDLMError(f"patch_size {patch_size} does not divide the {num_latents} latents of a segment")
        token_dim = patch_size * latent_dim
        self.proj_in = nn.Linear(2 * token_dim if self_conditioning else token_dim, hidden_size)
        self.segment_position = nn.Parameter(torch.randn(max_segments, hidden_size) * 0.02)
        self.latent_position = nn.Parameter(torch.randn(num_latents // patch_size, hidden_size) * 0.02)

        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(256, hidden_size)
        # the last row is the null class (classifier-free guidance)
        self.class_embedding = nn.Embedding(len(class_names) + 1, hidden_size) if class_names else None
        self.length_head = self.source_resampler = None
        if condition_dim:
            # with source_latents, every layer's cross-attention reads that many vectors, not every source token
            self.source_resampler = PerceiverResampler(condition_dim, hidden_size, source_latents, 1, num_heads) if source_latents else None
            source_width = hidden_size if source_latents else condition_dim
            self.condition_proj = nn.Sequential(nn.Linear(source_width, hidden_size), nn.GELU(approximate="tanh"), nn.Linear(hidden_size, hidden_size))
            self.null_condition = nn.Parameter(torch.randn(1, condition_dim) * 0.02)
            # how many segments the target of a source text has: a classifier on the pooled source states
            self.length_head = nn.Sequential(nn.Linear(condition_dim, hidden_size), nn.GELU(approximate="tanh"),
                                             nn.Linear(hidden_size, max_segments))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

        self.blocks = nn.ModuleList(
            BasicTransformerBlock(
                hidden_size, num_heads, hidden_size // num_heads, dropout=dropout,
                cross_attention_dim=hidden_size if condition_dim else None,
                activation_fn="gelu-approximate", norm_type="ada_norm_single", norm_elementwise_affine=False,
                norm_eps=1e-6, attention_bias=True,
            )
            for _ in range(num_layers)
        )
        if condition_dim:
            for layer, block in enumerate(self.blocks):
                block.attn2.set_processor(SourceKeysValuesAttention(layer))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.out_shift_scale = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        self.proj_out = nn.Linear(hidden_size, token_dim)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)
        # how often each number of segments occurred in training (the default length at sampling), set once
        # before training, per class (row i) and over all texts (the last row, also the null class's)
        rows = len(class_names or []) + 1
        self.register_buffer("segment_count_freq", torch.full((rows, max_segments), 1.0 / max_segments))

    # ---- a start from another DiT ------------------------------------------------------------------
    @torch.no_grad()
    def start_from(self, other: "LatentDiT") -> list[str]:
        """This DiT's weights from `other` wherever both have them (an unconditional story DiT starting a title ->
        story one); returns the names only this one has. Those that add into the residual stream (each layer's
        cross-attention output, a class embedding) start at zero, so at step 0 this DiT predicts exactly what
        `other` does, whatever its condition. The length statistics stay this run's."""
        own, given = self.state_dict(), other.state_dict()
        foreign = sorted(set(given) - set(own))
        mismatched = [k for k in given if k in own and given[k].shape != own[k].shape and k != "segment_count_freq"]
        if foreign or mismatched:
            first = (foreign or mismatched)[0]
            raise LatentDLMError(f"cannot start from that DiT: {'it has weights this one lacks' if foreign else 'shapes differ'} "
                                 f"(first: {first}); its size settings must match this run's denoiser settings")
        self.load_state_dict({k: v for k, v in given.items() if k != "segment_count_freq"}, strict=False)
        new = sorted(set(own) - set(given))
        for name, tensor in self.state_dict().items():
            if name in new and (".attn2.to_out." in name or name.startswith("class_embedding.")):
                tensor.zero_()
        return new

    # ---- conditions --------------------------------------------------------------------------
    @property
    def null_class(self) -> int:
        return len(self.config.class_names or [])

    def class_index(self, label: str | int) -> int:
        """A class name or index -> its index (the rule of `resolve_class_label`, for the CLI and Python alike)."""
        return resolve_class_label(self.config.class_names, label)

    def null_conditions(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The learned null condition as a one-token sequence with its mask."""
        states = self.null_condition.unsqueeze(0).expand(batch_size, -1, -1)
        return states, torch.ones(batch_size, 1, dtype=torch.bool, device=states.device)

    # ---- lengths -------------------------------------------------------------------------------
    @torch.no_grad()
    def set_segment_statistics(self, segment_counts: torch.Tensor, labels: Optional[torch.Tensor] = None) -> None:
        """segment_counts: segments per training text; labels: each text's class index (class-conditional
        models: the length distribution per class)."""
        def freq(counts: torch.Tensor) -> torch.Tensor:
            hist = torch.bincount(counts.long() - 1, minlength=self.config.max_segments)[: self.config.max_segments].double()
            return hist / hist.sum() if hist.sum() > 0 else self.segment_count_freq[-1]

        self.segment_count_freq[-1] = freq(segment_counts)
        for row in range(self.segment_count_freq.shape[0] - 1):
            self.segment_count_freq[row] = freq(segment_counts if labels is None else segment_counts[labels == row])

    def segment_count_probs(self, class_labels: Optional[torch.Tensor] = None, condition_states: Optional[torch.Tensor] = None,
                            condition_mask: Optional[torch.Tensor] = None, batch_size: int = 1) -> torch.Tensor:
        """(B, max_segments): the distribution of the number of segments, given the class (its training
        frequencies) or the source text (the length head), else over all training texts."""
        if condition_states is not None and self.length_head is not None:
            return self.segment_count_logits(condition_states, condition_mask).softmax(dim=-1)
        if class_labels is not None:
            return self.segment_count_freq[class_labels]
        return self.segment_count_freq[-1].expand(batch_size, -1)

    def segment_count_logits(self, condition_states: torch.Tensor, condition_mask: torch.Tensor) -> torch.Tensor:
        keep = condition_mask.unsqueeze(-1).to(condition_states.dtype)
        pooled = (condition_states * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1)
        return self.length_head(pooled)

    # ---- forward -----------------------------------------------------------------------------
    def prepare_conditions(self, conditions: dict) -> dict:
        """Condition kwargs with the source read once: its states (null rows included) resampled to
        `source_latents` vectors when set, projected to the DiT's width and turned into every layer's keys and
        values (`condition_context`), so that both passes of a training step and every step of a sampling call
        (both guidance branches) share them."""
        if "condition_states" not in conditions:
            return conditions
        prepared = {k: v for k, v in conditions.items() if k not in ("condition_states", "condition_mask")}
        prepared["condition_context"], prepared["condition_mask"] = self._source_context(conditions["condition_states"],
                                                                                         conditions.get("condition_mask"))
        return prepared

    def _source_context(self, states: torch.Tensor, mask: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        states = states.to(self.proj_in.weight.dtype)
        mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device) if mask is None else mask.bool()
        if self.source_resampler is not None:
            states = self.source_resampler(states, mask)
            mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        # only the real source vectors are projected (a batch of sentence vectors is mostly padding); padding's
        # keys and values stay zero, and the attention bias hides them
        kept = self._keys_values(self.condition_proj(states[mask]))
        stacked = kept.new_zeros(*mask.shape, kept.shape[-1]).index_put((mask,), kept)
        batch, length = mask.shape
        stacked = stacked.view(batch, length, len(self.blocks), 2, self.config.num_heads, -1)
        return stacked.permute(2, 3, 0, 4, 1, 5), mask  # (layers, 2, B, heads, L, head_dim)

    def _keys_values(self, context: torch.Tensor) -> torch.Tensor:
        """(N, hidden) projected source vectors -> (N, layers x 2 x hidden): every layer's cross-attention keys
        and values in one matrix product."""
        projections = [p for block in self.blocks for p in (block.attn2.to_k, block.attn2.to_v)]
        return F.linear(context, torch.cat([p.weight for p in projections]), torch.cat([p.bias for p in projections]))

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor,
        latent_mask: Optional[torch.Tensor] = None,
        self_condition: Optional[torch.Tensor] = None,
        class_labels: Optional[torch.Tensor] = None,
        condition_states: Optional[torch.Tensor] = None,
        condition_mask: Optional[torch.Tensor] = None,
        condition_context: Optional[torch.Tensor] = None,
    ) -> torch.Tensor:
        """sample (B, S*k, d) noisy latents; latent_mask (B, S*k) True where a segment exists;
        self_condition (B, S*k, d) the previous x0 estimate (zeros for none); class_labels (B,) with
        `null_class` for unconditional; condition_states (B, L, C) with condition_mask (B, L), or the
        `condition_context` that `prepare_conditions` made of them (with its own mask).
        Returns the prediction, shaped like `sample` and in its dtype (the weights may be bf16 while the
        sampler keeps its latents in float32)."""
        cfg = self.config
        batch, length, _ = sample.shape
        given_dtype, dtype = sample.dtype, self.proj_in.weight.dtype
        sample = sample.to(dtype)
        self_condition = None if self_condition is None else self_condition.to(dtype)
        if length % cfg.num_latents or length // cfg.num_latents > cfg.max_segments:
            raise ValueError(f"sample length {length} is not a multiple of {cfg.num_latents} latents "
                             f"within {cfg.max_segments} segments")
        patch = cfg.patch_size
        if cfg.self_conditioning:
            sample = torch.cat([sample, torch.zeros_like(sample) if self_condition is None else self_condition], dim=-1)
        if patch > 1:  # (B, L, c) -> (B, L/p, p*c); with self-conditioning c holds both halves side by side
            sample = sample.reshape(batch, length // patch, -1)
            latent_mask = None if latent_mask is None else latent_mask[:, ::patch]
        positions = (self.segment_position[: length // cfg.num_latents, None] + self.latent_position[None]).reshape(length // patch, -1)
        hidden = self.proj_in(sample) + positions

        timestep = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(batch)
        embedding = self.time_embedding(self.time_proj(timestep).to(hidden.dtype))
        if self.class_embedding is not None:
            if class_labels is None:
                class_labels = torch.full((batch,), self.null_class, dtype=torch.long, device=sample.device)
            embedding = embedding + self.class_embedding(class_labels)
        modulation = self.modulation(embedding)

        context = context_bias = None
        if cfg.condition_dim:
            if condition_context is None:
                if condition_states is None:
                    condition_states, condition_mask = self.null_conditions(batch)
                condition_context, condition_mask = self._source_context(condition_states, condition_mask)
            context = condition_context.to(hidden.dtype)
            context_bias = attention_bias(condition_mask.bool(), hidden.dtype)
        self_bias = None if latent_mask is None else attention_bias(latent_mask.bool(), hidden.dtype)

        for block in self.blocks:
            hidden = block(hidden, attention_mask=self_bias, encoder_hidden_states=context,
                           encoder_attention_mask=context_bias, timestep=modulation)
        shift, scale = (self.out_shift_scale[None] + embedding[:, None]).chunk(2, dim=1)
        return self.proj_out(self.norm_out(hidden) * (1 + scale) + shift).reshape(batch, length, -1).to(given_dtype)
