"""Reconstruction quality: corpus BLEU (sacrebleu) and exact-match rate."""

from __future__ import annotations

from typing import Sequence

import sacrebleu

from latentdlm.errors import LatentDLMError


def _normalise(text: str) -> str:
    return " ".join(text.split())


def reconstruction_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """{"bleu": corpus BLEU 0..100, "exact_match": fraction equal up to whitespace}."""
    if len(references) != len(hypotheses):
        raise LatentDLMError(f"{len(references)} references but {len(hypotheses)} reconstructions")
    if not references:
        raise LatentDLMError("no texts to score")
    bleu = sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score
    exact = sum(_normalise(r) == _normalise(h) for r, h in zip(references, hypotheses)) / len(references)
    return {"bleu": bleu, "exact_match": exact}
