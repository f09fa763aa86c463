"""Latent-space experiments measured: interpolation smoothness, infilling against an AR model filling the
same gaps, and classifier guidance against classifier-free guidance.

    python benchmarks/latent_space.py --only PART [--only PART ...]   # parts, each merged into one JSON

Parts (models come from the other benchmarks' work folders; each part says which it needs):
  interp    50 ROCStories validation pairs (train.jsonl[4500:], consecutive stories paired), 5 points each:
            slerp, lerp and slerp through noise 0.5 on the tiny pipeline without and with robustness
            training of its autoencoder (benchmarks/generation.py's `preset` and `ae_latent_noise` arms),
            slerp and slerp through noise on the flagship design (--flagship, default c; benchmarks/quality_ladder.py)
  robust    the flagship's autoencoder trained again with latent-noise robustness (30 min), on the flagship's DiT,
            and its interpolation paths (slerp, slerp through noise 0.5)
  vary      the strength -> (similarity to the input, SmolLM2 perplexity) curve of the flagship's variations
  infill    the middle sentence of held-out stories blanked and filled: the flagship (sampler and
            resampling chosen on 100 validation stories) vs the ladder's SmolLM2 peer continuing the
            first two sentences; 200 test stories (rocstories/dev.jsonl)
  agnews    the AG News DiTs on the flagship's autoencoder: unconditional and class-conditional (CFG)
  guidance  a latent classifier on the unconditional DiT's latents; classifier guidance vs CFG, scales
            chosen on validation samples, then NUM_TEST samples each scored once: topic accuracy by an
            independent classifier (logistic regression on all-mpnet-base-v2 features of real AG News),
            MAUVE (mpnet) against real items, diversity
  apg       adaptive projected guidance vs CFG by name on one class-conditional AG News DiT (trained here, 10 min,
            on --apg-autoencoder: the shipped demo adapter by default), scales chosen on validation, test once
  map       a PCA map of the flagship's latents (AG News by topic, ROCStories) with an interpolation path
Results: benchmarks/results/latent_space.json (+ .png).
"""

from __future__ import annotations

import json
from pathlib import Path

import plots
from flagship import (
    AUTOENCODER_MINUTES, DESIGN_OVERRIDES, DESIGNS, ROC_AUTOENCODER, flagship_pipeline, load_adapter, peer_generate, peer_path,
    peer_tokenizer, perplexity, perplexity_judge, share_denoiser, train_stage,
)
from latent_agnews import part_agnews, part_apg, part_guidance, part_map
from runner import RESULTS_DIR, ROOT, last_record, load_pipeline, log, run_benchmark, torch_threads
from scoring import rocstories

TINY = {"tiny": "runs/bench-gen/arms/preset/pipeline", "tiny_robust": "runs/bench-gen/arms/ae_latent_noise/pipeline"}
NUM_PAIRS, NUM_POINTS = 50, 5
NUM_INFILL, NUM_INFILL_VALIDATION = 200, 100


# ---- interpolation ---------------------------------------------------------------------------------
def part_interp(args, results: dict) -> None:
    systems = {**{name: (Path(path), ["slerp", "lerp", "slerp@0.5"]) for name, path in TINY.items()},
               args.flagship: (flagship_pipeline(args), ["slerp", "slerp@0.5"])}
    interpolation_rows(results, systems)


def interpolation_rows(results: dict, systems: dict[str, tuple[Path, list[str]]]) -> None:
    """Each system's paths over the validation pairs, per setting (method[@noise]), unless already in the results."""
    from latentdlm.evaluation.interpolation import interpolation_experiment

    stories = rocstories().validation[: 2 * NUM_PAIRS]
    pairs = list(zip(stories[::2], stories[1::2]))
    rows = results.setdefault("interp", {"pairs": "rocstories/train.jsonl[4500:4600] paired", "systems": {}})
    for name, (path, settings) in systems.items():
        if not path.exists():
            print(f"== {name}: no pipeline at {path}, skipped", flush=True)
            continue
        pipe = load_pipeline(path)
        for setting in settings:
            if setting in rows["systems"].get(name, {}):
                continue
            method, _, noise = setting.partition("@")
            result = interpolation_experiment(pipe, pairs, NUM_POINTS, method, float(noise) if noise else None)
            result["examples"] = [{"source": p["source"], "target": p["target"], "texts": p["texts"]} for p in result["paths"][:2]]
            rows["systems"].setdefault(name, {})[setting] = {k: v for k, v in result.items() if k != "paths"}
            print(f"{name} {setting}: new {result['new_text_rate']:.3f}, monotonic {result['monotonic_rate']:.3f}", flush=True)
            results.save()


ROBUST_LATENT_NOISE = 0.3  # std of the noise on the latents while the decoder trains (the tiny robust arm's value)


