"""Generation benchmark on ROCStories: samplers side by side, and latentdlm vs an autoregressive LM.

    python benchmarks/generation.py [--autoencoder DIR | --autoencoder-minutes 12] [--diffusion-minutes 8]

1. Trains (or reuses) a segment-mode `tiny` autoencoder on rocstories/train.jsonl, then a latent DiT on
   the encoded stories (each in its own process, one torch job on the cores at a time).
2. Samples with DDPM-250, DDIM-50 and DPM-Solver++-20: seconds per paragraph and quality against
   rocstories/dev.jsonl (MAUVE on MiniLM features, diversity, memorization, distinct-n). The same
   scores for other dev stories (the human ceiling) and for the autoencoder's reconstructions of them
   (the ceiling of this decoder) show where quality is lost.
3. Trains a GPT-2-style causal LM with about the parameter count of autoencoder-decoder side + DiT,
   on the same stories, with the same tokenizer, for the same CPU minutes as both latentdlm stages
   together; scores it the same way.
4. Paragraphs per second for both at batch 1 (latency) and batch 32 (throughput).

Results: benchmarks/results/generation.json and generation.png.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from autoencoder import run_mode  # noqa: E402

from latentdlm.data.sources import data_root, load_texts  # noqa: E402
from latentdlm.evaluation.generation import generation_metrics, sentence_features  # noqa: E402

SAMPLERS = [("ddpm", 250), ("ddim", 50), ("dpm", 20)]
MAX_TOKENS = 128  # a ROCStories story is ~60 tokens of the 8k BPE


def run_cli(args: list[str], log: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "latentdlm.cli", *args], capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"`latentdlm {args[0]}` failed, see {log}:\n{proc.stderr[-2000:]}")


def last_record(run: Path) -> dict:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    last = [r for r in records if "loss" in r][-1]
    return {"train_minutes": last["train_minutes"], "steps": last["step"], "final_loss": last["loss"]}


def train_diffusion(autoencoder: Path, minutes: float, limit: int, work: Path) -> dict:
    train = data_root() / "rocstories" / "train.jsonl"
    print(f"== latent DiT, {minutes} min", flush=True)
    run_cli(["train-diffusion", "--config", str(ROOT / "configs/diffusion/roc_uncond.yaml"),
             f"autoencoder={autoencoder}", f"data.source={train}", f"data.limit={limit}",
             f"training.output_dir={work / 'diffusion'}", "training.overwrite_output_dir=true",
             f"training.max_minutes={minutes}", "training.eval_every=0", "training.save_every=0"], work / "diffusion.log")
    return last_record(work / "diffusion")


def reused_autoencoder(folder: Path) -> dict:
    """Training time and final eval of an autoencoder trained earlier (the baseline's budget needs it)."""
    run = folder.resolve().parent
    try:
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        final = json.loads((run / "final_metrics.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SystemExit(f"cannot tell how long {folder} trained (need metrics.jsonl and final_metrics.json beside it): {exc}")
    last = [r for r in records if "train_minutes" in r][-1]
    return {"reused": str(folder), "train_minutes": last["train_minutes"], "steps": last["step"],
            "final_bleu": final["bleu"], "final_exact_match": final["exact_match"]}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# ---- the autoregressive baseline --------------------------------------------------------------
def build_baseline(tokenizer, target_params: int, width: int = 256, heads: int = 4):
    """A GPT-2 of `width` whose depth brings it closest to `target_params`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    def make(layers):
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=MAX_TOKENS, n_embd=width, n_layer=layers, n_head=heads,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return GPT2LMHeadModel(config)

    layers = min(range(1, 25), key=lambda n: abs(sum(p.numel() for p in make(n).parameters()) - target_params))
    return make(layers)


def story_ids(tokenizer, texts: list[str]) -> list[list[int]]:
    ids = tokenizer(texts, add_special_tokens=False, truncation=True, max_length=MAX_TOKENS - 2)["input_ids"]
    return [[tokenizer.bos_token_id, *x, tokenizer.eos_token_id] for x in ids]


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


def train_baseline(model, tokenizer, texts: list[str], minutes: float, batch_size: int = 32) -> dict:
    """Plain next-token training of the causal LM baseline."""
    ids = story_ids(tokenizer, texts)
    pad = tokenizer.pad_token_id

    def batch_loss(rng):
        batch = rng.sample(ids, batch_size)
        width = max(map(len, batch))
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch])
        mask = input_ids != pad
        return model(input_ids=input_ids, attention_mask=mask, labels=input_ids.masked_fill(~mask, -100)).loss

    return train_for_minutes(model, batch_loss, minutes)


@torch.no_grad()
def baseline_generate(model, tokenizer, count: int, batch_size: int, seed: int) -> list[str]:
    torch.manual_seed(seed)
    texts = []
    for start in range(0, count, batch_size):
        size = min(batch_size, count - start)
        prompt = torch.full((size, 1), tokenizer.bos_token_id)
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_p=0.95,
                             max_new_tokens=MAX_TOKENS - 1, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts += [t.strip() for t in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
    return texts


def speed(generate, batch_size: int, repeats: int) -> float:
    """Paragraphs per second at `batch_size` (one warm-up call first)."""
    generate(batch_size, 0)
    _, seconds = timed(lambda: [generate(batch_size, seed) for seed in range(1, repeats + 1)])
    return batch_size * repeats / seconds


# ---- the report --------------------------------------------------------------------------------
def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    rows = results["samplers"]
    names = [f"{r['scheduler']}-{r['steps']}" for r in rows]
    axes[0].bar(names, [r["seconds_per_paragraph"] for r in rows], color="tab:blue")
    axes[0].set(ylabel="seconds per paragraph (batch 32)", title="Samplers: time", yscale="log")
    ceilings = results["ceilings"]
    axes[1].bar(names + ["AR baseline", "AE recon.", "human"],
                [r["mauve"] for r in rows] + [results["baseline"]["mauve"], ceilings["autoencoder_reconstructions"]["mauve"],
                                              ceilings["human"]["mauve"]],
                color=["tab:blue"] * len(rows) + ["tab:orange", "tab:gray", "black"])
    axes[1].set(ylabel="MAUVE vs ROCStories dev (MiniLM)", title="Quality", ylim=(0, 1))
    axes[1].tick_params(axis="x", labelrotation=30)
    labels, x = ["batch 1", "batch 32"], range(2)
    ours = [results["speed"]["latentdlm"][k] for k in ("batch_1", "batch_32")]
    theirs = [results["speed"]["baseline"][k] for k in ("batch_1", "batch_32")]
    axes[2].bar([i - 0.2 for i in x], ours, width=0.4, label="latentdlm (DPM-20)")
    axes[2].bar([i + 0.2 for i in x], theirs, width=0.4, label="AR baseline")
    axes[2].set_xticks(list(x), labels)
    axes[2].set(ylabel="paragraphs / second", title="Speed", yscale="log")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--autoencoder", help="reuse a trained segment-mode autoencoder folder")
    parser.add_argument("--autoencoder-minutes", type=float, default=12)
    parser.add_argument("--diffusion-minutes", type=float, default=8)
    parser.add_argument("--limit", type=int, default=20000, help="training stories encoded for the DiT and the baseline")
    parser.add_argument("--num-samples", type=int, default=200, help="paragraphs per system, and dev references")
    parser.add_argument("--speed-repeats", type=int, default=3)
    parser.add_argument("--work-dir", default=str(ROOT / "runs/benchmark-generation"))
    args = parser.parse_args()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)
    results = {"machine": "2 CPU cores", "data": "rocstories/train.jsonl -> rocstories/dev.jsonl", "num_samples": args.num_samples}

    if args.autoencoder:
        autoencoder = Path(args.autoencoder)
        results["autoencoder"] = reused_autoencoder(autoencoder)
    else:
        summary = run_mode("segment", args.autoencoder_minutes, work, eval_every=0, max_eval=100, extra=[])
        results["autoencoder"] = {k: summary[k] for k in ("train_minutes", "steps", "final_bleu", "final_exact_match")}
        autoencoder = work / "segment" / "autoencoder"
    results["diffusion"] = train_diffusion(autoencoder, args.diffusion_minutes, args.limit, work)

    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = LatentDiffusionTextPipeline.from_pretrained(work / "diffusion" / "pipeline")
    train_texts = load_texts(str(data_root() / "rocstories" / "train.jsonl"), limit=args.limit)
    dev = load_texts(str(data_root() / "rocstories" / "dev.jsonl"), limit=2 * args.num_samples)
    references, held_out = dev[: args.num_samples], dev[args.num_samples :]
    reference_features = sentence_features(references)

    def score(texts):
        return generation_metrics(texts, references, train_texts, reference_features)

    # where quality is lost: other human stories (the ceiling) and the autoencoder's reconstructions of
    # them (the best the DiT can reach through this decoder)
    results["ceilings"] = {"human": score(held_out), "autoencoder_reconstructions": score(pipe.autoencoder.reconstruct(held_out))}
    print(json.dumps(results["ceilings"]), flush=True)

    results["samplers"], samples = [], {}
    for name, steps in SAMPLERS:
        print(f"== sampling: {name} {steps} steps", flush=True)
        output, seconds = timed(lambda: pipe(num_samples=args.num_samples, num_inference_steps=steps, scheduler=name, seed=0))
        samples[f"{name}-{steps}"] = output.texts[:5]
        results["samplers"].append({"scheduler": name, "steps": steps, "seconds_per_paragraph": seconds / args.num_samples,
                                    **score(output.texts)})
        print(json.dumps(results["samplers"][-1]), flush=True)

    decoder_side = sum(p.numel() for m in (pipe.autoencoder.decoder, pipe.autoencoder.to_memory) for p in m.parameters())
    denoiser = sum(p.numel() for p in pipe.denoiser.parameters())
    tokenizer = pipe.autoencoder.decoder_tokenizer
    baseline = build_baseline(tokenizer, decoder_side + denoiser)
    budget = results["autoencoder"].get("train_minutes", 0) + results["diffusion"]["train_minutes"]
    print(f"== AR baseline: {sum(p.numel() for p in baseline.parameters()) / 1e6:.1f} M parameters "
          f"(latentdlm decoder side + DiT: {(decoder_side + denoiser) / 1e6:.1f} M), {budget:.1f} min", flush=True)
    results["baseline"] = {
        "parameters": sum(p.numel() for p in baseline.parameters()), "latentdlm_parameters": decoder_side + denoiser,
        "layers": baseline.config.n_layer, **train_baseline(baseline, tokenizer, train_texts, budget),
    }
    baseline_texts = baseline_generate(baseline, tokenizer, args.num_samples, 32, seed=0)
    samples["baseline"] = baseline_texts[:5]
    results["baseline"].update(score(baseline_texts))

    print("== speed at batch 1 and 32", flush=True)
    ours = lambda size, seed: pipe(num_samples=size, num_inference_steps=20, scheduler="dpm", seed=seed, show_progress=False)  # noqa: E731
    theirs = lambda size, seed: baseline_generate(baseline, tokenizer, size, size, seed)  # noqa: E731
    results["speed"] = {
        name: {"batch_1": speed(fn, 1, args.speed_repeats * 4), "batch_32": speed(fn, 32, args.speed_repeats)}
        for name, fn in (("latentdlm", ours), ("baseline", theirs))
    }
    results["examples"] = samples
    ddpm, dpm = results["samplers"][0], results["samplers"][-1]
    results["targets"] = {
        "dpm20_mauve_within_0.02_of_ddpm250": abs(ddpm["mauve"] - dpm["mauve"]) <= 0.02,
        "dpm20_speedup_over_ddpm250": ddpm["seconds_per_paragraph"] / dpm["seconds_per_paragraph"],
        "mauve_at_least_baseline": dpm["mauve"] >= results["baseline"]["mauve"],
        "batch_1_speedup": results["speed"]["latentdlm"]["batch_1"] / results["speed"]["baseline"]["batch_1"],
        "batch_32_speedup": results["speed"]["latentdlm"]["batch_32"] / results["speed"]["baseline"]["batch_32"],
    }
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "generation.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "generation.png")
    print(json.dumps(results["targets"], indent=2))


if __name__ == "__main__":
    main()
