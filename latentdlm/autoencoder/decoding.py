"""Latents -> text: the decoder's settings, and the strategies that order the decoding of segments.

`DecodingConfig` is the one set of decoder settings that the pipeline (its saved defaults), the CLI
and the app share. A `DecodingStrategy` decides which segments decode together and what each reads
besides its latent: `ParallelDecoding` decodes every segment of every text in one pass;
`ContextualDecoding` goes segment position by position, each segment reading its text's previous ones;
`StreamDecoding` writes each text as one stream under one KV cache (decoder_stream); `PlanDecoding` decodes every
segment in one pass as `ParallelDecoding`, each reading its text's latents first (decoder_plan).
A new strategy is one new class here, chosen in `strategy_for`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from latentdlm.autoencoder.designs import Plan
from latentdlm.autoregressive import logits_processors, next_tokens
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

    def plan(self, encoded, wave: list[tuple[int, int]]):
        """What the wave's segments read of their texts' latents first (decoder_plan), or None."""
        return None

    def decode(self, model, encoded, batch_size: int, max_new_tokens: Optional[int], generate_kwargs: dict,
               fixed: Optional[Sequence[Sequence[Optional[str]]]] = None, sources: Optional[list[str]] = None) -> list[list[str]]:
        """`encoded` latents (B, S, k, d) with their (B, S) segment mask -> each text's decoded segments. `fixed[row][s]`,
        where not None, is that segment's text as given: not decoded, and read as context by the segments after it.
        `sources[row]`, where given, is read before every segment of that row (source_context)."""
        heads = None if sources is None else model.processor.source_ids(sources)
        mask = encoded.segment_mask.cpu()
        rows, positions = mask.shape
        given = given_segments(fixed, mask)
        texts = [[given[row][s] if mask[row, s] else None for s in range(positions)] for row in range(rows)]
        todo = [(row, s) for row in range(rows) for s in range(positions) if mask[row, s] and given[row][s] is None]
        for wave in self.waves(todo, positions):
            if not wave:
                continue
            contexts = self.contexts(model.processor, texts, wave)
            if heads is not None:
                contexts = [heads[row] + (contexts[i] if contexts else []) for i, (row, _) in enumerate(wave)]
            pieces = model.generate_units(torch.stack([encoded.latents[row, s] for row, s in wave]), contexts,
                                          batch_size, max_new_tokens, generate_kwargs, self.plan(encoded, wave))
            for (row, s), piece in zip(wave, pieces):
                texts[row][s] = piece
        return [[t for t, keep in zip(row, mask[i]) if keep] for i, row in enumerate(texts)]


def given_segments(fixed: Optional[Sequence[Sequence[Optional[str]]]], mask: torch.Tensor) -> list[list[Optional[str]]]:
    """`fixed` (rows of given texts, None where a segment is to be written) padded to every segment position of `mask`."""
    rows, positions = mask.shape
    return [[None] * positions if fixed is None else list(fixed[row]) + [None] * (positions - len(fixed[row])) for row in range(rows)]


class ParallelDecoding(DecodingStrategy):
    """Every segment of every text in one parallel pass (SLD)."""


class PlanDecoding(ParallelDecoding):
    """Every segment of every text in one parallel pass, each reading its whole text's latents first (decoder_plan)."""

    def plan(self, encoded, wave):
        rows = torch.tensor([row for row, _ in wave])
        return Plan(encoded.latents[rows.to(encoded.latents.device)], encoded.segment_mask.cpu()[rows],
                    torch.tensor([s for _, s in wave]))


class ContextualDecoding(DecodingStrategy):
    """Segment position by position, each segment reading the text its row has so far (decoder_context)."""

    def waves(self, todo, num_positions):
        return [[(row, s) for row, s in todo if s == position] for position in range(num_positions)]

    def contexts(self, processor, texts, wave):
        return [processor.context_tokens(texts[row][:s]) for row, s in wave]


class StreamDecoding(DecodingStrategy):
    """Each text as one stream under one KV cache (decoder_stream), as it trained: [prefix 1, bos, text 1,
    prefix 2, bos, ...]. A segment ends at eos, which is not fed back: the next segment's prefix follows.
    All rows advance together, each reading from its own queue of input vectors (the next token, or a new
    segment's prefix and start token, or given segments' text). When most rows have several vectors queued
    (the first prefixes, or a batch of one) a step reads every queue whole, left-padded to the longest;
    otherwise one vector per row, so rows out of step never pad the others (padding is masked out). A row whose
    text is written leaves the batch and the KV cache: a batch costs what its rows still write."""

    def decode(self, model, encoded, batch_size, max_new_tokens, generate_kwargs, fixed=None, sources=None):
        if generate_kwargs.get("num_beams", 1) != 1:
            raise LatentDLMError("beam search does not apply to one-stream decoding (decoder_stream): use 1 beam")
        mask = encoded.segment_mask.cpu()
        given = given_segments(fixed, mask)
        texts = []
        for start in range(0, len(mask), batch_size):
            rows = range(start, min(start + batch_size, len(mask)))
            texts += _Streams(model, encoded.latents[start : rows.stop], mask[start : rows.stop], [given[r] for r in rows],
                              max_new_tokens or model.config.max_length, generate_kwargs).run()
        return texts


