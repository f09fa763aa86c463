"""The one latent cache: every unit's latents under an autoencoder, computed once, kept on disk in shards.

A cache is a folder named by a hash of what the latents depend on and of the units, so any change of those
makes a new one. Latents that are a fixed function of a frozen encoder (`ParagraphAutoencoder.fixed_latents`)
depend on the encoder and the token limit only: the autoencoder stage (which then trains only the decoder) and
the diffusion stage share them under the latentdlm cache. Other latents depend on the trained weights: the
diffusion stage keeps them in its run folder.

The folder holds shards of SHARD_UNITS units and, once all are written, a manifest (latentdlm/shards.py). Under
`accelerate launch` every process encodes its own even share of the shards (accelerate's `split_between_processes`);
a killed encoding resumes from the shards already written. `LatentShards` reads the latents by index.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch

from latentdlm.errors import LatentDLMError
from latentdlm.io import cache_dir
from latentdlm.shards import SHARD_UNITS, ShardFolder, ensure_sharded, shard_name, stream_into_shards, write_tensors


def _digest(model) -> "hashlib._Hash":
    if model.fixed_latents:
        digest = hashlib.sha256(json.dumps({
            "encoder": model.config.encoder.name_or_path, "encoder_config": model.encoder.hf_config,
            "max_length": model.config.max_length, "random_init": not model.encoder.external,
        }, sort_keys=True, default=str).encode())
        weights = {} if model.encoder.external else model.encoder.state_dict()  # a random frozen encoder: its weights count
    else:
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True, default=str).encode())
        weights = model._saved_state()
    for tensor in weights.values():
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest


def cache_path(model, units: Sequence[str], folder: Optional[Path] = None, shard_units: int = SHARD_UNITS) -> Path:
    """The folder of `units`' latents: under `folder` (default: the shared cache) unless they are fixed latents,
    which always live in the shared cache."""
    digest = _digest(model)
    digest.update(f"shards of {shard_units}".encode())
    for unit in units:
        digest.update(unit.encode("utf-8") + b"\0")
    return _cache_folder(model, folder) / digest.hexdigest()[:32]


def _cache_folder(model, folder: Optional[Path]) -> Path:
    """Where a model's caches go: `folder`, or the shared cache (always for fixed latents)."""
    return cache_dir() / "embeddings" if model.fixed_latents or folder is None else folder


def write_shard(model, path: Path, index: int, units: Sequence[str], batch_size: int, bar=None) -> None:
    """Shard `index` of the cache `path`: `units`' latents, written whole or not at all."""
    write_tensors(path / shard_name(index), {"latents": model.unit_latents(units, batch_size, bar=bar).float().cpu()})


def ensure_cached(model, units: Sequence[str], batch_size: int = 128, folder: Optional[Path] = None,
                  shard_units: int = SHARD_UNITS) -> Path:
    """The cache folder of `units`' latents (posterior means) under `model`, its missing shards encoded now: each
    process of an `accelerate launch` encodes its own share (`ensure_sharded`)."""
    return ensure_sharded(cache_path(model, units, folder, shard_units), len(units), shard_units,
                          lambda path, index, start, stop, bar: write_shard(model, path, index, units[start:stop], batch_size, bar),
                          "encoding", latent_shape=list(model.latent_shape))


def ensure_cached_stream(model, texts: Iterable[str], identity: str, batch_size: int = 128, folder: Optional[Path] = None,
                         shard_units: int = SHARD_UNITS) -> tuple[Path, torch.Tensor]:
    """A stream of texts' units encoded into a cache, shard by shard, never held as a list (`stream_into_shards`).
    `identity` names the stream (source, settings, the file's size and time): it and the model make the key.
    -> (the cache folder, each text's unit count)."""
    digest = _digest(model)
    digest.update(f"stream {identity}; shards of {shard_units}".encode())
    path = _cache_folder(model, folder) / digest.hexdigest()[:32]
    counts = stream_into_shards(path, texts, lambda text: model.processor.split_units([text])[0], shard_units,
                                lambda path, index, units: write_shard(model, path, index, units, batch_size),
                                "encoding a stream", latent_shape=list(model.latent_shape))
    return path, counts


def cached_unit_latents(model, units: Sequence[str], batch_size: int = 128, folder: Optional[Path] = None) -> "LatentShards":
    """The latents of `units` (read by index, `[:]` for all as one tensor), from the cache or computed once."""
    return LatentShards(ensure_cached(model, units, batch_size, folder))


class LatentShards(ShardFolder):
    """A complete cache's latents (N, k, d), read by index or slice from the shards."""

    def __init__(self, path: Path):
        super().__init__(path, "latent cache")
        self.shape = (self.count, *self.manifest["latent_shape"])

    def _rows(self, shard, start: int, stop: int) -> torch.Tensor:
        if shard.dtype("latents") != torch.float32:
            raise LatentDLMError(f"{self.path}: latents of dtype {shard.dtype('latents')}, expected float32")
        return shard.rows("latents", start, stop)

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step != 1:
                raise IndexError("latent shards read contiguous slices only")
            pieces = [self._rows(*span) for span in self.spans(start, stop)]
            return torch.cat(pieces) if pieces else torch.empty(0, *self.shape[1:])
        shard, offset = self.locate(index)
        return self._rows(shard, offset, offset + 1)[0]

    def chunks(self):
        """Every latent, one shard at a time, in order: one pass for statistics."""
        for start in range(0, self.count, self.shard_units):
            yield self[start : start + self.shard_units]
