"""ROUGE for generated summaries (rouge-score with stemming; ROUGE-Lsum on sentence-split lines)
and the minimum-Bayes-risk choice among several candidates."""

from __future__ import annotations

from typing import Sequence

from rouge_score import rouge_scorer

from latentdlm.data.segmentation import SentenceSegmenter
from latentdlm.errors import LatentDLMError

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def _lines(text: str, segmenter: SentenceSegmenter) -> str:
    return "\n".join(segmenter.split(text))  # rougeLsum reads one sentence per line


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean F1 × 100 of ROUGE-1/2/L/Lsum over the pairs."""
    if len(predictions) != len(references):
        raise LatentDLMError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        raise LatentDLMError("no predictions to score")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    segmenter = SentenceSegmenter()
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        scores = scorer.score(_lines(reference, segmenter), _lines(prediction, segmenter))
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    return {name: 100 * total / len(predictions) for name, total in totals.items()}


def pair_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> list[float]:
    """ROUGE-L F1 x 100 of each pair (which outputs are good, which bad)."""
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return [100 * scorer.score(reference, prediction)["rougeL"].fmeasure for prediction, reference in zip(predictions, references)]


def minimum_bayes_risk(candidates: Sequence[str]) -> int:
    """The index of the candidate that agrees most with the others (mean ROUGE-L F1): the MBR choice
    under ROUGE-L utility. Outliers lose; with one or two candidates the first wins ties."""
    if len(candidates) < 3:
        return 0
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    agreement = [
        sum(scorer.score(other, candidate)["rougeL"].fmeasure for j, other in enumerate(candidates) if j != i)
        for i, candidate in enumerate(candidates)
    ]
    return max(range(len(candidates)), key=agreement.__getitem__)
