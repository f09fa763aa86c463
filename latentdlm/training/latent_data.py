"""Stage 2's data: the corpus's latents (through the one latent cache), segment counts, class labels
and source texts, cached per run and checked by a key and a checksum; the dataset and its collator."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from safetensors.torch import load_file, save_file

from latentdlm.autoencoder.latent_cache import LatentShards, ensure_cached, ensure_cached_stream
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.data.sources import TextStream, load_labeled_texts, load_pairs, load_texts
from latentdlm.diffusion.condition import ConditionEncoder
from latentdlm.errors import LatentDLMError
from latentdlm.io import CONFIG_NAME, WEIGHTS_NAME, atomic_file, file_sha256
from latentdlm.shards import (
    SHARD_UNITS, RaggedColumn, ShardFolder, ensure_sharded, is_complete, ragged, remove_other_folders, shard_name, write_tensors,
)

if TYPE_CHECKING:
    from latentdlm.training.diffusion import DiffusionTrainConfig

CACHE_NAME = "latents.safetensors"
CONDITIONS_FOLDER = "conditions"  # the frozen condition encoder's token states, in shards


def _cache_key(cfg: DiffusionTrainConfig) -> str:
    """Changes whenever the autoencoder weights or the data settings change."""
    settings = {**cfg.data.__dict__, "units": "latent_cache"}  # the units' latents live in the one latent cache
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update((Path(cfg.autoencoder) / CONFIG_NAME).read_bytes())  # names any external pretrained parts
    return file_sha256(Path(cfg.autoencoder) / WEIGHTS_NAME, digest)


def _cache_is_current(path: Path, meta: Path, key: str) -> bool:
    """The cache file exists, was written for `key`, is whole (its sha256 as recorded) and the units'
    latent cache it names, if any, is there."""
    if not (path.exists() and meta.exists()):
        return False
    info = json.loads(meta.read_text())
    if info.get("key") != key or ("units_file" in info and not is_complete(Path(info["units_file"]))):
        return False
    return "sha256" not in info or info["sha256"] == file_sha256(path)  # caches from before the checksum: trusted


def encode_corpus(autoencoder: ParagraphAutoencoder, texts: list[str], batch_size: int, folder: Path,
                  shard_units: int = SHARD_UNITS) -> tuple[Path, torch.Tensor]:
    """All segments' latents in text order, through the latent cache (its folder), and the number of segments
    of each text."""
    per_text = autoencoder.processor.split_units(texts)
    units = [u for segments in per_text for u in segments]
    return ensure_cached(autoencoder, units, batch_size, folder, shard_units), torch.tensor([len(segments) for segments in per_text])


def load_or_encode(cfg: DiffusionTrainConfig, autoencoder: ParagraphAutoencoder, out: Path, is_main: bool, wait) -> dict:
    """{units (read by index), counts, labels?}, the class names and the source texts, from the cache or encoded
    once, every process encoding its share of the units (`ensure_cached`); the main process writes the rest."""
    path, meta = out / CACHE_NAME, out / "latents.json"
    data_cfg = cfg.data
    key = _cache_key(cfg)
    current = _cache_is_current(path, meta, key)
    wait()  # every process has looked before anything is written
    if not current:
        names = sources = None
        if data_cfg.label_column and data_cfg.condition_column:
            raise LatentDLMError("data.label_column and data.condition_column: condition on a class or on a text, not both")
        if data_cfg.label_names is not None and not data_cfg.label_column:
            raise LatentDLMError("data.label_names names the classes of data.label_column, which is not set")
        if data_cfg.streaming and (data_cfg.label_column or data_cfg.condition_column):
            raise LatentDLMError("data.streaming reads unconditional corpora: leave data.label_column and data.condition_column unset")
        if data_cfg.streaming:
            texts = TextStream(data_cfg)
            units_file, counts = ensure_cached_stream(autoencoder, texts, texts.identity, cfg.encode_batch_size, out,
                                                      cfg.encode_shard_units)
        else:
            if data_cfg.label_column:
                pairs = load_labeled_texts(data_cfg.source, data_cfg.column, data_cfg.label_column, data_cfg.split, data_cfg.limit)
                texts, names = [t for t, _ in pairs], name_labels([label for _, label in pairs], data_cfg.label_names)
            elif data_cfg.condition_column:
                pairs = load_pairs(data_cfg.source, data_cfg.condition_column, data_cfg.column, data_cfg.split, data_cfg.limit)
                sources, texts = [s for s, _ in pairs], [t for _, t in pairs]
            else:
                texts = load_texts(data_cfg.source, data_cfg.column, data_cfg.split, data_cfg.limit)
            units_file, counts = encode_corpus(autoencoder, texts, cfg.encode_batch_size, out, cfg.encode_shard_units)
        if is_main:
            tensors = {"counts": counts}
            raw_of = {name: raw for raw, name in (data_cfg.label_names or {}).items()}  # classes in the raw labels' order
            class_names = sorted(set(names), key=lambda n: _natural(raw_of.get(n, n))) if names else None
            if names:
                tensors["labels"] = torch.tensor([class_names.index(n) for n in names])
            with atomic_file(path) as tmp:
                save_file(tensors, str(tmp))
            meta.write_text(json.dumps({"key": key, "sha256": file_sha256(path), "class_names": class_names, "texts": len(counts),
                                        "sources": sources, "units_file": str(units_file)}))
    wait()
    data = load_file(str(path))
    info = json.loads(meta.read_text())
    data["units"] = LatentShards(info["units_file"])  # read by index from the shards
    data["class_names"], data["sources"] = info["class_names"], info.get("sources")
    return data


def _natural(label: str):
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def name_labels(labels: list[str], label_names: Optional[dict[str, str]]) -> list[str]:
    """The raw labels of the data as class names through `data.label_names` (unchanged without it).
    A raw label it does not name, or two raw labels with one name, is an error."""
    if label_names is None:
        return labels
    unnamed = sorted({label for label in labels if label.strip() not in label_names}, key=_natural)
    if unnamed:
        raise LatentDLMError(
            f"label{'s' if len(unnamed) > 1 else ''} {', '.join(repr(u) for u in unnamed[:10])} in the data "
            f"{'have' if len(unnamed) > 1 else 'has'} no name in data.label_names (which names "
            f"{', '.join(repr(k) for k in label_names) or 'nothing'}): add {'them' if len(unnamed) > 1 else 'it'}"
        )
    used = {label.strip() for label in labels}
    by_name: dict[str, list[str]] = {}
    for raw, name in label_names.items():
        if raw in used:
            by_name.setdefault(name, []).append(raw)
    shared = {name: raws for name, raws in by_name.items() if len(raws) > 1}
    if shared:
        name, raws = next(iter(shared.items()))
        raise LatentDLMError(f"data.label_names gives the labels {', '.join(map(repr, raws))} one name '{name}'")
    absent = [raw for raw in label_names if raw not in used]
    if absent:
        warnings.warn(f"data.label_names names label(s) {', '.join(map(repr, absent))} that the data does not have: "
                      "the model will not know those classes")
    return [label_names[label.strip()] for label in labels]


def load_or_encode_conditions(cfg: DiffusionTrainConfig, encoder: ConditionEncoder, sources: list[str], out: Path) -> RaggedColumn:
    """A frozen condition encoder is a fixed function: every source's token states (L_i, C), computed once (float16,
    in shards under `out/conditions`, every process of a launch its share) and read by index while the latents and
    the condition settings stay; a cache for other settings is removed."""
    key = hashlib.sha256((json.loads((out / "latents.json").read_text())["key"]
                          + json.dumps(dataclasses.asdict(cfg.condition), sort_keys=True)).encode()).hexdigest()
    path = out / CONDITIONS_FOLDER / key[:32]

    def write(path: Path, index: int, start: int, stop: int, bar) -> None:
        states = []
        for first in range(start, stop, cfg.encode_batch_size):
            batch = sources[first : min(stop, first + cfg.encode_batch_size)]
            encoded = encoder.encode(batch, warn=False)
            states += [row[keep].half().cpu() for row, keep in zip(encoded["condition_states"], encoded["condition_mask"])]
            bar.update(len(batch))
        write_tensors(path / shard_name(index), ragged(states, "states"))

    ensure_sharded(path, len(sources), cfg.encode_shard_units, write, "encoding the source texts")
    remove_other_folders(path)
    return RaggedColumn(ShardFolder(path, "condition cache"), "states", as_lists=False)


class LatentDataset(torch.utils.data.Dataset):
    """Text i -> its segment latents (S_i, k, d) through `transform` (the latent space's normalisation), its
    label and its condition: the source text (a trainable condition encoder reads it each step) or its cached
    token states (a frozen one). `units`: a tensor, or a cache's `LatentShards` (read by index)."""

    def __init__(self, units, counts: torch.Tensor, labels: Optional[torch.Tensor],
                 sources: Optional[list[str] | list[torch.Tensor]] = None, transform=None):
        self.units, self.labels, self.sources, self.transform = units, labels, sources, transform or (lambda x: x)
        self.offsets = torch.cumsum(counts, 0) - counts

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int):
        start = int(self.offsets[i])
        end = int(self.offsets[i + 1]) if i + 1 < len(self.offsets) else len(self.units)
        return (self.transform(self.units[start:end]), None if self.labels is None else self.labels[i],
                None if self.sources is None else self.sources[i])


