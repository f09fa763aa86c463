"""The paragraph autoencoder: text -> (segments x k x d) latents -> text.

encoder (any HF encoder) -> latent design (Perceiver + VAE/L2 head, or a pooled sentence embedding) -> latents
latents -> decoder memory -> decoder (cross-attention or latent prefix) -> text, in the order of a decoding strategy
In segment mode (SLD) every sentence segment is one unit with its own k x d block; without it the
whole paragraph is one unit. Text <-> token ids is the processor's (autoencoder/processor.py).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_file, save_model
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from latentdlm import __version__
from latentdlm.autoencoder.bottleneck import Latents
from latentdlm.autoencoder.config import AutoencoderConfig
from latentdlm.autoencoder.decoding import strategy_for
from latentdlm.autoencoder.designs import DecoderMemory, LatentSpace, Plan, PlanMemory, make_latent_design, plan_index
from latentdlm.autoencoder.processor import TOKENIZER_FOLDERS, TextProcessor, length_sorted_batches, pad_id
from latentdlm.config import config_from_dict
from latentdlm.errors import LatentDLMError
from latentdlm.hf_parts import TextDecoder, TextEncoder
from latentdlm.hub import HubModule
from latentdlm.io import CONFIG_NAME, WEIGHTS_NAME, read_json
from latentdlm.model_card import autoencoder_card

MODEL_TYPE = "latentdlm-paragraph-autoencoder"
# weights of folders saved before the latent designs had a module of their own
_LEGACY_PREFIXES = {"compressor.": "latent_design.compressor.", "bottleneck.": "latent_design.bottleneck."}


@dataclass
class EncodedText:
    latents: torch.Tensor  # (B, S, k, d)
    segment_mask: torch.Tensor  # (B, S) bool: True where a segment exists


class ParagraphAutoencoder(HubModule):
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
        self.encoder = TextEncoder(config.encoder, encoder_hf_config)
        self.latent_design = make_latent_design(config, self.encoder.hidden_size)
        self.latent_space = LatentSpace(config.latent_dim)
        self.decoder = TextDecoder(config.decoder, decoder_hf_config)
        self.to_memory = DecoderMemory(
            config.latent_dim, self.decoder.hidden_size, config.num_latents,
            config.memory_layers, config.memory_heads, config.dropout, config.memory_length,
        )
        self.to_plan = PlanMemory(config.latent_dim, self.decoder.hidden_size, config.num_latents, config.memory_heads,
                                  config.dropout) if config.decoder_plan else None
        if self.decoder.kind == "causal":  # a prefix enters the residual stream at the scale of the decoder's own tokens
            for prefix in (self.to_memory, self.to_plan):
                if prefix is not None:
                    prefix.match_scale(self.decoder.model.get_input_embeddings().weight)
        self.processor = TextProcessor(encoder_tokenizer, decoder_tokenizer, config.segmentation, config.max_length,
                                       config.decoder_context, self.decoder.start_token_id, config.source_context)
        self.decoding = strategy_for(config)
        self.training_record: Optional[dict] = None  # data, length and scores of its training (the model card's)
        self._check_vocab()
        self._check_context()
        self.register_load_state_dict_pre_hook(_rename_legacy_weights)

    def _check_context(self) -> None:
        context, stream, plan = self.config.decoder_context, self.config.decoder_stream, self.config.decoder_plan
        if context < 0:
            raise LatentDLMError(f"decoder_context must be 0 or more segments, got {context}")
        if sum(map(bool, (context, stream, plan))) > 1:
            raise LatentDLMError("choose one of decoder_context (the previous segments' text), decoder_stream (one stream per "
                                 "text) and decoder_plan (every segment in parallel, reading the whole plan)")
        if (context or stream or plan) and (self.decoder.kind != "causal" or self.config.segmentation.mode == "none"):
            what = ("decoder_stream (one stream per text)" if stream else "decoder_plan (segments in parallel from the plan)"
                    if plan else "decoder_context (the previous segments' text)")
            raise LatentDLMError(f"{what} needs a causal decoder in segment mode")
        source = self.config.source_context
        if source < 0:
            raise LatentDLMError(f"source_context must be 0 (off) or more tokens, got {source}")
        if source and (self.decoder.kind != "causal" or stream or plan):
            raise LatentDLMError("source_context (the decoder reads the source text) needs a causal decoder without "
                                 "decoder_stream or decoder_plan")

    def _check_vocab(self) -> None:
        tokenizers = (self.processor.encoder_tokenizer, self.processor.decoder_tokenizer)
        for name, tokenizer, part in zip(("encoder", "decoder"), tokenizers, (self.encoder, self.decoder)):
            rows = part.model.get_input_embeddings().num_embeddings
            if len(tokenizer) > rows:
                raise LatentDLMError(f"the {name} tokenizer has {len(tokenizer)} tokens but the {name} embeds only {rows}")

    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.config.num_latents, self.config.latent_dim

    def merge_lora(self) -> "ParagraphAutoencoder":
        """For inference: the LoRA updates of both parts folded into their base weights (`hf_parts.merge_lora`),
        so each decoding step costs what the base model's does; it cannot train after."""
        self.encoder.merge_lora()
        self.decoder.merge_lora()
        return self

    @property
    def fixed_latents(self) -> bool:
        """Latents are a fixed function of the text (a frozen encoder under a design without weights): cacheable."""
        return self.latent_design.fixed and self.encoder.frozen

    # ---- token level -------------------------------------------------------------------------
    def encode_tokens(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Latents:
        return self.latent_design(self.encoder(input_ids, attention_mask), attention_mask)

    def unit_memory(self, latents: torch.Tensor, plan: Optional[Plan] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Units' latents (n, k, d) -> what the decoder reads before each unit's start token, with its mask: the
        unit's memory, behind its text's plan (decoder_plan: `plan` given, rows as `latents`)."""
        memory = self.to_memory(latents)
        mask = torch.ones(memory.shape[:2], dtype=torch.long, device=memory.device)
        if plan is None:
            return memory, mask
        vectors = self.to_plan(plan.latents.to(memory.device, memory.dtype), plan.mask.to(memory.device), plan.own.to(memory.device))
        return torch.cat([vectors, memory], dim=1), torch.cat([plan.mask.to(mask), mask], dim=1)

    def decoder_logits(self, latents: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       plan: Optional[Plan] = None) -> torch.Tensor:
        memory, memory_mask = self.unit_memory(latents, plan)
        return self.decoder(memory, input_ids, attention_mask, memory_mask)

    def batch_logits(self, latents: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Next-token logits for a collated batch, aligned with its labels: one row per unit, or with
        decoder_stream one row per text (`collate_stream`), the units' latents (N, k, d) in its order; with
        decoder_plan each unit reads its text's units (`plan_index` into the latents) first."""
        if "stream_index" in batch:
            return self.decoder.stream_logits(self.to_memory(latents), batch["stream_tokens"], batch["stream_index"],
                                              batch["decoder_attention_mask"])
        plan = Plan.gather(latents, batch["plan_index"], batch["plan_own"]) if "plan_index" in batch else None
        return self.decoder_logits(latents, batch["decoder_input_ids"], batch["decoder_attention_mask"], plan)

    def generate_units(self, latents: torch.Tensor, contexts: Optional[list[list[int]]], batch_size: int,
                       max_new_tokens: Optional[int], generate_kwargs: dict, plan: Optional[Plan] = None) -> list[str]:
        """Units' latents (N, k, d), projected onto the design's manifold, -> their texts (each after its context;
        with decoder_plan, after its text's `plan`, rows as `latents`)."""
        latents = self.latent_design.project(latents)
        pieces: list[str] = []
        for start in range(0, latents.shape[0], batch_size):
            rows = slice(start, start + batch_size)
            part = None if plan is None else Plan(self.latent_design.project(plan.latents[rows]), plan.mask[rows], plan.own[rows])
            memory, memory_mask = self.unit_memory(latents[rows].to(self.device, self.dtype), part)
            batch_contexts = None if contexts is None else contexts[rows]
            ids = self.decoder.generate(memory, max_new_tokens or self.config.max_length, context_ids=batch_contexts,
                                        memory_mask=memory_mask, **generate_kwargs)
            pieces += self.processor.batch_decode(ids)
        return pieces

    # ---- text level --------------------------------------------------------------------------
    @torch.no_grad()
    def unit_latents(self, units: Sequence[str], batch_size: int = 64, sample: bool = False, progress: bool = False,
                     bar=None) -> torch.Tensor:
        """Units (segments or paragraphs) -> latents (N, k, d), encoded in length-sorted batches (`bar`: a caller's
        progress bar, advanced by the units of each batch)."""
        tokens = self.processor.tokenize(units)
        latents = torch.empty(len(units), *self.latent_shape, device=self.device)
        batches = length_sorted_batches([len(x) for x in tokens.encoder_ids], batch_size)
        for idx in tqdm(batches, desc="encoding", unit="batch", disable=not progress):
            ids, mask = self.processor.encoder_batch([tokens.encoder_ids[i] for i in idx])
            encoded = self.encode_tokens(ids.to(self.device), mask.to(self.device))
            latents[idx] = (encoded.sample() if sample else encoded.mean).float()  # latents stay float32 whatever the weights
            if bar is not None:
                bar.update(len(idx))
        return latents

    @torch.no_grad()
    def encode(self, texts: Sequence[str], batch_size: int = 64, sample: bool = False) -> EncodedText:
        """Texts -> latents (B, S, k, d) with a (B, S) segment mask. `sample` draws from a VAE posterior."""
        per_text = self.processor.split_units(texts)
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

    def check_sources(self, sources: Optional[Sequence[str]], count: int) -> Optional[list[str]]:
        """The source texts a decoding reads: one per text with source_context, none without (one clear error)."""
        if self.config.source_context and sources is None:
            raise LatentDLMError("this autoencoder writes each text from its latents AND a source text (source_context): "
                                 "give the source texts (with a text-conditioned pipeline: its conditions)")
        if sources is None:
            return None
        if len(sources) != count:
            raise LatentDLMError(f"{len(sources)} source texts for {count} texts")
        return list(sources)

    @torch.no_grad()
    def decode(self, encoded: EncodedText, batch_size: int = 64, max_new_tokens: Optional[int] = None, joined: bool = True,
               fixed: Optional[Sequence[Sequence[Optional[str]]]] = None, sources: Optional[Sequence[str]] = None,
               **generate_kwargs) -> list[str] | list[list[str]]:
        """Latents -> texts in the order of the autoencoder's decoding strategy (every segment in one parallel
        pass, or with decoder_context position by position), rejoined in order (`joined` False: each text's
        list of segments). `fixed[row][s]`, where not None, is that segment's text as given: not decoded.
        `sources`: each text's source text, read first (source_context autoencoders only, and there required)."""
        tokenizer = self.processor.decoder_tokenizer
        generate_kwargs = {"do_sample": False, "num_beams": 1, "pad_token_id": pad_id(tokenizer),
                           "eos_token_id": tokenizer.eos_token_id, **generate_kwargs}
        sources = self.check_sources(sources, encoded.latents.shape[0])
        rows = self.decoding.decode(self, encoded, batch_size, max_new_tokens, generate_kwargs, fixed, sources)
        return [" ".join(p for p in segments if p) for segments in rows] if joined else rows

    @torch.no_grad()
    def decoder_nll(self, latents: torch.Tensor, per_text: Sequence[Sequence[str]], batch_size: int = 64,
                    sources: Optional[Sequence[str]] = None) -> torch.Tensor:
        """Each unit's mean per-token negative log-likelihood under the decoder given its latents (N, k, d),
        units in order over `per_text` (with decoder_context, each reads its text's previous units; with
        source_context, its text's source): how readily the decoder writes that text from there (a fluency
        proxy for decoded latents)."""
        latents = self.latent_design.project(latents)  # as decoding reads them
        if self.config.decoder_stream:
            return self._stream_nll(latents, per_text)
        targets = self.processor.tokenize([u for units in per_text for u in units]).decoder_ids
        contexts = self.processor.context_ids(per_text, self.check_sources(sources, len(per_text)))
        index, own = plan_index([len(units) for units in per_text])
        out = torch.empty(len(targets))
        for start in range(0, len(targets), batch_size):
            rows = slice(start, start + batch_size)
            batch = self.processor.collate(None, targets[rows], None if contexts is None else contexts[rows])
            plan = Plan.gather(latents, index[rows], own[rows]) if self.config.decoder_plan else None
            logits = self.decoder_logits(latents[rows].to(self.device, self.dtype), batch["decoder_input_ids"].to(self.device),
                                         batch["decoder_attention_mask"].to(self.device), plan)
            labels = batch["labels"].to(self.device)
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), labels, ignore_index=-100, reduction="none")
            out[start : start + len(labels)] = (nll.sum(dim=1) / (labels != -100).sum(dim=1).clamp_min(1)).cpu()
        return out

    def _stream_nll(self, latents: torch.Tensor, per_text: Sequence[Sequence[str]]) -> torch.Tensor:
        """decoder_nll with decoder_stream: each text in one pass, every unit's tokens reading the text before it."""
        batch = self.processor.collate_stream([self.processor.tokenize(units).decoder_ids for units in per_text], self.to_memory.length)
        logits = self.batch_logits(latents.to(self.device, self.dtype), {k: v.to(self.device) for k, v in batch.items()})
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2).float(), batch["labels"].to(self.device), ignore_index=-100,
                                                reduction="none").flatten().cpu()
        owners = batch["label_units"].flatten()
        kept = owners >= 0
        count = sum(len(units) for units in per_text)
        totals = torch.zeros(count).index_add_(0, owners[kept], nll[kept])
        return totals / torch.bincount(owners[kept], minlength=count).clamp_min(1)

    def reconstruct(self, texts: Sequence[str], batch_size: int = 64, sources: Optional[Sequence[str]] = None) -> list[str]:
        return self.decode(self.encode(texts, batch_size), batch_size, sources=sources)

    # ---- saving ------------------------------------------------------------------------------
    # save_pretrained / from_pretrained / push_to_hub: latentdlm.hub.HubMixin (a folder or a hub repo id)
    folder_kind, folder_files = "autoencoder", (CONFIG_NAME, WEIGHTS_NAME, *TOKENIZER_FOLDERS)

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
        parts = {name: getattr(self, name) for name in ("encoder", "decoder")}
        if any(part.lora_merged and not part.external for part in parts.values()):
            raise LatentDLMError("this autoencoder's LoRA is merged into base weights that it saves itself: saving "
                                 "it would apply the adapters twice; save the model as loaded, before merge_lora()")
        external = [name for name, part in parts.items() if part.external]
        if external:  # frozen pretrained weights reload from name_or_path: save the trained ones only
            meta["external_parts"] = external
            save_file(self._saved_state(), str(folder / WEIGHTS_NAME))
        else:
            save_model(self, str(folder / WEIGHTS_NAME))
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        self.processor.save_pretrained(folder)

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
            *TextProcessor.load_tokenizers(path),
            None if "encoder" in external else meta["encoder_hf_config"],
            None if "decoder" in external else meta["decoder_hf_config"],
        )
        try:
            missing, unexpected = load_model(model, str(path / WEIGHTS_NAME), strict=False)
        except (SafetensorError, OSError) as exc:
            raise LatentDLMError(f"could not read the weights {path / WEIGHTS_NAME} (missing, truncated or corrupt): {exc}") from None
        # external base weights are not in the file; folders from before the latent space was kept here lack its statistics
        missing = [name for name in missing if name in model._saved_state() and not name.startswith("latent_space.")]
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


def _rename_legacy_weights(module, state_dict, prefix, *args) -> None:
    """Folders saved before the latent designs had their own module: their weight names, renamed."""
    for name in [n for n in state_dict if n.startswith(prefix)]:
        rest = name[len(prefix):]
        for old, new in _LEGACY_PREFIXES.items():
            if rest.startswith(old):
                state_dict[prefix + new + rest[len(old):]] = state_dict.pop(name)


META_TYPES = {"autoencoder": dict, "encoder_hf_config": Optional[dict], "decoder_hf_config": Optional[dict],
              "external_parts": list[str], "training": Optional[dict]}

