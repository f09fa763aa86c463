"""The one latent cache: every unit's latents under an autoencoder, computed once, kept on disk in shards.

A cache is a folder named by a hash of what the latents depend on and of the units, so any change of those
makes a new one. Latents that are a fixed function of a frozen encoder (`ParagraphAutoencoder.fixed_latents`)
depend on the encoder and the token limit only: the autoencoder stage (which then trains only the decoder) and
the diffusion stage share them under the latentdlm cache. Other latents depend on the trained weights: the
diffusion stage keeps them in its run folder.

The folder holds shards of SHARD_UNITS units (`shard-00000.safetensors`, ...) and, once all are written, a
manifest. Under `accelerate launch` every process encodes its own even share of the shards (accelerate's
`split_between_processes`); a killed encoding resumes from the shards already written (each is written whole
or not at all). `LatentShards` reads the latents by index with positioned reads of the shard files (the
safetensors layout: a JSON header, then the rows): a training run's memory does not grow with the corpus. (Not
safetensors' own memory-mapped `safe_open`: every page a random read touches would stay in the process's resident
memory, ~100 MB per batch of 64 stories over a 1M-unit corpus.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Iterable, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from latentdlm.errors import LatentDLMError
from latentdlm.io import atomic_file, cache_dir

SHARD_UNITS = 16384  # units per shard: 25 MB of 384-d float32 latents
MANIFEST = "manifest.json"
COUNTS = "counts.safetensors"  # a streamed corpus's units per text


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


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def is_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def write_shard(model, path: Path, index: int, units: Sequence[str], batch_size: int, bar=None) -> None:
    """Shard `index` of the cache `path`: `units`' latents, written whole or not at all."""
    latents = model.unit_latents(units, batch_size, bar=bar).float().cpu()
    with atomic_file(path / shard_name(index)) as tmp:
        save_file({"latents": latents.contiguous()}, str(tmp))


def write_manifest(path: Path, units: int, shards: int, shard_units: int, latent_shape, **extra) -> None:
    """The cache `path` complete: what `LatentShards` reads, written last."""
    with atomic_file(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"units": units, "shards": shards, "shard_units": shard_units,
                                   "latent_shape": list(latent_shape), **extra}))


def ensure_cached(model, units: Sequence[str], batch_size: int = 128, folder: Optional[Path] = None,
                  shard_units: int = SHARD_UNITS) -> Path:
    """The cache folder of `units`' latents (posterior means) under `model`, its missing shards encoded now: each
    process of an `accelerate launch` encodes its own share, the main process then writes the manifest."""
    from accelerate import PartialState

    path = cache_path(model, units, folder, shard_units)
    if is_complete(path):
        return path
    state = PartialState(cpu=not torch.cuda.is_available())  # a launch's CPU processes too (gloo); one state per process
    path.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(len(units) / shard_units)
    with state.split_between_processes(list(range(shards))) as mine:
        todo = [s for s in mine if not (path / shard_name(s)).is_file()]  # a killed run's finished shards stay
        total = sum(min(shard_units, len(units) - s * shard_units) for s in todo)
        with tqdm(total=total, desc=f"encoding (process {state.process_index})", unit="unit", disable=not todo) as bar:
            for s in todo:
                write_shard(model, path, s, units[s * shard_units : (s + 1) * shard_units], batch_size, bar)
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [s for s in range(shards) if not (path / shard_name(s)).is_file()]
        if missing:
            raise LatentDLMError(f"the latent cache {path} lacks {len(missing)} shard(s) (first {shard_name(missing[0])})")
        write_manifest(path, len(units), shards, shard_units, model.latent_shape)
    state.wait_for_everyone()
    return path