def part_robust(args, results: dict) -> None:
    """The flagship's autoencoder trained again with latent-noise robustness (objective.latent_noise), for the
    same minutes, paired with the flagship's DiT (the latents are the same frozen MiniLM embeddings), and its paths."""
    work = args.work_dir / f"{args.flagship}_robust"
    run = work / "autoencoder-run"
    train_stage("train-autoencoder", ROOT / f"configs/autoencoder/{DESIGNS[args.flagship]}.yaml", run, AUTOENCODER_MINUTES,
                ROC_AUTOENCODER + DESIGN_OVERRIDES.get(args.flagship, []) + [f"objective.latent_noise={ROBUST_LATENT_NOISE}"])
    share_denoiser(flagship_pipeline(args), run / "autoencoder", work / "pipeline")
    results.setdefault("robust", {})[args.flagship] = {"latent_noise": ROBUST_LATENT_NOISE, **last_record(run)}
    interpolation_rows(results, {f"{args.flagship}_robust": (work / "pipeline", ["slerp", "slerp@0.5"])})


# ---- variations ------------------------------------------------------------------------------------
VARY_STRENGTHS = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
NUM_VARY = 50


def part_vary(args, results: dict) -> None:
    """The strength -> (similarity to the input, fluency) curve of the flagship's variations: one variation
    of each of 50 validation stories per strength; MiniLM cosine and BLEU to the input, perplexity under
    the untouched SmolLM2."""
    import sacrebleu

    from latentdlm.evaluation.reconstruction import meaning_similarity

    pipe = load_pipeline(flagship_pipeline(args))
    tokenizer, plain = perplexity_judge()
    stories = rocstories().validation[-NUM_VARY:]
    rows = results["vary"] = {"stories": f"rocstories/train.jsonl[{5000 - NUM_VARY}:5000]", "curve": []}
    for strength in VARY_STRENGTHS:
        texts = [pipe.vary(story, strength, num_samples=1, seed=i)[0] for i, story in enumerate(stories)]
        rows["curve"].append({"strength": strength, "cosine_to_input": meaning_similarity(stories, texts),
                              "bleu_to_input": sacrebleu.corpus_bleu(texts, [stories]).score,
                              "perplexity_smollm2": perplexity(texts, tokenizer, plain), "examples": texts[:2]})
        log(rows["curve"][-1])
    rows["input_examples"] = stories[:2]
    rows["perplexity_smollm2_of_inputs"] = perplexity(stories, tokenizer, plain)
    plots.latent_space_vary(rows, RESULTS_DIR / "latent_space_vary.png")


# ---- infilling -------------------------------------------------------------------------------------
def blank_middle(story: str, split) -> tuple[list, str] | None:
    sentences = split(story)
    if len(sentences) < 3:
        return None
    middle = len(sentences) // 2
    return [s if i != middle else None for i, s in enumerate(sentences)], sentences[middle]


def infill_scores(parts_list, references, fills) -> dict:
    """Kept-verbatim rate, the fill's MiniLM cosine and BLEU to the held-out sentence, and its mean cosine
    to its neighbours against the held-out sentence's."""
    import sacrebleu

    from latentdlm.evaluation.generation import row_cosines as cos
    from latentdlm.evaluation.generation import sentence_features

    kept = [all(seg == part for seg, part in zip(segments, parts) if part is not None) for parts, segments, _ in fills]
    filled = [fill for _, _, fill in fills]
    f_fill, f_ref = sentence_features(filled), sentence_features(references)
    neighbours = [(parts[parts.index(None) - 1], parts[parts.index(None) + 1] if parts.index(None) + 1 < len(parts) else parts[parts.index(None) - 1])
                  for parts in parts_list]
    f_prev, f_next = sentence_features([p for p, _ in neighbours]), sentence_features([n for _, n in neighbours])
    return {
        "kept_verbatim_rate": sum(kept) / len(kept), "cosine_to_reference": float(cos(f_fill, f_ref).mean()),
        "bleu_to_reference": sacrebleu.corpus_bleu(filled, [references]).score,
        "neighbour_cosine": float(((cos(f_fill, f_prev) + cos(f_fill, f_next)) / 2).mean()),
        "neighbour_cosine_reference": float(((cos(f_ref, f_prev) + cos(f_ref, f_next)) / 2).mean()),
    }


def latentdlm_fills(pipe, parts_list, settings: dict) -> list:
    fills = []
    for parts in parts_list:
        out = pipe.infill(parts, num_inference_steps=20, seed=0, **settings)
        fills.append((parts, out.segments[0], out.segments[0][parts.index(None)]))
    return fills


