"""Typed configuration of the paragraph autoencoder (architecture only; losses live in training)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from latentdlm.data.segmentation import SegmentationConfig
from latentdlm.hf_parts import PartConfig


@dataclass
class TokenizerConfig:
    """Where tokens come from: a pretrained tokenizer, or a byte-level BPE trained on the corpus."""

    name_or_path: Optional[str] = None  # None: the encoder's/decoder's own, else train one
    train_vocab_size: int = 8000
    share: bool = True  # one tokenizer for encoder and decoder (needed when training one)


@dataclass
class AutoencoderConfig:
    encoder: PartConfig = field(default_factory=PartConfig)
    decoder: PartConfig = field(default_factory=lambda: PartConfig(kind="seq2seq"))
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    # perceiver: token states -> Perceiver -> k x d latents per unit (LD4LG/SLD; reconstructs wording)
    # pooled: the encoder's mean-pooled, L2-normalised sentence embedding (x sqrt(d)) is the unit's one
    #   latent (k = 1, d = encoder width), as in the Large Concept Model; no compressor, only the decoder trains
    latent_type: str = "perceiver"
    num_latents: int = 16  # k
    latent_dim: int = 64  # d
    memory_length: Optional[int] = None  # decoder memory vectors per unit (default k); pooled latents expand to it
    compressor_dim: int = 256
    compressor_layers: int = 2
    compressor_heads: int = 4
    memory_layers: int = 2  # latent -> decoder-memory transformer (LD4LG's "reconstruction" net)
    memory_heads: int = 4
    regularization: str = "vae"  # vae | l2 | none
    # perceiver: the encoder's mean-pooled state, projected, added to every Perceiver output, so that the
    # latents carry the sentence from step 0 (the decoder has no reason to learn to ignore them)
    pooled_residual: bool = False
    # perceiver: each of the k x d latent coordinates batch-normalised across units before the regularisation
    # (BN-VAE): no coordinate can hold one value for every text, so the latents cannot turn into a learned soft
    # prompt that the decoder reads instead of the text (posterior collapse); running statistics at inference
    latent_batch_norm: bool = False
    max_length: int = 64  # tokens per encoded unit (a segment in segment mode, else a paragraph)
    # causal decoders in segment mode: the decoder also reads the text of the previous N segments (the
    # real ones in training, its own output when decoding), so names and pronouns carry across sentences
    decoder_context: int = 0
    # causal decoders in segment mode: each text decodes as ONE stream, every segment's latent prefix injected
    # where the segment starts ([prefix 1, bos, text 1, prefix 2, bos, text 2, ...]): each segment reads the
    # whole text so far, its words and its plan; trained one pass per text, decoded under one KV cache
    decoder_stream: bool = False
    # causal decoders in segment mode: every segment decodes in parallel (one batched pass for the whole text), each
    # reading the text's whole plan first ([one vector per segment latent, its own marked; its own prefix; bos;
    # text]): what the others say comes from their latents, not from text written before it (no serial decoding)
    decoder_plan: bool = False
    # causal decoders, text -> text: the decoder reads the source text (its first N tokens; a document to
    # summarise, a title) before each unit's start token, so rare words and names can be copied from it while
    # the latent says what to write; trained on (source, target) pairs (data.source_column), given at decoding
    # by the text-conditioned pipeline (the same source the DiT reads). 0: off
    source_context: int = 0
    # segment mode (SLD): mode "sentences" or "dialogue_turns" gives each segment its own latent block
    segmentation: SegmentationConfig = field(default_factory=lambda: SegmentationConfig(mode="none"))
    dropout: float = 0.0
