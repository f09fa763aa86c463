"""Generation benchmark on ROCStories: what makes the latent DiT learn in CPU minutes, samplers side by
side, and latentdlm against an autoregressive LM of the same size and CPU minutes.

    python benchmarks/generation.py --only PART [--only PART ...]     # parts, each merged into one JSON

Parts (run in this order; each reuses what the earlier ones saved under --work-dir):
  autoencoder  the segment-mode `tiny` autoencoder on the training stories (and `--robust-autoencoder`:
               the same with Gaussian latent noise, for the autoencoder-side arm)
  ablation     one factor at a time against the preset (same seed, data and DiT minutes): each arm
               trains a DiT, samples 500 stories with DPM-Solver++-20 and is scored on the VALIDATION
               stories (held out from training); the best arm (mpnet MAUVE) is the system reported
  decoding     the decoder's settings (no-repeat n-grams, repetition penalty, top-p, beams) on the best arm
  final        the TEST stories, once: DDPM-250 vs DPM-Solver++-20 (time, quality), the ceilings
               (held-out human stories, the autoencoder's own reconstructions)
  ar           a GPT-2-style causal LM of the same parameter count, same tokenizer, same stories, for
               the autoencoder + DiT minutes together; scored on the test stories
  speed        paragraphs/s at batch 1 and 32, latentdlm (DPM-20) and the AR model
  demo         `latentdlm demo` as a user runs it (the flagship preset; --demo-dir scores a finished one):
               its samples' repeated 4-gram rate

Quality: MAUVE against 500 reference stories on all-mpnet-base-v2 features (mean of 3 k-means seeds
with the std), MiniLM MAUVE beside it, and the coherence ratio (mean cosine of consecutive
sentences' MiniLM embeddings, 0 = stories glued from random real sentences, 1 = real stories).
Splits: training = rocstories/train.jsonl[:4500]; validation = train.jsonl[4500:5000]; test =
dev.jsonl[:500], with dev.jsonl[500:1000] as the human ceiling. Results: benchmarks/results/generation.json + .png.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
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
from latentdlm.evaluation.generation import (  # noqa: E402
    coherence_ratio, consecutive_cosine, distinct_n, diversity, glued_random_sentences, mauve_seeds, memorization,
    repeated_ngram_rate, sentence_features,
)
from latentdlm.training.loop import logged_minutes, read_metrics  # noqa: E402

RESULTS = ROOT / "benchmarks/results/generation.json"
TRAIN_LIMIT, NUM_EVAL = 4500, 500
MAX_TOKENS = 128  # a ROCStories story is ~60 tokens of the 8k BPE
# one factor at a time against the preset (configs/diffusion/roc_uncond.yaml)
ARMS = {
    "preset": [],
    "lr_1e-3": ["training.learning_rate=1e-3"],
    "noise_shift_2": ["objective.noise_shift=2"],
    "min_snr_5": ["objective.snr_gamma=5"],
    "epsilon": ["objective.prediction_type=epsilon"],
    "ema_0.99": ["ema_decay=0.99"],
    "no_self_conditioning": ["denoiser.self_conditioning=false"],  # one forward pass per step instead of two
    "ae_latent_noise": [],  # the preset DiT on the robust autoencoder
    "sqrt_schedule": ["objective.beta_schedule=sqrt"],
    "batch_32": ["training.batch_size=32"],
    "depth_4": ["denoiser.num_layers=4"],
}
DEFAULT_ARMS = list(ARMS)  # ~5.5 min each (4 min DiT + 500 samples scored); measured arms are skipped unless --rerun
DECODING = {  # greedy (the default) is the ablation arm's own score
    "no_repeat_3": {"no_repeat_ngram_size": 3},
    "top_p_0.9": {"top_p": 0.9},
}


# ---- plumbing -------------------------------------------------------------------------------------
def run_cli(args: list[str], log: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "latentdlm.cli", *args], capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"`latentdlm {args[0]}` failed, see {log}:\n{proc.stderr[-2000:]}")


def last_record(run: Path) -> dict:
    """Steps, final loss and training minutes of a run, summed over its resumed parts (each restarts the clock)."""
    records = [r for r in read_metrics(run) if "loss" in r]
    return {"train_minutes": logged_minutes(records), "steps": records[-1]["step"], "final_loss": records[-1]["loss"]}


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def load_results(path: Path = RESULTS) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def write_results(path: Path, results: dict, summarize, draw) -> None:
    """The merged results with their fresh `summary`, and the plot beside them (.png)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    results["summary"] = summarize(results)
    path.write_text(json.dumps(results, indent=2))
    draw(results, path.with_suffix(".png"))


