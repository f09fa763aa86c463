"""Reconstruction quality: corpus BLEU (sacrebleu), exact-match rate, and meaning (sentence-embedding cosine)."""

from __future__ import annotations

from typing import Optional, Sequence

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


def meaning_similarity(references: Sequence[str], hypotheses: Sequence[str], feature_model: Optional[str] = None) -> float:
    """Mean cosine between the sentence embeddings of each reference and its reconstruction (MiniLM by
    default, "mpnet" for all-mpnet-base-v2): the meaning kept, whatever the wording."""
    from latentdlm.evaluation.generation import mean_cosine, sentence_features

    if len(references) != len(hypotheses) or not references:
        raise LatentDLMError(f"{len(references)} references but {len(hypotheses)} reconstructions")
    return mean_cosine(sentence_features(references, feature_model), sentence_features(hypotheses, feature_model))
