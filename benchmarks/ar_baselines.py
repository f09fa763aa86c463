"""The autoregressive baselines: a GPT-2-style causal LM of latentdlm's size for the generation benchmark,
a GPT-2-style decoder cross-attending to frozen condition-encoder states for the summarization benchmark,
and their shared training loop (AdamW for a number of wall-clock minutes)."""

from __future__ import annotations

import random
import time

import torch
from tqdm.auto import tqdm

MAX_TOKENS = 128  # a ROCStories story is ~60 tokens of the 8k BPE
MAX_TARGET_TOKENS = 48  # a summary


def parameters(module: torch.nn.Module, trained: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trained)


def closest_depth(make, target_params: int) -> int:
    """The depth (1 to 24) at which `make(depth)` has closest to `target_params` parameters."""
    return min(range(1, 25), key=lambda n: abs(parameters(make(n)) - target_params))


def padded(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their mask (True where not padding)."""
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    return ids, ids != pad


def train_for_minutes(model, batch_loss, minutes: float) -> dict:
    """The AR baselines' loop: AdamW (lr 5e-4, 100 warmup steps, then constant) for `minutes` of wall
    time; `batch_loss(rng)` draws a batch with `rng` and returns its loss."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=0.01)
    warmup = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 100))
    rng, step, start, losses = random.Random(0), 0, time.monotonic(), []
    model.train()
    bar = tqdm(desc="AR baseline", unit="step")
    while time.monotonic() - start < minutes * 60:
        loss = batch_loss(rng)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        warmup.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss.item())
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return {"train_minutes": (time.monotonic() - start) / 60, "steps": step, "final_loss": sum(losses[-50:]) / len(losses[-50:])}


# ---- stories: a causal LM ------------------------------------------------------------------------
def build_baseline(tokenizer, target_params: int, width: int = 256, heads: int = 4):
    """A GPT-2 of `width` whose depth brings it closest to `target_params`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(layers):
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=MAX_TOKENS, n_embd=width, n_layer=layers, n_head=heads,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(config)

    return make(closest_depth(make, target_params))


def train_baseline(model, tokenizer, texts: list[str], minutes: float, batch_size: int = 32) -> dict:
    """Plain next-token training of the causal LM baseline."""
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=MAX_TOKENS - 2)["input_ids"]
    ids = [[tokenizer.bos_token_id, *x, tokenizer.eos_token_id] for x in ids]

    def batch_loss(rng):
        input_ids, mask = padded(rng.sample(ids, batch_size), tokenizer.pad_token_id)
        return model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(~mask, -100)).loss

    return train_for_minutes(model, batch_loss, minutes)


@torch.no_grad()
def baseline_generate(model, tokenizer, count: int, batch_size: int, seed: int) -> list[str]:
    torch.manual_seed(seed)
    texts = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        prompt = torch.full((size, 1), tokenizer.bos_token_id)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_p=0.95, top_k=0,
                             max_new_tokens=MAX_TOKENS - 1, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts += [t.strip() for t in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
    return texts


# ---- summaries: a decoder on frozen condition states ------------------------------------------------
class ARSummarizer(torch.nn.Module):
    """A GPT-2-style decoder cross-attending to (projected) frozen condition-encoder states."""

    def __init__(self, vocab_size: int, bos: int, eos: int, condition_dim: int, layers: int, width: int = 256, heads: int = 4):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=vocab_size, n_positions=MAX_TARGET_TOKENS + 2, n_embd=width, n_layer=layers, n_head=heads,
                            add_cross_attention=True, bos_token_id=bos, eos_token_id=eos,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.project = torch.nn.Linear(condition_dim, width)
        self.lm = GPT2LMHeadModel(config)

    def forward(self, input_ids, attention_mask, states, states_mask, labels=None):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=self.project(states),
                       encoder_attention_mask=states_mask, labels=labels)

    @torch.no_grad()
    def greedy(self, states, states_mask, pad: int) -> torch.Tensor:
        """Greedy decoding (no cache: targets are short), ids after the start token."""
        config = self.lm.config
        ids = torch.full((states.shape[0], 1), config.bos_token_id)
        done = torch.zeros(states.shape[0], dtype=torch.bool)
        for _ in range(MAX_TARGET_TOKENS):
            logits = self(ids, torch.ones_like(ids), states, states_mask).logits[:, -1]
            nxt = torch.where(done, pad, logits.argmax(-1))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == config.eos_token_id
            if done.all():
                break
        return ids[:, 1:]


def ar_summarizer(pipe, train_pairs, test_docs, minutes: float, batch_size: int = 32) -> tuple[dict, list[str]]:
    """An ARSummarizer on `pipe`'s condition encoder and target tokenizer, as many parameters as the
    pipeline trains, trained for `minutes` on (document, summary) pairs; its greedy summaries of `test_docs`."""
    condition, tokenizer = pipe.condition_encoder, pipe.autoencoder.processor.decoder_tokenizer
    condition.eval()
    target = parameters(pipe.denoiser, trained=True) + sum(parameters(m) for m in (pipe.autoencoder.decoder, pipe.autoencoder.to_memory))

    def make(layers):
        return ARSummarizer(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, condition.hidden_size, layers)

    layers = closest_depth(make, target)  # every ARSummarizer parameter is trained
    torch.manual_seed(0)
    model = make(layers)
    pad = tokenizer.pad_token_id
    targets = tokenizer([t for _, t in train_pairs], add_special_tokens=False, truncation=True, max_length=MAX_TARGET_TOKENS)["input_ids"]

    def batch_loss(rng):
        rows = rng.sample(range(len(train_pairs)), batch_size)
        states = condition.encode([train_pairs[i][0] for i in rows], warn=False)
        ids, mask = padded([[tokenizer.bos_token_id, *targets[i], tokenizer.eos_token_id] for i in rows], pad)
        return model(ids, mask.long(), states["condition_states"], states["condition_mask"].long(), ids.masked_fill(~mask, -100)).loss

    trained = train_for_minutes(model, batch_loss, minutes)
    outputs = []
    for i in range(0, len(test_docs), 50):
        states = condition.encode(test_docs[i : i + 50], warn=False)
        ids = model.greedy(states["condition_states"], states["condition_mask"].long(), pad)
        outputs += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    info = {"parameters": parameters(model, trained=True), "latentdlm_parameters": target, "layers": layers, **trained}
    return info, outputs