def save_results(results: dict) -> None:
    write_results(RESULTS, results, summary, plot)


def run_parts(parts: dict, names: list[str], args, results: dict, splits, save) -> None:
    """Each named part in order, the merged results saved after each (a crash keeps the parts done)."""
    for name in names:
        print(f"==== part {name}", flush=True)
        parts[name](args, results, splits)
        save(results)


class Splits:
    def __init__(self):
        rocstories = data_root() / "rocstories"
        stories = load_texts(str(rocstories / "train.jsonl"))
        dev = load_texts(str(rocstories / "dev.jsonl"), limit=2 * NUM_EVAL)
        self.train, self.validation = stories[:TRAIN_LIMIT], stories[TRAIN_LIMIT : TRAIN_LIMIT + NUM_EVAL]
        self.test, self.human = dev[:NUM_EVAL], dev[NUM_EVAL:]


class Scorer:
    """Scores texts against one reference set: MAUVE (mpnet, MiniLM), coherence ratio, repetition."""

    def __init__(self, references: list[str], training_texts: list[str]):
        from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter

        segmenter = SentenceSegmenter(SegmentationConfig(mode="sentences", max_segments=None))
        self.split = lambda text: segmenter.split(text)  # noqa: E731
        self.training_texts = training_texts
        self.features = {"mpnet": sentence_features(references, "mpnet"), "minilm": sentence_features(references)}
        self.real_cosine = consecutive_cosine(references, self.split)
        self.random_cosine = consecutive_cosine(glued_random_sentences(references, self.split, len(references)), self.split)

    def __call__(self, texts: list[str]) -> dict:
        mpnet = mauve_seeds(self.features["mpnet"], sentence_features(texts, "mpnet"))
        minilm = mauve_seeds(self.features["minilm"], sentence_features(texts))
        cosine = consecutive_cosine(texts, self.split)
        return {
            "mauve_mpnet": mpnet["mean"], "mauve_mpnet_std": mpnet["std"],
            "mauve_minilm": minilm["mean"], "mauve_minilm_std": minilm["std"],
            "coherence_ratio": coherence_ratio(cosine, self.random_cosine, self.real_cosine),
            "diversity": diversity(texts), "repeated_4gram_rate": repeated_ngram_rate(texts),
            "memorization": memorization(texts, self.training_texts),
            "distinct_2": distinct_n(texts, 2), "mean_words": sum(len(t.split()) for t in texts) / len(texts),
        }


def examples(texts: list[str], count: int = 3) -> list[str]:
    return texts[:count]


# ---- parts -----------------------------------------------------------------------------------------
def part_autoencoder(args, results: dict, splits: Splits) -> None:
    """Train the autoencoder for --autoencoder-minutes, then continue it for --extend-minutes as it is and,
    with --robust-autoencoder, a copy of it with Gaussian latent noise (the autoencoder-side arm: both
    variants share the first part and train equally long). Folders left by an earlier run are described."""
    work = Path(args.work_dir)
    base = work / "segment"
    if not (base / "autoencoder").exists():
        run_mode("segment", args.autoencoder_minutes, work, eval_every=0, max_eval=100, extra=[f"data.limit={TRAIN_LIMIT}"])
    variants = [("autoencoder", work, [])]
    if args.robust_autoencoder:
        variants.append(("autoencoder_robust", work / "robust", ["objective.latent_noise=0.3"]))
    for _, folder, _ in variants:  # every variant starts from the same first part
        if folder / "segment" != base and not (folder / "segment").exists():
            shutil.copytree(base, folder / "segment")
    for key, folder, extra in variants:
        run = folder / "segment"
        if args.extend_minutes and not (run / "extended").exists():
            run_cli(["train-autoencoder", "--config", str(base / "train_config.yaml"), "--resume",
                     f"training.output_dir={run}", f"training.max_minutes={args.extend_minutes}", *extra],
                    folder / "extend.log")
            (run / "extended").write_text(str(args.extend_minutes))
        final = json.loads((folder / "segment" / "final_metrics.json").read_text())
        results[key] = {"overrides": extra, **last_record(folder / "segment"), "final_bleu_dev": final["bleu"],
                        "final_exact_match_dev": final["exact_match"], "latent_gap": final.get("latent_gap")}


