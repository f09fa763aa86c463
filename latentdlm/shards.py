"""Folders of shards: a corpus's per-unit tensors on disk, written shard by shard, read back by index.

A folder holds `shard-00000.safetensors`, ... (each written whole or not at all, so a killed run resumes from the
shards it finished) and, once all are written, a manifest. Rows are read with positioned reads (`os.pread`) of the
safetensors files (a JSON header, then each tensor's rows): the pages read stay the kernel's cache, so a training
run's memory does not grow with the corpus. (Not safetensors' own memory-mapped `safe_open`: every page a random
read touches would stay in the process's resident memory, ~100 MB per batch of 64 stories over a 1M-unit corpus.)
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from latentdlm.errors import LatentDLMError
from latentdlm.io import atomic_file

SHARD_UNITS = 16384  # units per shard: 25 MB of 384-d float32 latents
MANIFEST = "manifest.json"
COUNTS = "counts.safetensors"  # a streamed corpus's units per text
_DTYPES = {"F32": torch.float32, "F16": torch.float16, "I32": torch.int32, "I64": torch.int64}


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.safetensors"


def is_complete(path: Path) -> bool:
    return (path / MANIFEST).is_file()


def write_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """A safetensors file written whole or not at all."""
    with atomic_file(path) as tmp:
        save_file({name: t.contiguous() for name, t in tensors.items()}, str(tmp))


def write_manifest(path: Path, units: int, shards: int, shard_units: int, **extra) -> None:
    """The folder `path` complete: written last."""
    with atomic_file(path / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"units": units, "shards": shards, "shard_units": shard_units, **extra}))


def process_state():
    """This process's accelerate state (one per process; on CPUs a launch's processes too, through gloo)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def ensure_sharded(path: Path, count: int, shard_units: int, write: Callable[[Path, int, int, int, tqdm], None],
                   description: str, **manifest) -> Path:
    """`count` listed units written as shards of `shard_units` into `path`: every process of a launch writes its own even
    share of the missing shards (accelerate's `split_between_processes`; a killed run's finished shards stay), then the
    main process writes the manifest (with `manifest`'s fields). `write(path, index, start, stop, bar)` writes one shard."""
    if is_complete(path):
        return path
    state = process_state()
    path.mkdir(parents=True, exist_ok=True)
    shards = math.ceil(count / shard_units)
    with state.split_between_processes(list(range(shards))) as mine:
        todo = [s for s in mine if not (path / shard_name(s)).is_file()]
        total = sum(min(shard_units, count - s * shard_units) for s in todo)
        with tqdm(total=total, desc=f"{description} (process {state.process_index})", unit="unit", disable=not todo) as bar:
            for s in todo:
                write(path, s, s * shard_units, min(count, (s + 1) * shard_units), bar)
    state.wait_for_everyone()
    if state.is_main_process:
        missing = [s for s in range(shards) if not (path / shard_name(s)).is_file()]
        if missing:
            raise LatentDLMError(f"{path} lacks {len(missing)} shard(s) (first {shard_name(missing[0])})")
        write_manifest(path, count, shards, shard_units, **manifest)
    state.wait_for_everyone()
    return path


def remove_other_folders(path: Path) -> None:
    """On the main process, the shard folders beside `path` removed: a run folder keeps the cache of its current
    settings only."""
    if process_state().is_main_process:
        for other in path.parent.iterdir():
            if other != path:
                shutil.rmtree(other, ignore_errors=True)


def stream_into_shards(path: Path, texts: Iterable[str], split: Callable[[str], list], shard_units: int,
                       write: Callable[[Path, int, list], None], description: str, **manifest) -> torch.Tensor:
    """A stream of texts, each split into its units' items, written as shards of `shard_units` items by every process
    of a launch in turn (shard j by process j mod N: the shard count is unknown until the stream ends); a shard already
    on disk is kept. The main process then writes each text's unit count and the manifest (with `manifest`'s fields).
    Returns the counts. Texts are never held as a list."""
    if is_complete(path):
        return load_file(str(path / COUNTS))["counts"]
    state = process_state()
    path.mkdir(parents=True, exist_ok=True)
    counts, items, shard = [], [], 0

    def flush(batch: list, index: int) -> None:
        if index % state.num_processes == state.process_index and not (path / shard_name(index)).is_file():
            write(path, index, batch)

    for text in tqdm(texts, desc=f"{description} (process {state.process_index})", unit="text"):
        units = split(text)
        counts.append(len(units))
        items += units
        while len(items) >= shard_units:
            flush(items[:shard_units], shard)
            items, shard = items[shard_units:], shard + 1
    if items:
        flush(items, shard)
        shard += 1
    state.wait_for_everyone()
    if not counts:
        raise LatentDLMError("the stream holds no texts to train on (a streamed corpus without data.eval_source holds out its "
                             "first data.max_eval texts)")
    counts = torch.tensor(counts)
    if state.is_main_process:
        write_tensors(path / COUNTS, {"counts": counts})
        write_manifest(path, int(counts.sum()), shard, shard_units, texts=len(counts), **manifest)
    state.wait_for_everyone()
    return counts


