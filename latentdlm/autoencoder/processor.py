"""The autoencoder's text processor: text <-> the token ids its parts read, apart from the model.

Sentence segmentation (units), tokenization (encoder ids, decoder targets), collation (dynamic padding,
decoder inputs shifted behind the start token) and the decoder's context (the previous units' tokens).
It saves beside the model as a transformers processor does: `encoder_tokenizer/`, `decoder_tokenizer/`.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter
from latentdlm.errors import LatentDLMError
from latentdlm.hf_parts import left_pad

TOKENIZER_FOLDERS = ("encoder_tokenizer", "decoder_tokenizer")


@dataclass
class TokenizedUnits:
    encoder_ids: list[list[int]]
    decoder_ids: list[list[int]]  # targets, each ending with eos


class TextProcessor:
    def __init__(self, encoder_tokenizer: PreTrainedTokenizerBase, decoder_tokenizer: PreTrainedTokenizerBase,
                 segmentation: SegmentationConfig, max_length: int, decoder_context: int, start_token_id: int,
                 source_context: int = 0):
        if decoder_tokenizer.eos_token_id is None:
            raise LatentDLMError("the decoder tokenizer has no eos token")
        self.encoder_tokenizer, self.decoder_tokenizer = encoder_tokenizer, decoder_tokenizer
        self.segmenter = SentenceSegmenter(segmentation)
        self.max_length, self.decoder_context, self.start_token_id = max_length, decoder_context, start_token_id
        self.source_context = source_context

    @property
    def decoder_pad_id(self) -> int:
        return pad_id(self.decoder_tokenizer)

    def split_units(self, texts: Sequence[str]) -> list[list[str]]:
        """Each text -> its units: sentence segments in segment mode, else the text itself."""
        units = self.segmenter.split_batch(list(texts))
        empty = [i for i, u in enumerate(units) if not u]
        if empty:
            raise LatentDLMError(f"{len(empty)} input text(s) are empty or whitespace only (first at index {empty[0]})")
        return units

    def tokenize(self, units: Sequence[str]) -> TokenizedUnits:
        """Encoder ids, and decoder targets as the decoder was pretrained to produce them: what its
        tokenizer gives with its own special tokens (BART `<s> x </s>`, T5 `x </s>`, Llama `<s> x`,
        GPT-2 `x`), minus a leading token that duplicates the decoder's start token (`collate` puts
        that in front), always ending with eos."""
        limit = self.max_length
        enc = self.encoder_tokenizer(list(units), truncation=True, max_length=limit)["input_ids"]
        full = self.decoder_tokenizer(list(units), verbose=False)["input_ids"]
        eos = self.decoder_tokenizer.eos_token_id
        bodies = []
        for ids in full:
            ids = list(ids)
            if ids and ids[0] == self.start_token_id:
                ids = ids[1:]
            if ids and ids[-1] == eos:
                ids = ids[:-1]
            bodies.append(ids)
        truncated = sum(len(ids) > limit - 1 for ids in bodies)
        if truncated:
            warnings.warn(f"{truncated} of {len(bodies)} texts are longer than max_length={limit} tokens and were truncated")
        return TokenizedUnits(enc, [ids[: limit - 1] + [eos] for ids in bodies])

    def encoder_batch(self, encoder_ids: Sequence[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        return right_pad(encoder_ids, pad_id(self.encoder_tokenizer))

    def collate(self, encoder_ids: Optional[Sequence[list[int]]], decoder_ids: Sequence[list[int]],
                context_ids: Optional[Sequence[list[int]]] = None) -> dict[str, torch.Tensor]:
        """Pad a batch to its own longest unit (dynamic padding). Decoder inputs are the targets
        shifted right behind the decoder's start token: BART `</s> <s> x`, T5 `<pad> x`, causal `<bos> x`.
        Without `encoder_ids` (latents given from a cache) the batch holds the decoder side only. With
        `context_ids` (decoder_context) each row's context tokens come first, left-padded, unlabelled, marked in
        `context_mask`."""
        batch = {}
        if encoder_ids is not None:
            batch["input_ids"], batch["attention_mask"] = self.encoder_batch(encoder_ids)
        dec_pad = self.decoder_pad_id
        batch["decoder_input_ids"], batch["decoder_attention_mask"] = right_pad([[self.start_token_id] + ids[:-1] for ids in decoder_ids], dec_pad)
        batch["labels"], _ = right_pad(decoder_ids, -100)
        if context_ids is not None:
            context, context_mask = left_pad(context_ids, dec_pad)
            batch["decoder_input_ids"] = torch.cat([context, batch["decoder_input_ids"]], dim=1)
            batch["decoder_attention_mask"] = torch.cat([context_mask, batch["decoder_attention_mask"]], dim=1)
            batch["labels"] = torch.cat([torch.full_like(context, -100), batch["labels"]], dim=1)
            target = torch.zeros(len(context_ids), batch["labels"].shape[1] - context.shape[1], dtype=torch.bool)
            batch["context_mask"] = torch.cat([context_mask.bool(), target], dim=1)
        return batch

    def collate_stream(self, decoder_ids: Sequence[Sequence[list[int]]], memory_length: int) -> dict[str, torch.Tensor]:
        """Texts as single streams (decoder_stream): `decoder_ids[t]` holds text t's unit targets; each unit u
        becomes [its m memory slots, start token, target[:-1]], labelled [-100] * m + target. A stream's rows
        are indices (`stream_index`, right-padded) into one table: the batch's N units x m memory vectors
        first (unit order over the texts), then `stream_tokens`; `label_units` gives each label's unit (-1: none)."""
        counts = [len(units) for units in decoder_ids]
        token_row, tokens, index, labels, owners = sum(counts) * memory_length, [], [], [], []
        unit = 0
        for units in decoder_ids:
            row_index, row_labels, row_owner = [], [], []
            for target in units:
                inputs = [self.start_token_id] + list(target[:-1])
                row_index += [unit * memory_length + j for j in range(memory_length)]
                row_index += range(token_row + len(tokens), token_row + len(tokens) + len(inputs))
                tokens += inputs
                row_labels += [-100] * memory_length + list(target)
                row_owner += [-1] * memory_length + [unit] * len(target)
                unit += 1
            index.append(row_index), labels.append(row_labels), owners.append(row_owner)
        stream_index, mask = right_pad(index, 0)
        return {"stream_tokens": torch.tensor(tokens, dtype=torch.long), "stream_index": stream_index,
                "decoder_attention_mask": mask, "labels": right_pad(labels, -100)[0], "label_units": right_pad(owners, -1)[0]}

    def context_ids(self, per_text: Sequence[Sequence[str]], sources: Optional[Sequence[str]] = None) -> Optional[list[list[int]]]:
        """For every unit of every text (in order), what the decoder reads before writing it: its text's source
        (`source_context`) and the decoder tokens of the text's previous `decoder_context` units (None: neither)."""
        if not self.decoder_context and sources is None:
            return None
        heads = self.source_ids(sources) if sources is not None else [[] for _ in per_text]
        return [heads[t] + (self.context_tokens(units[max(0, j - self.decoder_context) : j]) if self.decoder_context else [])
                for t, units in enumerate(per_text) for j in range(len(units))]

    def source_ids(self, sources: Sequence[str]) -> list[list[int]]:
        """Each source text's first `source_context` decoder tokens: what a source-aware decoder reads first."""
        if not self.source_context:
            raise LatentDLMError("this autoencoder was trained without source_context: it decodes from its latents alone, "
                                 "give no source texts")
        empty = [i for i, source in enumerate(sources) if not str(source).strip()]
        if empty:
            raise LatentDLMError(f"{len(empty)} source text(s) are empty or whitespace only (first at index {empty[0]})")
        ids = self.decoder_tokenizer(list(sources), add_special_tokens=False, verbose=False)["input_ids"]
        return [list(row[: self.source_context]) for row in ids]

    def context_tokens(self, previous: Sequence[Optional[str]]) -> list[int]:
        """The decoder tokens of the last `decoder_context` units before one (texts, None where not written)."""
        text = " ".join(p for p in previous[-self.decoder_context :] if p)
        if not text:
            return []
        ids = self.decoder_tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
        return ids[-self.max_length * self.decoder_context :]

    def batch_decode(self, ids: torch.Tensor) -> list[str]:
        return [t.strip() for t in self.decoder_tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # ---- saved beside the model --------------------------------------------------------------
    def save_pretrained(self, folder: Path) -> None:
        for name, tokenizer in zip(TOKENIZER_FOLDERS, (self.encoder_tokenizer, self.decoder_tokenizer)):
            tokenizer.save_pretrained(folder / name)

    @staticmethod
    def load_tokenizers(folder: Path) -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
        encoder, decoder = (AutoTokenizer.from_pretrained(folder / name) for name in TOKENIZER_FOLDERS)
        return encoder, decoder


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def right_pad(sequences: Sequence[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), value, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids, mask


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