def autoencoder_dir(args, arm: str) -> Path:
    work = Path(args.work_dir)
    return (work / "robust" / "segment" if arm == "ae_latent_noise" else work / "segment") / "autoencoder"


def train_arm(args, arm: str, overrides: list[str]) -> Path:
    """A DiT for `arm` under work/arms/<arm>; the latent cache of an earlier arm on the same autoencoder is reused."""
    work = Path(args.work_dir)
    run, autoencoder = work / "arms" / arm, autoencoder_dir(args, arm)
    run.mkdir(parents=True, exist_ok=True)
    # the latents of an earlier arm on the same autoencoder (training checks the cache key and re-encodes if stale)
    donor = next((p.parent for p in (work / "arms").glob("*/latents.json")
                  if p.parent != run and autoencoder_dir(args, p.parent.name) == autoencoder), None)
    if donor is not None:
        for name in ("latents.safetensors", "latents.json"):
            shutil.copy(donor / name, run / name)
    print(f"== arm {arm}: DiT {args.diffusion_minutes} min {overrides}", flush=True)
    run_cli(["train-diffusion", "--config", str(ROOT / "configs/diffusion/roc_uncond.yaml"),
             f"autoencoder={autoencoder}", f"data.source={data_root() / 'rocstories' / 'train.jsonl'}",
             f"data.limit={TRAIN_LIMIT}", f"training.output_dir={run}", "training.overwrite_output_dir=true",
             f"training.max_minutes={args.diffusion_minutes}", "training.eval_every=0", "training.save_every=0", *overrides],
            run.with_suffix(".log"))
    return run


def sample(pipeline_dir: Path, count: int, steps: int = 20, scheduler: str = "dpm", **decoding) -> tuple[list[str], float]:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    output, seconds = timed(lambda: pipe(num_samples=count, num_inference_steps=steps, scheduler=scheduler, seed=0,
                                         batch_size=64, **decoding))
    return output.texts, seconds / count


def part_ablation(args, results: dict, splits: Splits) -> None:
    score = Scorer(splits.validation, splits.train)
    ablation = results.setdefault("ablation", {"split": "validation (train.jsonl[4500:5000])", "arms": {}})
    for arm in args.arms:
        if arm in ablation["arms"] and not args.rerun:
            print(f"== arm {arm}: measured earlier (--rerun to measure again)", flush=True)
            continue
        run = train_arm(args, arm, ARMS[arm])
        texts, _ = sample(run / "pipeline", NUM_EVAL)
        ablation["arms"][arm] = {"overrides": ARMS[arm], **last_record(run), **score(texts), "examples": examples(texts)}
        print(json.dumps({arm: {k: v for k, v in ablation["arms"][arm].items() if k != "examples"}}), flush=True)
        save_results(results)
    ablation["best"] = max(ablation["arms"], key=lambda a: ablation["arms"][a]["mauve_mpnet"])