def collate_latents(items: list, condition_encoder: Optional[ConditionEncoder] = None) -> dict[str, torch.Tensor]:
    """Pad to the batch's largest segment count: latents (B, S*k, d), latent_mask (B, S*k); class labels;
    cached condition states (padded, with their mask), or the source texts' tokens for `condition_encoder`."""
    width = max(x.shape[0] for x, _, _ in items)
    k, d = items[0][0].shape[1:]
    latents = torch.zeros(len(items), width, k, d)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for row, (x, _, _) in enumerate(items):
        latents[row, : len(x)] = x
        mask[row, : len(x)] = True
    batch = {"latents": latents.reshape(len(items), width * k, d), "latent_mask": mask.repeat_interleave(k, dim=1)}
    if items[0][1] is not None:
        batch["class_labels"] = torch.stack([label for _, label, _ in items])
    if isinstance(items[0][2], torch.Tensor):
        states = [source for _, _, source in items]
        batch["condition_states"] = torch.nn.utils.rnn.pad_sequence(states, batch_first=True).float()
        batch["condition_mask"] = torch.arange(batch["condition_states"].shape[1])[None] < torch.tensor([len(s) for s in states])[:, None]
    elif condition_encoder is not None:
        tokens = condition_encoder.tokenize([source for _, _, source in items], warn=False)
        batch["condition_input_ids"], batch["condition_attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
    return batch


