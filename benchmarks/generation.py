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
import shutil
from pathlib import Path

import plots
from ar_baselines import baseline_generate, build_baseline, parameters, train_baseline
from autoencoder import run_mode
from runner import ROOT, last_record, load_pipeline, log, run_benchmark, run_cli, timed, torch_threads
from scoring import NUM_EVAL, TRAIN_LIMIT, Scorer, rocstories, speed

from latentdlm.data.sources import data_root
from latentdlm.evaluation.generation import repeated_ngram_rate

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


# ---- parts -----------------------------------------------------------------------------------------
def part_autoencoder(args, results: dict) -> None:
    """Train the autoencoder for --autoencoder-minutes, then continue it for --extend-minutes as it is and,
    with --robust-autoencoder, a copy of it with Gaussian latent noise (the autoencoder-side arm: both
    variants share the first part and train equally long). Folders left by an earlier run are described."""
    work = args.work_dir
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
    work = args.work_dir
    return (work / "robust" / "segment" if arm == "ae_latent_noise" else work / "segment") / "autoencoder"


def train_arm(args, arm: str, overrides: list[str]) -> Path:
    """A DiT for `arm` under work/arms/<arm>; the latent cache of an earlier arm on the same autoencoder is reused."""
    work = args.work_dir
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
    pipe = load_pipeline(pipeline_dir)
    output, seconds = timed(lambda: pipe(num_samples=count, num_inference_steps=steps, scheduler=scheduler, seed=0,
                                         batch_size=64, decoding=decoding))
    return output.texts, seconds / count


def part_ablation(args, results: dict) -> None:
    splits = rocstories()
    score = Scorer(splits.validation, splits.train)
    ablation = results.setdefault("ablation", {"split": "validation (train.jsonl[4500:5000])", "arms": {}})
    for arm in args.arms:
        if arm in ablation["arms"] and not args.rerun:
            print(f"== arm {arm}: measured earlier (--rerun to measure again)", flush=True)
            continue
        run = train_arm(args, arm, ARMS[arm])
        texts, _ = sample(run / "pipeline", NUM_EVAL)
        ablation["arms"][arm] = {"overrides": ARMS[arm], **last_record(run), **score(texts), "examples": texts[:3]}
        log(ablation["arms"][arm], arm)
        results.save()
    ablation["best"] = max(ablation["arms"], key=lambda a: ablation["arms"][a]["mauve_mpnet"])


def part_decoding(args, results: dict) -> None:
    splits = rocstories()
    score = Scorer(splits.validation, splits.train)
    best = results["ablation"]["best"]
    rows = results.setdefault("decoding", {"arm": best, "split": "validation", "settings": {}})
    rows["settings"]["greedy"] = {"settings": {}, **results["ablation"]["arms"][best]}
    for name, settings in DECODING.items():
        texts, _ = sample(args.work_dir / "arms" / best / "pipeline", NUM_EVAL, **settings)
        rows["settings"][name] = {"settings": settings, **score(texts), "examples": texts[:3]}
        log(rows["settings"][name], name)
        results.save()
    rows["best"] = max(rows["settings"], key=lambda n: rows["settings"][n]["mauve_mpnet"])


def chosen(args, results: dict) -> tuple[Path, dict]:
    best = results["ablation"]["best"]
    decoding = results.get("decoding", {}).get("settings", {}).get(results.get("decoding", {}).get("best"), {})
    return args.work_dir / "arms" / best / "pipeline", decoding.get("settings", {})


def part_final(args, results: dict) -> None:
    splits = rocstories()
    score = Scorer(splits.test, splits.train)
    pipeline_dir, decoding = chosen(args, results)
    final = {"split": "test (dev.jsonl[:500])", "arm": results["ablation"]["best"], "decoding": decoding, "samplers": {}}
    recons = load_pipeline(pipeline_dir).autoencoder.reconstruct(splits.human)
    final["ceilings"] = {"human": score(splits.human), "autoencoder_reconstructions": score(recons)}
    print(json.dumps(final["ceilings"]), flush=True)
    for name, steps in (("ddpm", 250), ("dpm", 20)):
        texts, seconds = sample(pipeline_dir, NUM_EVAL, steps, name, **decoding)
        final["samplers"][f"{name}-{steps}"] = {"seconds_per_paragraph": seconds, **score(texts), "examples": texts[:3]}
        log(final["samplers"][f"{name}-{steps}"], name)
    results["final"] = final


def baseline_path(args) -> Path:
    return args.work_dir / "ar-baseline"