class ShardFile:
    """One shard's tensors, rows read with `os.pread`."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        self.entries = {}
        for name, entry in header.items():
            if entry["dtype"] not in _DTYPES:
                raise LatentDLMError(f"{path}: tensor {name} of dtype {entry['dtype']}, expected one of {sorted(_DTYPES)}")
            dtype = _DTYPES[entry["dtype"]]
            row_shape = tuple(entry["shape"][1:])
            self.entries[name] = (dtype, row_shape, dtype.itemsize * math.prod(row_shape), 8 + size + entry["data_offsets"][0])
        self.fd = os.open(path, os.O_RDONLY)

    def dtype(self, name: str) -> torch.dtype:
        return self.entries[name][0]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        dtype, row_shape, row_bytes, offset = self.entries[name]
        data = bytearray(os.pread(self.fd, (stop - start) * row_bytes, offset + start * row_bytes))
        return torch.frombuffer(data, dtype=dtype).view(stop - start, *row_shape) if data else torch.empty(0, *row_shape, dtype=dtype)

    def __del__(self):
        if getattr(self, "fd", None) is not None:  # not when the header could not be read
            os.close(self.fd)


class ShardFolder:
    """A complete shard folder: its manifest, and each shard's file opened once (per DataLoader worker)."""

    def __init__(self, path: Path, what: str):
        path = Path(path)
        if not is_complete(path):
            raise LatentDLMError(f"{path} is not a complete {what} (no {MANIFEST}): encode it again")
        self.path, self.manifest = path, json.loads((path / MANIFEST).read_text())
        self.shard_units, self.count = self.manifest["shard_units"], self.manifest["units"]
        self._files: dict[int, ShardFile] = {}

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:  # for DataLoader workers: each opens its own files
        return {**self.__dict__, "_files": {}}

    def shard(self, index: int) -> ShardFile:
        if index not in self._files:
            self._files[index] = ShardFile(self.path / shard_name(index))
        return self._files[index]

    def locate(self, index: int) -> tuple[ShardFile, int]:
        """The shard holding unit `index`, and its row there."""
        if not -self.count <= index < self.count:
            raise IndexError(f"unit {index} of {self.count}")
        shard, offset = divmod(index % self.count, self.shard_units)
        return self.shard(shard), offset

    def spans(self, start: int, stop: int):
        """(shard file, first row, last row + 1) covering units start..stop-1, in order."""
        while start < stop:
            shard, offset = divmod(start, self.shard_units)
            take = min(stop - start, self.shard_units - offset)
            yield self.shard(shard), offset, offset + take
            start += take


def ragged(rows: Sequence, name: str) -> dict[str, torch.Tensor]:
    """Rows of different lengths as two tensors: `<name>` (all rows joined: token id lists as int32, or tensors (L_i, ...)
    along their first axis) and `<name>_offsets` (where each row starts, and the end)."""
    offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
    offsets[1:] = torch.tensor([len(row) for row in rows], dtype=torch.int64).cumsum(0)
    if rows and isinstance(rows[0], torch.Tensor):
        return {name: torch.cat(list(rows)), f"{name}_offsets": offsets}
    return {name: torch.tensor([i for row in rows for i in row], dtype=torch.int32), f"{name}_offsets": offsets}


class RaggedColumn:
    """One ragged field of a shard folder (`ragged`'s two tensors per shard): row i by index, or rows by slice; token
    ids as lists, tensor rows (`as_lists=False`) as tensors."""

    def __init__(self, folder: ShardFolder, name: str, as_lists: bool = True):
        self.folder, self.name, self.as_lists = folder, name, as_lists

    def __len__(self) -> int:
        return len(self.folder)

    def _read(self, shard: ShardFile, start: int, stop: int) -> list:
        offsets = shard.rows(f"{self.name}_offsets", start, stop + 1).tolist()
        flat = shard.rows(self.name, offsets[0], offsets[-1])
        if self.as_lists:
            flat = flat.tolist()
        return [flat[a - offsets[0] : b - offsets[0]] for a, b in zip(offsets, offsets[1:])]

    def __getitem__(self, index: int | slice):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step != 1:
                raise IndexError("shards read contiguous slices only")
            return [row for span in self.folder.spans(start, stop) for row in self._read(*span)]
        shard, offset = self.folder.locate(index)
        return self._read(shard, offset, offset + 1)[0]

    def lengths(self) -> torch.Tensor:
        """Every row's length, one pass over the shards' offsets."""
        return torch.cat([span[0].rows(f"{self.name}_offsets", span[1], span[2] + 1).diff()
                          for span in self.folder.spans(0, len(self))]).to(torch.int32)
