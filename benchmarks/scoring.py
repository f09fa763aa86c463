"""The ROCStories splits (benchmarks/generation.py's docstring), the story scorer, the plan's own measures
(nearest-sentence retrieval, consecutive-latent cosine) and the speed measurement that the benchmarks share."""

from __future__ import annotations

import functools
from types import SimpleNamespace

from runner import timed

from latentdlm.data.sources import data_root, load_texts
from latentdlm.evaluation.generation import (
    coherence_ratio, consecutive_cosine, distinct_n, diversity, glued_random_sentences, mauve_seeds, memorization,
    repeated_ngram_rate, sentence_features,
)

TRAIN_LIMIT, NUM_EVAL = 4500, 500


@functools.cache
def rocstories() -> SimpleNamespace:
    """The splits (.train, .validation, .test, .human), read once per process by the first part that needs them."""
    folder = data_root() / "rocstories"
    stories, dev = load_texts(str(folder / "train.jsonl")), load_texts(str(folder / "dev.jsonl"), limit=2 * NUM_EVAL)
    return SimpleNamespace(train=stories[:TRAIN_LIMIT], validation=stories[TRAIN_LIMIT : TRAIN_LIMIT + NUM_EVAL],
                           test=dev[:NUM_EVAL], human=dev[NUM_EVAL:])


class Scorer:
    """Scores texts against one reference set: MAUVE (mpnet, MiniLM), coherence ratio, LD4LG's set diversity, repetition."""

    def __init__(self, references: list[str], training_texts: list[str]):
        from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter

        segmenter = SentenceSegmenter(SegmentationConfig(mode="sentences", max_segments=None))
        self.split = lambda text: segmenter.split(text)  # noqa: E731
        self.training_texts = training_texts
        self.features = {"mpnet": sentence_features(references, "mpnet"), "minilm": sentence_features(references)}
        self.real_cosine = consecutive_cosine(references, self.split)
        self.random_cosine = consecutive_cosine(glued_random_sentences(references, self.split, len(references)), self.split)
        self.real_diversity = diversity(references)  # LD4LG's set diversity of the real stories themselves

    def __call__(self, texts: list[str]) -> dict:
        mpnet = mauve_seeds(self.features["mpnet"], sentence_features(texts, "mpnet"))
        minilm = mauve_seeds(self.features["minilm"], sentence_features(texts))
        cosine = consecutive_cosine(texts, self.split)
        return {
            "mauve_mpnet": mpnet["mean"], "mauve_mpnet_std": mpnet["std"],
            "mauve_minilm": minilm["mean"], "mauve_minilm_std": minilm["std"],
            "coherence_ratio": coherence_ratio(cosine, self.random_cosine, self.real_cosine),
            "diversity_set": diversity(texts), "repeated_4gram_rate": repeated_ngram_rate(texts),
            "memorization": memorization(texts, self.training_texts),
            "distinct_2": distinct_n(texts, 2), "mean_words": sum(len(t.split()) for t in texts) / len(texts),
        }


def speed(generate, batch_size: int, repeats: int) -> float:
    """Paragraphs per second at `batch_size` (one warm-up call first)."""
    generate(batch_size, 0)
    _, seconds = timed(lambda: [generate(batch_size, seed) for seed in range(1, repeats + 1)])
    return batch_size * repeats / seconds


def heldout_halves(run) -> tuple[list[str], list[str], list[str]]:
    """(validation, test, training) paragraphs of a DiT run folder: its `heldout_texts`, in the order they
    were drawn, split in halves (choose on the first, score once on the second), and the texts it trained on."""
    from latentdlm.config import load_config
    from latentdlm.data.sources import load_texts
    from latentdlm.training.diffusion import DiffusionTrainConfig, heldout_indices

    cfg = load_config(DiffusionTrainConfig, run / "train_config.yaml", [])
    texts = load_texts(cfg.data.source, cfg.data.column, cfg.data.split, cfg.data.limit)
    order = heldout_indices(len(texts), cfg.heldout_texts, cfg.training.seed)
    held, half = set(order), len(order) // 2
    return [texts[i] for i in order[:half]], [texts[i] for i in order[half:]], [t for i, t in enumerate(texts) if i not in held]


def unit_vectors(latents, segment_mask):
    """(N, S, k, d) latents -> (units, k*d) unit vectors of the real segments, in text order."""
    import torch.nn.functional as F

    return F.normalize(latents[segment_mask.bool()].flatten(1).float(), dim=-1)


def consecutive_latent_cosine(latents, segment_mask) -> float:
    """Mean cosine between each segment's latent and the next one's in the same text."""
    import torch.nn.functional as F

    pairs = segment_mask[:, 1:].bool() & segment_mask[:, :-1].bool()
    cosines = F.cosine_similarity(latents[:, 1:].flatten(2).float(), latents[:, :-1].flatten(2).float(), dim=-1)
    return float(cosines[pairs].mean())


def segment_bank(pipe, texts: list[str]) -> tuple:
    """Every segment of `texts` and its unit latent vector (concept latents from the embedding cache)."""
    from latentdlm.autoencoder.latent_cache import cached_unit_latents

    segments = [u for units in pipe.autoencoder.processor.split_units(texts) for u in units]
    if pipe.autoencoder.fixed_latents:
        latents = cached_unit_latents(pipe.autoencoder, segments)[:]
        return segments, unit_vectors(latents[:, None], latents.new_ones(len(segments), 1))
    encoded = pipe.encode(texts)
    return segments, unit_vectors(encoded.latents, encoded.segment_mask)


def plan_retrieval(segments: list[str], bank, sampled) -> list[str]:
    """The plan alone: each segment of the DiT's `sampled` latents (output_type="latent") replaced by the
    nearest of the `segments` whose unit vectors are `bank` (cosine on the latents), no decoder involved."""
    nearest = (unit_vectors(sampled.latents, sampled.segment_mask) @ bank.T).argmax(dim=1).tolist()
    counts, texts, start = sampled.segment_mask.sum(dim=1).tolist(), [], 0
    for count in counts:
        texts.append(" ".join(segments[i] for i in nearest[start : start + count]))
        start += count
    return texts
