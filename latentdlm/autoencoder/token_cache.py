"""Stage 1's streamed corpus (`data.streaming`): every unit's token ids, tokenized once into shards in the run folder
(latentdlm/shards.py) and read back by index, so an autoencoder trains on a corpus that does not fit in memory.

Each shard holds, per unit, its decoder target, its encoder input (not under fixed latents: those come from the latent
cache) and, with `decoder_context`, the decoder tokens of the units before it. The folder's name is a hash of the
stream, the model's settings and its tokenizers, so a changed corpus or tokenizer makes a new one (and the old
one is removed).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional

from safetensors.torch import load_file

from latentdlm.shards import (
    COUNTS, SHARD_UNITS, RaggedColumn, ShardFolder, ragged, remove_other_folders, shard_name, stream_into_shards, write_tensors,
)

FOLDER = "unit_tokens"


def _tokenizer_bytes(tokenizer) -> bytes:
    backend = getattr(tokenizer, "backend_tokenizer", None)  # a fast tokenizer: its whole definition
    return backend.to_str().encode() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True).encode()


def token_cache_path(model, identity: str, folder: Path, shard_units: int = SHARD_UNITS) -> Path:
    digest = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True, default=str).encode())
    for tokenizer in (model.processor.encoder_tokenizer, model.processor.decoder_tokenizer):
        digest.update(_tokenizer_bytes(tokenizer))
    digest.update(f"stream {identity}; shards of {shard_units}".encode())
    return Path(folder) / FOLDER / digest.hexdigest()[:32]


def ensure_tokenized_stream(model, texts, folder: Path, shard_units: int = SHARD_UNITS) -> Path:
    """The token cache of a stream of texts (`TextStream`) under `model`, its missing shards written now by every
    process in turn (`stream_into_shards`); returns its folder."""
    processor = model.processor
    fields = ["decoder"] + ([] if model.fixed_latents else ["encoder"]) + (["context"] if processor.decoder_context else [])

    def split(text: str) -> list[tuple]:
        units = processor.split_units([text])[0]
        contexts = processor.context_ids([units]) or [None] * len(units)
        return list(zip(units, contexts))

    def write(path: Path, index: int, items: list[tuple]) -> None:
        tokens = processor.tokenize([unit for unit, _ in items])
        tensors = ragged(tokens.decoder_ids, "decoder")
        if "encoder" in fields:
            tensors |= ragged(tokens.encoder_ids, "encoder")
        if "context" in fields:
            tensors |= ragged([context for _, context in items], "context")
        write_tensors(path / shard_name(index), tensors)

    path = token_cache_path(model, texts.identity, folder, shard_units)
    stream_into_shards(path, texts, split, shard_units, write, "tokenizing a stream", fields=fields)
    remove_other_folders(path)  # the run folder keeps the cache of its current corpus and tokenizer only
    return path


class UnitTokens(ShardFolder):
    """A complete token cache: each field a `RaggedColumn` (unit i's ids by index), and each text's unit count."""

    def __init__(self, path: Path):
        super().__init__(path, "token cache")
        self.counts = load_file(str(self.path / COUNTS))["counts"]

    def column(self, name: str) -> Optional[RaggedColumn]:
        return RaggedColumn(self, name) if name in self.manifest["fields"] else None
