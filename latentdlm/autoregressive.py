"""Token-by-token decoding of a causal LM in which finished rows stop costing.

transformers' `generate` keeps every row of a batch in every step until the longest has finished (a finished
row keeps computing padding), so a batch of 32 stories costs as many full-batch steps as its longest story.
`generate_tokens` drops each row from the batch, and from the KV cache, as soon as it writes eos or reaches the
limit: a batch costs the tokens it writes. It samples as `generate` does (the same logits processors, in the
same order, `torch.multinomial` on the global RNG); beam search stays with `generate`. latentdlm's causal
decoders and the autoregressive peer of the benchmarks decode with it alike.
"""

from __future__ import annotations

import inspect
from typing import Optional

import torch


def logits_processors(kwargs: dict):
    """transformers' own processors for the generate settings a DecodingConfig gives, in generate's order."""
    from transformers.generation.logits_process import (
        LogitsProcessorList, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    if kwargs.get("repetition_penalty", 1.0) != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(kwargs["repetition_penalty"]))
    if kwargs.get("no_repeat_ngram_size", 0):
        processors.append(NoRepeatNGramLogitsProcessor(kwargs["no_repeat_ngram_size"]))
    if kwargs.get("do_sample"):
        if kwargs.get("temperature", 1.0) != 1.0:
            processors.append(TemperatureLogitsWarper(kwargs["temperature"]))
        if kwargs.get("top_p") is not None:
            processors.append(TopPLogitsWarper(kwargs["top_p"]))
    return processors


def step_arguments(model) -> tuple[str, dict]:
    """The model's name for the KV cache (transformers 5 renamed past_key_values to cache) and, where it has
    one, the argument that computes the last position's logits only."""
    accepted = inspect.signature(model.forward).parameters
    return ("cache" if "cache" in accepted else "past_key_values"), ({"logits_to_keep": 1} if "logits_to_keep" in accepted else {})


def runner(model):
    """The module a decoding step runs: a peft model's base (its LoRA layers in it, merged or not), else the model."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def next_tokens(processors, written: torch.Tensor, logits: torch.Tensor, sample: bool) -> torch.Tensor:
    """Each row's next token from its last logits (n, vocab), given what it wrote so far (n, t)."""
    scores = processors(written, logits.float())
    return torch.multinomial(scores.softmax(-1), 1).squeeze(1) if sample else scores.argmax(-1)


@torch.no_grad()
def generate_tokens(model, embeds: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int, eos_token_id: Optional[int],
                    pad_token_id: int, history: Optional[torch.Tensor] = None, **rule) -> torch.Tensor:
    """Token ids (B, T) each row writes after its input vectors `embeds` (B, L, hidden; `attention_mask` (B, L) 0 on
    padding anywhere, positions counting real vectors only), each ending at eos (kept; None: none) or after `max_new_tokens`,
    padded with `pad_token_id`. `rule`: generate's sampling settings (DecodingConfig.generate_kwargs, num_beams 1);
    `history` (B, h): token ids the repetition rules also count (a prompt's), none by default."""
    if rule.get("num_beams", 1) != 1:
        raise ValueError("generate_tokens decodes one beam per row: use transformers' generate for beam search")
    model = runner(model)
    cache_name, keep = step_arguments(model)
    processors, sample = logits_processors(rule), rule.get("do_sample", False)
    device, rows = embeds.device, embeds.shape[0]
    out = torch.full((rows, max_new_tokens), pad_token_id, dtype=torch.long)
    written = torch.zeros(rows, 0, dtype=torch.long, device=device) if history is None else history.to(device)
    alive = torch.arange(rows, device=device)  # the batch row of each row still writing
    mask = attention_mask.to(device)
    positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
    inputs, cache = embeds, None
    for step in range(max_new_tokens):
        result = model(inputs_embeds=inputs, attention_mask=mask, position_ids=positions, use_cache=True, **{cache_name: cache}, **keep)
        cache = getattr(result, "cache", None) or result.past_key_values
        token = next_tokens(processors, written, result.logits[:, -1], sample)
        out[alive.cpu(), step] = token.cpu()
        written = torch.cat([written, token[:, None]], dim=1)
        going = token != eos_token_id if eos_token_id is not None else torch.ones_like(token, dtype=torch.bool)
        if step + 1 == max_new_tokens or not going.any():
            break
        if not going.all():  # finished rows leave the batch and the cache
            kept = going.nonzero().squeeze(1)
            cache.batch_select_indices(kept)
            alive, written, token, mask, positions = alive[kept], written[kept], token[kept], mask[kept], positions[kept]
        inputs = model.get_input_embeddings()(token[:, None]).to(embeds.dtype)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
    return out[:, : step + 1]
