"""`latentdlm summarize`: source texts -> generated targets with a text-conditioned pipeline.

Each source gets `num_candidates` samples (different noise); with more than two, the minimum-Bayes-
risk candidate (the one with the highest mean ROUGE-L F1 against the others) is kept.
"""

from __future__ import annotations

from typing import Optional, Sequence

from latentdlm.autoencoder.decoding import DecodingConfig
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.summarization import minimum_bayes_risk


def summarize(
    pipe, documents: Sequence[str], num_candidates: int = 1, num_inference_steps: int = 20,
    guidance_scale: float = 1.0, guidance_rescale: float = 0.0, scheduler: Optional[str] = None,
    seed: int = 0, batch_size: int = 32, show_progress: bool = True, decoding: Optional[DecodingConfig | dict] = None,
    guidance_method: str = "cfg",
) -> list[str]:
    """`decoding`: the decoder's settings over the pipeline's defaults (as in the pipeline's call)."""
    if pipe.condition_encoder is None:
        raise LatentDLMError("this pipeline was trained without a source text condition: it cannot summarize "
                             "(train one with data.condition_column, e.g. configs/diffusion/xsum_cond.yaml)")
    if num_candidates < 1:
        raise LatentDLMError(f"num_candidates must be at least 1, got {num_candidates}")
    empty = [i for i, doc in enumerate(documents) if not doc.strip()]
    if empty:
        raise LatentDLMError(f"{len(empty)} empty document(s), first at row {empty[0]}: nothing to summarize")
    repeated = [doc for doc in documents for _ in range(num_candidates)]  # a document's candidates side by side
    texts = pipe(
        num_samples=len(repeated), conditions=repeated, num_inference_steps=num_inference_steps, scheduler=scheduler,
        seed=seed, guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, batch_size=batch_size,
        guidance_method=guidance_method, show_progress=show_progress, decoding=decoding,
    ).texts
    candidates = [texts[i : i + num_candidates] for i in range(0, len(texts), num_candidates)]
    return [group[minimum_bayes_risk(group)] for group in candidates]