def part_infill(args, results: dict) -> None:
    from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter

    split = SentenceSegmenter(SegmentationConfig(mode="sentences", max_segments=None)).split
    splits = rocstories()
    cases = {name: [c for c in (blank_middle(s, split) for s in texts) if c][:count]
             for name, texts, count in (("validation", splits.validation[2 * NUM_PAIRS:], NUM_INFILL_VALIDATION),
                                        ("test", splits.test, NUM_INFILL))}
    pipe = load_pipeline(flagship_pipeline(args))
    options = {"dpm": {}, "ddim_resample_2": {"scheduler": "ddim", "resample": 2}}
    sweep = {}
    for name, settings in options.items():
        parts_list, refs = zip(*cases["validation"])
        sweep[name] = infill_scores(parts_list, list(refs), latentdlm_fills(pipe, parts_list, settings))
        print(json.dumps({name: sweep[name]}), flush=True)
    best = max(sweep, key=lambda n: sweep[n]["cosine_to_reference"])
    parts_list, refs = zip(*cases["test"])
    fills = latentdlm_fills(pipe, parts_list, options[best])
    rows = results["infill"] = {"stories": f"rocstories/dev.jsonl: {len(refs)} with the middle sentence blanked",
                                "validation_sweep": sweep, "chosen": best, "systems": {}}
    rows["systems"]["latentdlm"] = {"design": args.flagship, **infill_scores(parts_list, list(refs), fills),
                            "examples": [{"story": [p if p is not None else "___" for p in f[0]], "fill": f[2], "reference": r}
                                         for f, r in list(zip(fills, refs))[:3]]}
    peer, tokenizer = load_adapter(peer_path(args.ladder_dir)), peer_tokenizer()
    prompts = [" ".join(parts[: parts.index(None)]) for parts in parts_list]
    continuations = peer_generate(peer, tokenizer, prompts, 16, seed=0, decoding={}, max_new_tokens=40)
    peer_fills = []
    for parts, text in zip(parts_list, continuations):
        first = (split(text) or [""])[0]
        peer_fills.append((parts, [p if p is not None else first for p in parts], first))
    rows["systems"]["peer"] = {**infill_scores(parts_list, list(refs), peer_fills), "method": "greedy continuation of the "
                               "sentences before the blank (an AR model cannot read the text after it)",
                               "examples": [f[2] for f in peer_fills[:3]]}
    print(json.dumps({k: {m: v for m, v in s.items() if m != "examples"} for k, s in rows["systems"].items()}), flush=True)


# ---- the report --------------------------------------------------------------------------------
SUMMARY_KEYS = ["interp_new_text_rate", "interp_monotonic_rate", "infill_kept_verbatim_rate", "classifier_guidance_accuracy",
                "cfg_accuracy", "apg_accuracy", "apg_mauve_mpnet", "apg_part_cfg_accuracy", "apg_part_cfg_mauve_mpnet"]


def summary_interp_system(results: dict) -> str | None:
    """The flagship with robustness training (the target's condition) where it ran, else the flagship (c,
    else b), else the tiny pipeline with robustness training."""
    systems = results.get("interp", {}).get("systems", {})
    return next((name for name in ("c_robust", "c", "b", "tiny_robust") if "slerp" in systems.get(name, {})), None)


def summary(results: dict) -> dict:
    out = dict.fromkeys(SUMMARY_KEYS)
    system = summary_interp_system(results)
    if system:
        row = results["interp"]["systems"][system]["slerp"]
        out["interp_new_text_rate"], out["interp_monotonic_rate"] = row["new_text_rate"], row["monotonic_rate"]
        results["interp"]["summary_system"] = f"{system}, slerp"
    if "infill" in results:
        out["infill_kept_verbatim_rate"] = results["infill"]["systems"]["latentdlm"]["kept_verbatim_rate"]
    guidance = results.get("guidance", {})
    if "classifier_guidance" in guidance:
        out["classifier_guidance_accuracy"] = guidance["classifier_guidance"]["accuracy"]
    if "cfg" in guidance:
        out["cfg_accuracy"] = guidance["cfg"]["accuracy"]
    for method, prefix in (("apg", "apg"), ("cfg", "apg_part_cfg")):  # the apg part: both methods on one DiT
        if method in results.get("apg", {}):
            out[f"{prefix}_accuracy"], out[f"{prefix}_mauve_mpnet"] = (results["apg"][method][k] for k in ("accuracy", "mauve_mpnet"))
    return out


PARTS = {"interp": part_interp, "robust": part_robust, "vary": part_vary, "infill": part_infill, "agnews": part_agnews,
         "guidance": part_guidance, "apg": part_apg, "map": part_map}


def arguments(parser) -> None:
    parser.add_argument("--ladder-dir", type=Path, default="runs/ladder", help="benchmarks/quality_ladder.py's work folder (its designs, the peer)")
    parser.add_argument("--flagship", choices=["b", "c"], default="c", help="the ladder's concept design to run on (c: the best)")
    parser.add_argument("--apg-autoencoder", type=Path, default=ROOT / "latentdlm/data/adapters/minilm_smollm2_concept",
                        help="the autoencoder of the apg part's DiT (default: the shipped demo adapter)")


if __name__ == "__main__":
    run_benchmark(__doc__, "latent_space", PARTS, work_dir="runs/latent-space", summary=summary, plot=plots.latent_space,
                  arguments=arguments, setup=lambda args, results: torch_threads(2))