def part_ar(args, results: dict) -> None:
    splits = rocstories()
    pipeline_dir, _ = chosen(args, results)
    pipe = load_pipeline(pipeline_dir)
    decoder_side = sum(parameters(m) for m in (pipe.autoencoder.decoder, pipe.autoencoder.to_memory))
    denoiser = parameters(pipe.denoiser)
    tokenizer = pipe.autoencoder.processor.decoder_tokenizer
    baseline = build_baseline(tokenizer, decoder_side + denoiser)
    arm = results["ablation"]["arms"][results["ablation"]["best"]]
    budget = results["autoencoder"]["train_minutes"] + arm["train_minutes"]
    print(f"== AR baseline: {parameters(baseline) / 1e6:.1f} M parameters "
          f"(latentdlm decoder side + DiT: {(decoder_side + denoiser) / 1e6:.1f} M), {budget:.1f} min", flush=True)
    trained = train_baseline(baseline, tokenizer, splits.train, budget)
    baseline.save_pretrained(baseline_path(args))
    texts = baseline_generate(baseline, tokenizer, NUM_EVAL, 32, seed=0)
    results["ar"] = {
        "parameters": parameters(baseline), "latentdlm_parameters": decoder_side + denoiser,
        "layers": baseline.config.n_layer, "latentdlm_minutes": budget, **trained,
        "split": "test", **Scorer(splits.test, splits.train)(texts), "examples": texts[:3],
    }


def part_speed(args, results: dict) -> None:
    from transformers import GPT2LMHeadModel

    pipeline_dir, decoding = chosen(args, results)
    pipe = load_pipeline(pipeline_dir)
    baseline = GPT2LMHeadModel.from_pretrained(baseline_path(args)).eval()
    tokenizer = pipe.autoencoder.processor.decoder_tokenizer
    ours = lambda size, seed: pipe(num_samples=size, num_inference_steps=20, scheduler="dpm", seed=seed,  # noqa: E731
                                   show_progress=False, decoding=decoding)
    theirs = lambda size, seed: baseline_generate(baseline, tokenizer, size, size, seed)  # noqa: E731
    results["speed"] = {name: {"batch_1": speed(fn, 1, 12), "batch_32": speed(fn, 32, 3)}
                        for name, fn in (("latentdlm", ours), ("ar", theirs))}


def part_demo(args, results: dict) -> None:
    if args.demo_dir:  # a demo run elsewhere (e.g. timed from a fresh clone): score what it saved
        out, seconds = args.demo_dir, json.loads((args.demo_dir / "demo_summary.json").read_text())["minutes"] * 60
    else:
        out = args.work_dir / "demo"
        (_, seconds) = timed(lambda: run_cli(["demo", "--output-dir", str(out), "--overwrite"], args.work_dir / "demo.log"))
    pipe = load_pipeline(out / "diffusion-run" / "pipeline")
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


PARTS = {"autoencoder": part_autoencoder, "ablation": part_ablation, "decoding": part_decoding, "final": part_final,
         "ar": part_ar, "speed": part_speed, "demo": part_demo}


def arm_list(text: str) -> list[str]:
    arms = [a for a in text.split(",") if a]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {unknown}; choose from {list(ARMS)}")
    return arms


def arguments(parser) -> None:
    parser.add_argument("--arms", type=arm_list, default=",".join(DEFAULT_ARMS), help="ablation arms, comma-separated: " + ", ".join(ARMS))
    parser.add_argument("--autoencoder-minutes", type=float, default=10)
    parser.add_argument("--extend-minutes", type=float, default=0, help="continue the autoencoder(s) for these minutes")
    parser.add_argument("--robust-autoencoder", action="store_true", help="also continue a copy with latent noise")
    parser.add_argument("--diffusion-minutes", type=float, default=4)
    parser.add_argument("--demo-dir", type=Path, help="demo: score this finished `latentdlm demo` output instead of running one")
    parser.add_argument("--rerun", action="store_true", help="ablation: train and score arms measured earlier again")


def setup(args, results: dict) -> None:
    torch_threads(2)
    results["setup"] = {"machine": "2 CPU cores", "training": "rocstories/train.jsonl[:4500]", "validation": "train.jsonl[4500:5000]",
                        "test": "dev.jsonl[:500]", "human_ceiling": "dev.jsonl[500:1000]", "samples": NUM_EVAL,
                        "mauve": "mean of k-means seeds 0,1,2 (std beside it); mpnet = all-mpnet-base-v2, minilm = all-MiniLM-L6-v2",
                        "diffusion_minutes_per_arm": args.diffusion_minutes}


if __name__ == "__main__":
    run_benchmark(__doc__, "generation", PARTS, work_dir=str(ROOT / "runs/bench-gen"), summary=summary, plot=plots.generation,
                  arguments=arguments, setup=setup, required=False)