def part_decoding(args, results: dict, splits: Splits) -> None:
    score = Scorer(splits.validation, splits.train)
    best = results["ablation"]["best"]
    rows = results.setdefault("decoding", {"arm": best, "split": "validation", "settings": {}})
    rows["settings"]["greedy"] = {"settings": {}, **results["ablation"]["arms"][best]}
    for name, settings in DECODING.items():
        texts, _ = sample(Path(args.work_dir) / "arms" / best / "pipeline", NUM_EVAL, **settings)
        rows["settings"][name] = {"settings": settings, **score(texts), "examples": examples(texts)}
        print(json.dumps({name: {k: v for k, v in rows["settings"][name].items() if k != "examples"}}), flush=True)
        save_results(results)
    rows["best"] = max(rows["settings"], key=lambda n: rows["settings"][n]["mauve_mpnet"])


def chosen(args, results: dict) -> tuple[Path, dict]:
    best = results["ablation"]["best"]
    decoding = results.get("decoding", {}).get("settings", {}).get(results.get("decoding", {}).get("best"), {})
    return Path(args.work_dir) / "arms" / best / "pipeline", decoding.get("settings", {})


def part_final(args, results: dict, splits: Splits) -> None:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    score = Scorer(splits.test, splits.train)
    pipeline_dir, decoding = chosen(args, results)
    final = {"split": "test (dev.jsonl[:500])", "arm": results["ablation"]["best"], "decoding": decoding, "samplers": {}}
    recons = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir).autoencoder.reconstruct(splits.human)
    final["ceilings"] = {"human": score(splits.human), "autoencoder_reconstructions": score(recons)}
    print(json.dumps(final["ceilings"]), flush=True)
    for name, steps in (("ddpm", 250), ("dpm", 20)):
        texts, seconds = sample(pipeline_dir, NUM_EVAL, steps, name, **decoding)
        final["samplers"][f"{name}-{steps}"] = {"seconds_per_paragraph": seconds, **score(texts), "examples": examples(texts)}
        print(json.dumps({name: {k: v for k, v in final["samplers"][f"{name}-{steps}"].items() if k != "examples"}}), flush=True)
    results["final"] = final


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
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=True, top_p=0.95, top_k=0,
                             max_new_tokens=MAX_TOKENS - 1, pad_token_id=tokenizer.pad_token_id,
                             eos_token_id=tokenizer.eos_token_id)
        texts += [t.strip() for t in tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
    return texts


def baseline_path(args) -> Path:
    return Path(args.work_dir) / "ar-baseline"


def part_ar(args, results: dict, splits: Splits) -> None:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipeline_dir, _ = chosen(args, results)
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    decoder_side = sum(p.numel() for m in (pipe.autoencoder.decoder, pipe.autoencoder.to_memory) for p in m.parameters())
    denoiser = sum(p.numel() for p in pipe.denoiser.parameters())
    tokenizer = pipe.autoencoder.decoder_tokenizer
    baseline = build_baseline(tokenizer, decoder_side + denoiser)
    arm = results["ablation"]["arms"][results["ablation"]["best"]]
    budget = results["autoencoder"]["train_minutes"] + arm["train_minutes"]
    print(f"== AR baseline: {sum(p.numel() for p in baseline.parameters()) / 1e6:.1f} M parameters "
          f"(latentdlm decoder side + DiT: {(decoder_side + denoiser) / 1e6:.1f} M), {budget:.1f} min", flush=True)
    trained = train_baseline(baseline, tokenizer, splits.train, budget)
    baseline.save_pretrained(baseline_path(args))
    texts = baseline_generate(baseline, tokenizer, NUM_EVAL, 32, seed=0)
    results["ar"] = {
        "parameters": sum(p.numel() for p in baseline.parameters()), "latentdlm_parameters": decoder_side + denoiser,
        "layers": baseline.config.n_layer, "latentdlm_minutes": budget, **trained,
        "split": "test", **Scorer(splits.test, splits.train)(texts), "examples": examples(texts),
    }


def speed(generate, batch_size: int, repeats: int) -> float:
    """Paragraphs per second at `batch_size` (one warm-up call first)."""
    generate(batch_size, 0)
    _, seconds = timed(lambda: [generate(batch_size, seed) for seed in range(1, repeats + 1)])
    return batch_size * repeats / seconds


def part_speed(args, results: dict, splits: Splits) -> None:
    from transformers import GPT2LMHeadModel

    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipeline_dir, decoding = chosen(args, results)
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    baseline = GPT2LMHeadModel.from_pretrained(baseline_path(args)).eval()
    tokenizer = pipe.autoencoder.decoder_tokenizer
    ours = lambda size, seed: pipe(num_samples=size, num_inference_steps=20, scheduler="dpm", seed=seed,  # noqa: E731
                                   show_progress=False, **decoding)
    theirs = lambda size, seed: baseline_generate(baseline, tokenizer, size, size, seed)  # noqa: E731
    results["speed"] = {name: {"batch_1": speed(fn, 1, 12), "batch_32": speed(fn, 32, 3)}
                        for name, fn in (("latentdlm", ours), ("ar", theirs))}


def part_demo(args, results: dict, splits: Splits) -> None:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    if args.demo_dir:  # a demo run elsewhere (e.g. timed from a fresh clone): score what it saved
        out, seconds = Path(args.demo_dir), json.loads((Path(args.demo_dir) / "demo_summary.json").read_text())["minutes"] * 60
    else:
        out = Path(args.work_dir) / "demo"
        (_, seconds) = timed(lambda: run_cli(["demo", "--output-dir", str(out), "--overwrite"], Path(args.work_dir) / "demo.log"))
    pipe = LatentDiffusionTextPipeline.from_pretrained(out / "diffusion-run" / "pipeline")
    printed = pipe(num_samples=8, num_inference_steps=20, seed=0, show_progress=False).texts  # what the demo printed
    more = pipe(num_samples=64, num_inference_steps=20, seed=1, show_progress=False).texts
    preset = json.loads((out / "demo_summary.json").read_text())["preset"] if (out / "demo_summary.json").exists() else "tiny"
    results["demo"] = {"preset": preset, "minutes": seconds / 60, "printed_samples": printed,
                       "repeated_4gram_rate_printed": repeated_ngram_rate(printed),
                       "repeated_4gram_rate_64": repeated_ngram_rate(more)}


# ---- the report --------------------------------------------------------------------------------
def summary(results: dict) -> dict:
    """The issue's keys (None until the part that measures them has run)."""
    final, ar, speed_, demo = results.get("final"), results.get("ar"), results.get("speed"), results.get("demo")
    out = dict.fromkeys([
        "dpm20_mauve_gap", "dpm20_speedup", "mauve_latentdlm", "mauve_ar", "mauve_ratio_vs_ar",
        "mauve_samples_over_reconstructions", "coherence_ratio_latentdlm", "coherence_ratio_ar",
        "speedup_batch1", "speedup_batch32", "demo_repeated_4gram_rate",
    ])
    if final:
        ddpm, dpm = final["samplers"]["ddpm-250"], final["samplers"]["dpm-20"]
        out["dpm20_mauve_gap"] = ddpm["mauve_mpnet"] - dpm["mauve_mpnet"]
        out["dpm20_speedup"] = ddpm["seconds_per_paragraph"] / dpm["seconds_per_paragraph"]
        out["mauve_latentdlm"] = dpm["mauve_mpnet"]
        out["mauve_samples_over_reconstructions"] = dpm["mauve_mpnet"] / final["ceilings"]["autoencoder_reconstructions"]["mauve_mpnet"]
        out["coherence_ratio_latentdlm"] = dpm["coherence_ratio"]
    if ar:
        out["mauve_ar"], out["coherence_ratio_ar"] = ar["mauve_mpnet"], ar["coherence_ratio"]
        if final:
            out["mauve_ratio_vs_ar"] = out["mauve_latentdlm"] / ar["mauve_mpnet"]
    if speed_:
        out["speedup_batch1"] = speed_["latentdlm"]["batch_1"] / speed_["ar"]["batch_1"]
        out["speedup_batch32"] = speed_["latentdlm"]["batch_32"] / speed_["ar"]["batch_32"]
    if demo:
        out["demo_repeated_4gram_rate"] = demo["repeated_4gram_rate_64"]
    return out


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.2))
    arms = results.get("ablation", {}).get("arms", {})
    if arms:
        names = list(arms)
        axes[0].bar(names, [arms[n]["mauve_mpnet"] for n in names], yerr=[arms[n]["mauve_mpnet_std"] for n in names],
                    color="tab:blue", label="MAUVE (mpnet)")
        axes[0].plot(names, [arms[n]["coherence_ratio"] for n in names], "o", color="tab:red", label="coherence ratio")
        axes[0].set(title="Ablation (validation, one factor at a time)", ylim=(0, 1))
        axes[0].tick_params(axis="x", labelrotation=40)
        axes[0].legend(fontsize=8)
    final = results.get("final")
    if final:
        bars = {**{k: v for k, v in final["samplers"].items()}, "AE recon.": final["ceilings"]["autoencoder_reconstructions"],
                "human": final["ceilings"]["human"]}
        if results.get("ar"):
            bars["AR baseline"] = results["ar"]
        axes[1].bar(list(bars), [b["mauve_mpnet"] for b in bars.values()], yerr=[b["mauve_mpnet_std"] for b in bars.values()],
                    color="tab:gray")
        axes[1].plot(list(bars), [b["coherence_ratio"] for b in bars.values()], "o", color="tab:red")
        axes[1].set(title="Test: MAUVE (mpnet, bars) and coherence (dots)", ylim=(0, 1.05))
        axes[1].tick_params(axis="x", labelrotation=30)
    speed_ = results.get("speed")
    if speed_:
        x = range(2)
        axes[2].bar([i - 0.2 for i in x], [speed_["latentdlm"][k] for k in ("batch_1", "batch_32")], width=0.4, label="latentdlm DPM-20")
        axes[2].bar([i + 0.2 for i in x], [speed_["ar"][k] for k in ("batch_1", "batch_32")], width=0.4, label="AR baseline")
        axes[2].set_xticks(list(x), ["batch 1", "batch 32"])
        axes[2].set(ylabel="paragraphs / second", title="Speed", yscale="log")
        axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PARTS = {"autoencoder": part_autoencoder, "ablation": part_ablation, "decoding": part_decoding, "final": part_final,
         "ar": part_ar, "speed": part_speed, "demo": part_demo}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", choices=list(PARTS), help="run these parts (repeatable; default: all)")
    parser.add_argument("--arms", default=",".join(DEFAULT_ARMS), help="ablation arms, comma-separated: " + ", ".join(ARMS))
    parser.add_argument("--autoencoder-minutes", type=float, default=10)
    parser.add_argument("--extend-minutes", type=float, default=0, help="continue the autoencoder(s) for these minutes")
    parser.add_argument("--robust-autoencoder", action="store_true", help="also continue a copy with latent noise")
    parser.add_argument("--diffusion-minutes", type=float, default=4)
    parser.add_argument("--demo-dir", help="demo: score this finished `latentdlm demo` output instead of running one")
    parser.add_argument("--rerun", action="store_true", help="ablation: train and score arms measured earlier again")
    parser.add_argument("--work-dir", default=str(ROOT / "runs/bench-gen"))
    args = parser.parse_args()
    args.arms = [a for a in args.arms.split(",") if a]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown:
        parser.error(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    splits = Splits()
    results = load_results()
    results["setup"] = {"machine": "2 CPU cores", "training": "rocstories/train.jsonl[:4500]", "validation": "train.jsonl[4500:5000]",
                        "test": "dev.jsonl[:500]", "human_ceiling": "dev.jsonl[500:1000]", "samples": NUM_EVAL,
                        "mauve": "mean of k-means seeds 0,1,2 (std beside it); mpnet = all-mpnet-base-v2, minilm = all-MiniLM-L6-v2",
                        "diffusion_minutes_per_arm": args.diffusion_minutes}
    run_parts(PARTS, args.only or list(PARTS), args, results, splits, save_results)
    print(json.dumps(results["summary"], indent=2))


if __name__ == "__main__":
    main()
