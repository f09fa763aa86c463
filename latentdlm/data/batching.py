"""Length-grouped sampling: batches of similar length waste little padding (dynamic padding)."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedSampler(Sampler[int]):
    """Shuffle, sort by length inside mega-batches of `group` batches, then shuffle the batches.

    Deterministic for a given (seed, epoch): `set_epoch` (called by accelerate) changes the order
    each epoch, and a resumed run sees the same order as an uninterrupted one.
    """

    def __init__(self, lengths: Sequence[int] | torch.Tensor, batch_size: int, seed: int = 0, group: int = 50):
        self.lengths = torch.as_tensor(lengths)  # a tensor: a few bytes per example, however large the corpus
        self.batch_size = batch_size
        self.seed = seed
        self.group = group
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(len(self.lengths), generator=generator)
        mega = self.batch_size * self.group
        batches = []
        for start in range(0, len(order), mega):
            chunk = order[start : start + mega]
            chunk = chunk[torch.sort(self.lengths[chunk], descending=True, stable=True).indices]
            batches += list(chunk.split(self.batch_size))
        for b in torch.randperm(len(batches), generator=generator).tolist():
            yield from batches[b].tolist()
