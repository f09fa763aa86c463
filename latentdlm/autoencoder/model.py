"""The paragraph autoencoder: text -> (segments x k x d) latents -> text.

encoder (any HF encoder) -> Perceiver resampler -> bottleneck (VAE / L2) -> latents
latents -> memory network -> decoder (cross-attention or latent prefix) -> text
In segment mode (SLD) every sentence segment is one unit with its own k x d block; without it the
whole paragraph is one unit. Units of a batch are encoded and decoded in parallel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from latentdlm import __version__
from latentdlm.autoencoder.bottleneck import Bottleneck, Posterior
from latentdlm.autoencoder.config import AutoencoderConfig
from latentdlm.autoencoder.perceiver import LatentToMemory, PerceiverResampler
from latentdlm.config import config_from_dict
from latentdlm.data.segmentation import SentenceSegmenter
from latentdlm.errors import LatentDLMError
from latentdlm.hf_parts import TextDecoder, TextEncoder, left_pad
from latentdlm.hub import HubMixin
from latentdlm.io import CONFIG_NAME, WEIGHTS_NAME, read_json
from latentdlm.model_card import autoencoder_card

MODEL_TYPE = "latentdlm-paragraph-autoencoder"
LATENT_TYPES = ("perceiver", "pooled")


@dataclass
class TokenizedUnits:
    encoder_ids: list[list[int]]
    decoder_ids: list[list[int]]  # targets, each ending with eos
    num_truncated: int


@dataclass
class EncodedText:
    latents: torch.Tensor  # (B, S, k, d)
    segment_mask: torch.Tensor  # (B, S) bool: True where a segment exists


class ParagraphAutoencoder(nn.Module, HubMixin):
    def __init__(
        self,
        config: AutoencoderConfig,
        encoder_tokenizer: PreTrainedTokenizerBase,
        decoder_tokenizer: PreTrainedTokenizerBase,
        encoder_hf_config: Optional[dict] = None,
        decoder_hf_config: Optional[dict] = None,
    ):
        super().__init__()
        self.config = config
        self.encoder_tokenizer = encoder_tokenizer
        self.decoder_tokenizer = decoder_tokenizer
        self.encoder = TextEncoder(config.encoder, encoder_hf_config)
        if config.latent_type == "perceiver":
            self.compressor = PerceiverResampler(
                self.encoder.hidden_size, config.compressor_dim, config.num_latents,
                config.compressor_layers, config.compressor_heads, config.dropout,
            )
            self.bottleneck = Bottleneck(config.compressor_dim, config.latent_dim, config.regularization)
        else:
            self._check_pooled()
        self.decoder = TextDecoder(config.decoder, decoder_hf_config)
        self.to_memory = LatentToMemory(
            config.latent_dim, self.decoder.hidden_size, config.num_latents,
            config.memory_layers, config.memory_heads, config.dropout, config.memory_length,
        )
        self.segmenter = SentenceSegmenter(config.segmentation)
        self.training_record: Optional[dict] = None  # data, length and scores of its training (the model card's)
        self._check_vocab()
        self._check_context()

    def _check_pooled(self) -> None:
        config = self.config
        if config.latent_type not in LATENT_TYPES:
            raise LatentDLMError(f"unknown latent_type '{config.latent_type}': choose one of {', '.join(LATENT_TYPES)}")
        width = self.encoder.hidden_size
        if config.num_latents != 1 or config.latent_dim != width or config.regularization != "none":
            raise LatentDLMError(
                f"latent_type: pooled makes the encoder's {width}-d sentence embedding the latent: set num_latents: 1, "
                f"latent_dim: {width}, regularization: none (got {config.num_latents}, {config.latent_dim}, {config.regularization})"
            )

    def _check_context(self) -> None:
        context = self.config.decoder_context
        if context < 0:
            raise LatentDLMError(f"decoder_context must be 0 or more segments, got {context}")
        if context and (self.decoder.kind != "causal" or self.config.segmentation.mode == "none"):
            raise LatentDLMError("decoder_context (the previous segments' text) needs a causal decoder in segment mode")

    def _check_vocab(self) -> None:
        for name, tokenizer, part in (("encoder", self.encoder_tokenizer, self.encoder), ("decoder", self.decoder_tokenizer, self.decoder)):
            rows = part.model.get_input_embeddings().num_embeddings
            if len(tokenizer) > rows:
                raise LatentDLMError(f"the {name} tokenizer has {len(tokenizer)} tokens but the {name} embeds only {rows}")
        if self.decoder_tokenizer.eos_token_id is None:
            raise LatentDLMError("the decoder tokenizer has no eos token")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:  # read by DiffusionPipeline.to
        return next(self.parameters()).dtype

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.config.num_latents, self.config.latent_dim

    # ---- token level -------------------------------------------------------------------------
    def posterior(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Posterior:
        states = self.encoder(input_ids, attention_mask)
        if self.config.latent_type == "pooled":
            return Posterior(pooled_embedding(states, attention_mask).unsqueeze(1), None)
        return self.bottleneck(self.compressor(states, attention_mask))

    def decoder_logits(self, latents: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.to_memory(latents), input_ids, attention_mask)

    def tokenize(self, units: Sequence[str]) -> TokenizedUnits:
        """Encoder ids, and decoder targets as the decoder was pretrained to produce them: what its
        tokenizer gives with its own special tokens (BART `<s> x </s>`, T5 `x </s>`, Llama `<s> x`,
        GPT-2 `x`), minus a leading token that duplicates the decoder's start token (`collate` puts
        that in front), always ending with eos."""
        limit = self.config.max_length
        enc = self.encoder_tokenizer(list(units), truncation=True, max_length=limit)["input_ids"]
        full = self.decoder_tokenizer(list(units), verbose=False)["input_ids"]
        eos, start = self.decoder_tokenizer.eos_token_id, self.decoder.start_token_id
        bodies = []
        for ids in full:
            ids = list(ids)
            if ids and ids[0] == start:
                ids = ids[1:]
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            bodies.append(ids)
        truncated = sum(len(ids) > limit - 1 for ids in bodies)
        if truncated:
            warnings.warn(f"{truncated} of {len(bodies)} texts are longer than max_length={limit} tokens and were truncated")
        return TokenizedUnits(enc, [ids[: limit - 1] + [eos] for ids in bodies], truncated)

    def collate(self, encoder_ids: Optional[Sequence[list[int]]], decoder_ids: Sequence[list[int]],
                context_ids: Optional[Sequence[list[int]]] = None) -> dict[str, torch.Tensor]:
        """Pad a batch to its own longest unit (dynamic padding). Decoder inputs are the targets
        shifted right behind the decoder's start token: BART `</s> <s> x`, T5 `<pad> x`, causal `<bos> x`.
        Without `encoder_ids` (latents given from a cache) the batch holds the decoder side only. With
        `context_ids` (decoder_context) each row's context tokens come first, left-padded, unlabelled."""
        dec_pad = _pad_id(self.decoder_tokenizer)
        start = self.decoder.start_token_id
        batch = {}
        if encoder_ids is not None:
            batch["input_ids"], batch["attention_mask"] = _pad(encoder_ids, _pad_id(self.encoder_tokenizer))
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = _pad([[start] + ids[:-1] for ids in decoder_ids], dec_pad)
        batch["labels"], _ = _pad(decoder_ids, -100)
        if context_ids is not None:
            context, context_mask = left_pad(context_ids, dec_pad)
            batch["decoder_input_ids"] = torch.cat([context, batch["decoder_input_ids"]], dim=1)
            batch["decoder_attention_mask"] = torch.cat([context_mask, batch["decoder_attention_mask"]], dim=1)
            batch["labels"] = torch.cat([torch.full_like(context, -100), batch["labels"]], dim=1)
        return batch

    def context_ids(self, per_text: Sequence[Sequence[str]]) -> list[list[int]]:
        """For every unit of every text (in order), the decoder tokens of the text's previous
        `decoder_context` units: what the decoder reads before writing it."""
        context = self.config.decoder_context
        return [self._context_tokens(units[max(0, j - context) : j]) for units in per_text for j in range(len(units))]

    def _context_tokens(self, previous: Sequence[str]) -> list[int]:
        text = " ".join(p for p in previous if p)
        if not text:
            return []
        ids = self.decoder_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return ids[-self.config.max_length * self.config.decoder_context :]

    # ---- text level --------------------------------------------------------------------------
    def split_units(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text -> its units: sentence segments in segment mode, else the text itself."""
        units = self.segmenter.split_batch(list(texts))
        empty = [i for i, u in enumerate(units) if not u]
        if empty:
            raise LatentDLMError(f"{len(empty)} input text(s) are empty or whitespace only (first at index {empty[0]})")
        return units

    @torch.no_grad()
    def unit_latents(self, units: Sequence[str], batch_size: int = 64, sample: bool = False, progress: bool = False) -> torch.Tensor:
        """Units (segments or paragraphs) -> latents (N, k, d), encoded in length-sorted batches."""
        tokens = self.tokenize(units)
        latents = torch.empty(len(units), *self.latent_shape, device=self.device)
        batches = _length_sorted_batches([len(x) for x in tokens.encoder_ids], batch_size)
        for idx in tqdm(batches, desc="encoding", unit="batch", disable=not progress):
            ids, mask = _pad([tokens.encoder_ids[i] for i in idx], _pad_id(self.encoder_tokenizer))
            post = self.posterior(ids.to(self.device), mask.to(self.device))
            latents[idx] = (post.sample() if sample else post.mean).float()  # latents stay float32 whatever the weights
        return latents

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, sample: bool = False) -> EncodedText:
        """Texts -> latents (B, S, k, d) with a (B, S) segment mask. `sample` draws from a VAE posterior."""
        per_text = self.split_units(texts)
        latents = self.unit_latents([u for units in per_text for u in units], batch_size, sample)
        max_segments = max(len(u) for u in per_text)
        out = torch.zeros(len(texts), max_segments, *self.latent_shape, device=self.device)
        segment_mask = torch.zeros(len(texts), max_segments, dtype=torch.bool, device=self.device)
        start = 0
        for row, units in enumerate(per_text):
            out[row, : len(units)] = latents[start : start + len(units)]
            segment_mask[row, : len(units)] = True
            start += len(units)
        return EncodedText(out, segment_mask)

    @torch.no_grad()
    def decode(self, encoded: EncodedText, batch_size: int = 64, max_new_tokens: Optional[int] = None, joined: bool = True,
               fixed: Optional[Sequence[Sequence[Optional[str]]]] = None, **generate_kwargs) -> list[str] | list[list[str]]:
        """Latents -> texts: every segment of every text decodes in one parallel pass (with decoder_context,
        segment position by position, each reading its text's previous segments), then the segments
        rejoin in order (`joined` False: each text's list of segments). `fixed[row][s]`, where not None,
        is that segment's text as given: not decoded, and read as context by the segments after it."""
        generate_kwargs.setdefault("do_sample", False)
        generate_kwargs.setdefault("num_beams", 1)
        generate_kwargs.setdefault("pad_token_id", _pad_id(self.decoder_tokenizer))
        generate_kwargs.setdefault("eos_token_id", self.decoder_tokenizer.eos_token_id)
        mask = encoded.segment_mask.cpu()
        given = [[None] * mask.shape[1] if fixed is None else list(fixed[row]) + [None] * (mask.shape[1] - len(fixed[row]))
                 for row in range(mask.shape[0])]
        texts: list[list[Optional[str]]] = [[given[row][s] if mask[row, s] else None for s in range(mask.shape[1])]
                                            for row in range(mask.shape[0])]
        todo = [(row, s) for row in range(mask.shape[0]) for s in range(mask.shape[1]) if mask[row, s] and given[row][s] is None]
        waves = [todo]  # without context: one pass; with it, one pass per segment position
        if self.config.decoder_context:
            waves = [[(row, s) for row, s in todo if s == position] for position in range(mask.shape[1])]
        for wave in waves:
            if not wave:
                continue
            latents = torch.stack([encoded.latents[row, s] for row, s in wave])
            contexts = None
            if self.config.decoder_context:
                context = self.config.decoder_context
                contexts = [self._context_tokens(texts[row][max(0, s - context) : s]) for row, s in wave]
            for (row, s), piece in zip(wave, self._generate(latents, contexts, batch_size, max_new_tokens, generate_kwargs)):
                texts[row][s] = piece
        rows = [[t for t, keep in zip(row, mask[i]) if keep] for i, row in enumerate(texts)]
        return [" ".join(p for p in segments if p) for segments in rows] if joined else rows

    def _generate(self, latents: torch.Tensor, contexts: Optional[list[list[int]]], batch_size: int, max_new_tokens: Optional[int],
                  generate_kwargs: dict) -> list[str]:
        if self.config.latent_type == "pooled":  # sampled latents drift off the sphere the decoder was trained on
            latents = onto_sphere(latents)
        pieces: list[str] = []
        for start in range(0, latents.shape[0], batch_size):
            memory = self.to_memory(latents[start : start + batch_size].to(self.device, self.dtype))
            batch_contexts = None if contexts is None else contexts[start : start + batch_size]
            ids = self.decoder.generate(memory, max_new_tokens or self.config.max_length, context_ids=batch_contexts, **generate_kwargs)
            pieces += [t.strip() for t in self.decoder_tokenizer.batch_decode(ids, skip_special_tokens=True)]
        return pieces

    @torch.no_grad()
    def decoder_nll(self, latents: torch.Tensor, per_text: Sequence[Sequence[str]], batch_size: int = 64) -> torch.Tensor:
        """Each unit's mean per-token negative log-likelihood under the decoder given its latents (N, k, d),
        units in order over `per_text` (with decoder_context, each reads its text's previous units): how
        readily the decoder writes that text from there (a fluency proxy for decoded latents)."""
        targets = self.tokenize([u for units in per_text for u in units]).decoder_ids
        contexts = self.context_ids(per_text) if self.config.decoder_context else None
        if self.config.latent_type == "pooled":  # as decode reads them
            latents = onto_sphere(latents)
        out = torch.empty(len(targets))
        for start in range(0, len(targets), batch_size):
            batch = self.collate(None, targets[start : start + batch_size], None if contexts is None else contexts[start : start + batch_size])
            logits = self.decoder_logits(latents[start : start + batch_size].to(self.device, self.dtype),
                                         batch["decoder_input_ids"].to(self.device), batch["decoder_attention_mask"].to(self.device))
            labels = batch["labels"].to(self.device)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none")
            out[start : start + len(labels)] = (nll.sum(dim=1) / (labels != -100).sum(dim=1).clamp_min(1)).cpu()
        return out

    def reconstruct(self, texts: Sequence[str], batch_size: int = 64) -> list[str]:
        return self.decode(self.encode(texts, batch_size), batch_size)

    # ---- saving ------------------------------------------------------------------------------
    # save_pretrained / from_pretrained / push_to_hub: latentdlm.hub.HubMixin (a folder or a hub repo id)
    folder_kind, folder_files = "autoencoder", (CONFIG_NAME, WEIGHTS_NAME, "encoder_tokenizer", "decoder_tokenizer")

    def _save_folder(self, folder: Path) -> None:
        """One folder: config.json (with the training record), model.safetensors and both tokenizers."""
        meta = {
            "model_type": MODEL_TYPE,
            "latentdlm_version": __version__,
            "autoencoder": dataclasses.asdict(self.config),
            "encoder_hf_config": self.encoder.hf_config,
            "decoder_hf_config": self.decoder.hf_config,
            "training": self.training_record,
        }
        external = [name for name in ("encoder", "decoder") if getattr(self, name).external]
        if external:  # frozen pretrained weights reload from name_or_path: save the trained ones only
            meta["external_parts"] = external
            save_file(self._saved_state(), str(folder / WEIGHTS_NAME))
        else:
            save_model(self, str(folder / WEIGHTS_NAME))
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        self.encoder_tokenizer.save_pretrained(folder / "encoder_tokenizer")
        self.decoder_tokenizer.save_pretrained(folder / "decoder_tokenizer")

    def _saved_state(self) -> dict[str, torch.Tensor]:
        """The state dict without the external parts' frozen base weights (their LoRA weights stay), one
        name per shared (tied) tensor as safetensors' `save_model` keeps them (`load_model` restores the ties)."""
        state, seen = {}, set()
        for name, tensor in self.state_dict().items():
            part, _, rest = name.partition(".model.")
            storage = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if (part in ("encoder", "decoder") and rest and not getattr(self, part).saved_weight(rest)) or storage in seen:
                continue
            seen.add(storage)
            state[name] = tensor.contiguous()
        return state

    def model_card(self):
        return autoencoder_card(self)

    @classmethod
    def _load_folder(cls, path: Path) -> "ParagraphAutoencoder":
        meta = read_autoencoder_meta(path)
        config = config_from_dict(AutoencoderConfig, meta["autoencoder"], f"{path / CONFIG_NAME}")
        external = meta.get("external_parts", [])
        model = cls(  # external parts load their pretrained weights, the rest is built from the saved configs
            config,
            AutoTokenizer.from_pretrained(path / "encoder_tokenizer"),
            AutoTokenizer.from_pretrained(path / "decoder_tokenizer"),
            None if "encoder" in external else meta["encoder_hf_config"],
            None if "decoder" in external else meta["decoder_hf_config"],
        )
        try:
            missing, unexpected = load_model(model, str(path / WEIGHTS_NAME), strict=False)
        except (SafetensorError, OSError) as exc:
            raise LatentDLMError(f"could not read the weights {path / WEIGHTS_NAME} (missing, truncated or corrupt): {exc}") from None
        missing = [name for name in missing if name in model._saved_state()]  # external base weights are not in the file
        if missing or unexpected:
            raise LatentDLMError(
                f"weights in {path} do not fit the saved architecture "
                f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})"
            )
        model.training_record = meta.get("training")
        return model.eval()


def read_autoencoder_meta(path: Path) -> dict:
    meta = read_json(path / CONFIG_NAME, META_TYPES, ["autoencoder"])
    if meta.get("model_type") != MODEL_TYPE:
        raise LatentDLMError(f"{path} holds a '{meta.get('model_type')}', not a latentdlm paragraph autoencoder")
    return meta


META_TYPES = {"autoencoder": dict, "encoder_hf_config": Optional[dict], "decoder_hf_config": Optional[dict],
              "external_parts": list[str], "training": Optional[dict]}


def pooled_embedding(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean over real tokens, L2-normalised (the sentence-transformers embedding), scaled to norm sqrt(d)
    so that each coordinate is of unit scale, as LD4LG's normalised latents."""
    mask = attention_mask.unsqueeze(-1).to(states.dtype)
    return onto_sphere((states * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0))


def onto_sphere(vectors: torch.Tensor) -> torch.Tensor:
    """Each vector rescaled to norm sqrt(d): where pooled latents live."""
    return torch.nn.functional.normalize(vectors, dim=-1) * math.sqrt(vectors.shape[-1])


def _pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _pad(sequences: Sequence[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def _length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