def ensure_cached_stream(model, texts: Iterable[str], identity: str, batch_size: int = 128, folder: Optional[Path] = None,
                         shard_units: int = SHARD_UNITS) -> tuple[Path, torch.Tensor]:
    """A stream of texts' units encoded into a cache, shard by shard, never held as a list: every process reads the
    stream (segmenting is cheap) and encodes shard j when j falls to it (round robin: the shard count is unknown until
    the stream ends); the main process writes the texts' unit counts and the manifest. `identity` names the stream
    (source, settings, the file's size and time): it and the model make the key. -> (the cache folder, counts)."""
    from accelerate import PartialState

    digest = _digest(model)
    digest.update(f"stream {identity}; shards of {shard_units}".encode())
    path = _cache_folder(model, folder) / digest.hexdigest()[:32]
    if is_complete(path):
        return path, load_file(str(path / COUNTS))["counts"]
    state = PartialState(cpu=not torch.cuda.is_available())
    path.mkdir(parents=True, exist_ok=True)
    counts, units, shard = [], [], 0

    def flush(batch: list[str], index: int) -> None:
        if index % state.num_processes == state.process_index and not (path / shard_name(index)).is_file():
            write_shard(model, path, index, batch, batch_size)

    for text in tqdm(texts, desc=f"encoding a stream (process {state.process_index})", unit="text"):
        segments = model.processor.split_units([text])[0]
        counts.append(len(segments))
        units += segments
        while len(units) >= shard_units:
            flush(units[:shard_units], shard)
            units, shard = units[shard_units:], shard + 1
    if units:
        flush(units, shard)
        shard += 1
    state.wait_for_everyone()
    counts = torch.tensor(counts)
    if state.is_main_process:
        with atomic_file(path / COUNTS) as tmp:
            save_file({"counts": counts}, str(tmp))
        write_manifest(path, int(counts.sum()), shard, shard_units, model.latent_shape, texts=len(counts))
    state.wait_for_everyone()
    return path, counts


def cached_unit_latents(model, units: Sequence[str], batch_size: int = 128, folder: Optional[Path] = None) -> "LatentShards":
    """The latents of `units` (read by index, `[:]` for all as one tensor), from the cache or computed once."""
    return LatentShards(ensure_cached(model, units, batch_size, folder))


class _ShardFile:
    """One shard's float32 latents, rows read with `os.pread`: the pages read stay the kernel's cache."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            entry = json.loads(f.read(size))["latents"]
        if entry["dtype"] != "F32":
            raise LatentDLMError(f"{path}: latents of dtype {entry['dtype']}, expected F32")
        self.row_shape = tuple(entry["shape"][1:])
        self.row_bytes = 4 * math.prod(self.row_shape)
        self.start = 8 + size + entry["data_offsets"][0]
        self.fd = os.open(path, os.O_RDONLY)

    def rows(self, start: int, stop: int) -> torch.Tensor:
        data = bytearray(os.pread(self.fd, (stop - start) * self.row_bytes, self.start + start * self.row_bytes))
        return torch.frombuffer(data, dtype=torch.float32).view(stop - start, *self.row_shape)

    def __del__(self):
        if getattr(self, "fd", None) is not None:  # not when the header could not be read
            os.close(self.fd)


class LatentShards:
    """A complete cache's latents (N, k, d), read by index or slice from the shards."""

    def __init__(self, path: Path):
        path = Path(path)
        if not is_complete(path):
            raise LatentDLMError(f"{path} is not a complete latent cache (no {MANIFEST}): encode it again")
        manifest = json.loads((path / MANIFEST).read_text())
        self.path, self.shard_units, self.count = path, manifest["shard_units"], manifest["units"]
        self.shape = (self.count, *manifest["latent_shape"])
        self._files: dict[int, object] = {}

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:  # for DataLoader workers: each opens its own files
        return {**self.__dict__, "_files": {}}

    def _shard(self, index: int) -> _ShardFile:
        if index not in self._files:
            self._files[index] = _ShardFile(self.path / shard_name(index))
        return self._files[index]

    def __getitem__(self, index: int | slice) -> torch.Tensor:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.count)
            if step != 1:
                raise IndexError("latent shards read contiguous slices only")
            pieces = []
            while start < stop:
                shard, offset = divmod(start, self.shard_units)
                take = min(stop - start, self.shard_units - offset)
                pieces.append(self._shard(shard).rows(offset, offset + take))
                start += take
            return torch.cat(pieces) if pieces else torch.empty(0, *self.shape[1:])
        if not -self.count <= index < self.count:
            raise IndexError(f"unit {index} of {self.count}")
        shard, offset = divmod(index % self.count, self.shard_units)
        return self._shard(shard).rows(offset, offset + 1)[0]

    def chunks(self):
        """Every latent, one shard at a time, in order: one pass for statistics."""
        for start in range(0, self.count, self.shard_units):
            yield self[start : start + self.shard_units]
