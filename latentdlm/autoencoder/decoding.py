"""Latents -> text: the decoder's settings, and the strategies that order the decoding of segments.

`DecodingConfig` is the one set of decoder settings that the pipeline (its saved defaults), the CLI
and the app share. A `DecodingStrategy` decides which segments decode together and what each reads
besides its latent: `ParallelDecoding` decodes every segment of every text in one pass;
`ContextualDecoding` goes segment position by position, each segment reading its text's previous ones.
A new strategy is one new class here, chosen in `strategy_for`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from latentdlm.errors import LatentDLMError


@dataclass(frozen=True)
class DecodingConfig:
    """Beam width (1: greedy), no-repeat n-gram size (0: off), repetition penalty (1: off), top-p
    (None: no sampling; else nucleus sampling, repeatable from the pipeline's seed) and the sampling
    temperature (with top-p only)."""

    decode_beams: int = 1
    no_repeat_ngram_size: int = 0
    repetition_penalty: float = 1.0
    top_p: Optional[float] = None
    temperature: float = 1.0

    def __post_init__(self):
        beams, ngram, penalty, top_p = self.decode_beams, self.no_repeat_ngram_size, self.repetition_penalty, self.top_p
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise LatentDLMError(f"temperature must be above 0 (1: the model's own distribution), got {self.temperature}")
        if isinstance(beams, bool) or not isinstance(beams, int) or beams < 1:
            raise LatentDLMError(f"decode beams must be at least 1, got {beams}")
        if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 0:
            raise LatentDLMError(f"no-repeat n-gram size must be at least 0 (0: off), got {ngram}")
        if not isinstance(penalty, (int, float)) or not penalty > 0:
            raise LatentDLMError(f"repetition penalty must be above 0 (1: none), got {penalty}")
        if top_p is not None and (not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise LatentDLMError(f"top-p must be within (0, 1], got {top_p}")

    @classmethod
    def from_dict(cls, settings: Optional[dict]) -> "DecodingConfig":
        return cls().merged(settings or {})

    def merged(self, overrides: Optional[dict] = None) -> "DecodingConfig":
        """These settings with the given ones (a dict or a DecodingConfig; None values keep these) over them."""
        if isinstance(overrides, DecodingConfig):
            return overrides
        overrides = overrides or {}
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise LatentDLMError(f"unknown decoding setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def generate_kwargs(self) -> dict:
        kwargs = dict(num_beams=self.decode_beams, no_repeat_ngram_size=self.no_repeat_ngram_size,
                      repetition_penalty=self.repetition_penalty, do_sample=self.top_p is not None)
        if self.top_p is not None:
            kwargs.update(top_p=self.top_p, top_k=0, temperature=self.temperature)  # nucleus only: no default top-k 50
        return kwargs

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class DecodingStrategy:
    """Every segment to write, in waves of segments decoded together; each reads `contexts` (token ids) if any."""

    def waves(self, todo: list[tuple[int, int]], num_positions: int) -> list[list[tuple[int, int]]]:
        return [todo]

    def contexts(self, processor, texts: list[list[Optional[str]]], wave: list[tuple[int, int]]) -> Optional[list[list[int]]]:
        return None

    def decode(self, model, encoded, batch_size: int, max_new_tokens: Optional[int], generate_kwargs: dict,
               fixed: Optional[Sequence[Sequence[Optional[str]]]] = None) -> list[list[str]]:
        """`encoded` latents (B, S, k, d) with their (B, S) segment mask -> each text's decoded segments. `fixed[row][s]`,
        where not None, is that segment's text as given: not decoded, and read as context by the segments after it."""
        mask = encoded.segment_mask.cpu()
        rows, positions = mask.shape
        given = [[None] * positions if fixed is None else list(fixed[row]) + [None] * (positions - len(fixed[row])) for row in range(rows)]
        texts = [[given[row][s] if mask[row, s] else None for s in range(positions)] for row in range(rows)]
        todo = [(row, s) for row in range(rows) for s in range(positions) if mask[row, s] and given[row][s] is None]
        for wave in self.waves(todo, positions):
            if not wave:
                continue
            pieces = model.generate_units(torch.stack([encoded.latents[row, s] for row, s in wave]), self.contexts(model.processor, texts, wave),
                                          batch_size, max_new_tokens, generate_kwargs)
            for (row, s), piece in zip(wave, pieces):
                texts[row][s] = piece
        return [[t for t, keep in zip(row, mask[i]) if keep] for i, row in enumerate(texts)]


class ParallelDecoding(DecodingStrategy):
    """Every segment of every text in one parallel pass (SLD)."""


class ContextualDecoding(DecodingStrategy):
    """Segment position by position, each segment reading the text its row has so far (decoder_context)."""

    def waves(self, todo, num_positions):
        return [[(row, s) for row, s in todo if s == position] for position in range(num_positions)]

    def contexts(self, processor, texts, wave):
        return [processor.context_tokens(texts[row][:s]) for row, s in wave]


def strategy_for(config) -> DecodingStrategy:
    """The decoding an autoencoder was trained for: reading the previous segments' text, or not."""
    return ContextualDecoding() if config.decoder_context else ParallelDecoding()


def decode_with_settings(autoencoder, encoded, decoding: DecodingConfig, generator: torch.Generator, batch_size: int,
                         joined: bool = True, fixed=None) -> list[str] | list[list[str]]:
    """The autoencoder's decoding with `decoding`; top-p sampling draws from a seed taken from `generator`
    (repeatable with the pipeline's seed) on a forked global RNG (which `generate` samples from)."""
    def run():
        return autoencoder.decode(encoded, batch_size=batch_size, joined=joined, fixed=fixed, **decoding.generate_kwargs())

    if decoding.top_p is None:
        return run()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [autoencoder.device] if autoencoder.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return run()