class _Streams:
    """One batch of texts decoded as streams (StreamDecoding)."""

    def __init__(self, model, latents: torch.Tensor, mask: torch.Tensor, given: list[list[Optional[str]]], limit: int, kwargs: dict):
        self.model, self.decoder, self.mask, self.given, self.limit = model, model.decoder, mask, given, limit
        self.eos, self.start = kwargs["eos_token_id"], model.decoder.start_token_id
        self.sample, self.processors = kwargs.get("do_sample", False), logits_processors(kwargs)
        flat = model.latent_design.project(latents[mask.to(latents.device)]).to(model.device, model.dtype)
        self.memory = model.to_memory(flat)  # (present units, m, hidden), in row-major order
        self.units = mask.flatten().long().cumsum(0).view_as(mask) - 1  # (row, segment) -> its row in self.memory
        self.out = [[given[row][s] if mask[row, s] else None for s in range(mask.shape[1])] for row in range(len(mask))]
        self.written_ids: dict[tuple[int, int], list[int]] = {}  # (row, segment) -> the token ids it wrote

    def embed(self, ids: list[int]) -> torch.Tensor:
        return self.decoder.embed_tokens(torch.tensor(ids, device=self.model.device)).to(self.memory.dtype)

    def forced(self, row: int, s: int) -> tuple[Optional[torch.Tensor], Optional[int]]:
        """What the row reads from segment s on until a segment to write starts: the prefixes (and the text of
        given segments) up to that segment's start token; with that segment (None: nothing left to write)."""
        pieces = []
        while s < self.mask.shape[1] and self.mask[row, s]:
            pieces += [self.memory[self.units[row, s]], self.embed([self.start])]
            if self.given[row][s] is None:
                return torch.cat(pieces), s
            pieces.append(self.embed(self.model.processor.tokenize([self.given[row][s]]).decoder_ids[0][:-1]))
            s += 1
        return None, None

    def run(self) -> list[list[str]]:
        rows, width = len(self.mask), self.memory.shape[-1]
        queues, segment = (list(x) for x in zip(*(self.forced(row, 0) for row in range(rows))))  # queue None: row done
        written = [[] for _ in range(rows)]
        alive = list(range(rows))  # the row at each batch position; a finished row leaves the batch and the KV cache
        past, cache = torch.zeros(rows, 0, dtype=torch.long), None  # the mask over every position read so far
        while True:
            kept = [i for i, row in enumerate(alive) if queues[row] is not None]
            if not kept:
                break
            if len(kept) < len(alive):
                alive, past = [alive[i] for i in kept], past[kept]
                if cache is not None:
                    cache.batch_select_indices(torch.tensor(kept, device=self.model.device))
            whole = 2 * sum(len(queues[row]) > 1 for row in alive) >= len(alive)
            step = max(len(queues[row]) for row in alive) if whole else 1
            embeds = torch.zeros(len(alive), step, width, device=self.model.device)
            step_mask = torch.zeros(len(alive), step, dtype=torch.long)
            for i, row in enumerate(alive):
                fed, queues[row] = queues[row][:step], queues[row][step:]
                embeds[i, step - len(fed) :], step_mask[i, step - len(fed) :] = fed, 1
            positions = (past.sum(dim=1, keepdim=True) + step_mask.cumsum(dim=1) - 1).clamp(min=0)
            past = torch.cat([past, step_mask], dim=1)
            logits, cache = self.decoder.step(embeds, past.to(self.model.device), positions.to(self.model.device), cache)
            for i, row in enumerate(alive):
                if not len(queues[row]):  # read all it had queued: its next token
                    queues[row], segment[row] = self.advance(row, segment[row], written[row], logits[i : i + 1].float())
        return [[t for t in row if t is not None] for row in self.out]

    def advance(self, row: int, s: int, written: list[int], logits: torch.Tensor) -> tuple[Optional[torch.Tensor], Optional[int]]:
        """The row's next token; -> what it reads next and the segment it then writes (None, None: row done)."""
        token = int(next_tokens(self.processors, torch.tensor([written], dtype=torch.long, device=logits.device), logits, self.sample))
        if token != self.eos:
            written.append(token)
            if len(written) < self.limit:
                return self.embed([token]), s
        self.out[row][s] = self.model.processor.batch_decode(torch.tensor([written]))[0]
        self.written_ids[row, s] = list(written)
        written.clear()
        following, s = self.forced(row, s + 1)
        fed = [self.embed([token])] if token != self.eos else []  # a segment cut at the limit: its last token is read too
        return (torch.cat(fed + [following]) if following is not None else None), s


def strategy_for(config) -> DecodingStrategy:
    """The decoding an autoencoder was trained for: one stream per text, reading the previous segments' text, or not."""
    if config.decoder_stream:
        return StreamDecoding()
    if config.decoder_plan:
        return PlanDecoding()
    return ContextualDecoding() if config.decoder_context else ParallelDecoding()


def decode_with_settings(autoencoder, encoded, decoding: DecodingConfig, generator: torch.Generator, batch_size: int,
                         joined: bool = True, fixed=None, sources=None) -> list[str] | list[list[str]]:
    """The autoencoder's decoding with `decoding` (reading `sources` where it has source_context); top-p sampling
    draws from a seed taken from `generator` (repeatable with the pipeline's seed) on a forked global RNG (which
    `generate` samples from)."""
    def run():
        return autoencoder.decode(encoded, batch_size=batch_size, joined=joined, fixed=fixed, sources=sources,
                                  **decoding.generate_kwargs())

    if decoding.top_p is None:
        return run()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    devices = [autoencoder.device] if autoencoder.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        return run()
