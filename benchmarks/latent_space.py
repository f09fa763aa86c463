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
  map       a PCA map of the flagship's latents (AG News by topic, ROCStories) with an interpolation path
Results: benchmarks/results/latent_space.json (+ .png).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from generation import Splits, last_record, load_results, run_cli, run_parts, write_results  # noqa: E402
from quality_ladder import (  # noqa: E402
    AUTOENCODER_MINUTES, DESIGN_OVERRIDES, DESIGNS, ROC_AUTOENCODER, autoencoder_dir, load_adapter, peer_generate, peer_model,
    peer_path, peer_tokenizer, perplexity, pipeline_dir, share_denoiser, train_stage,
)

from latentdlm.data.sources import data_root, load_labeled_texts  # noqa: E402

RESULTS = ROOT / "benchmarks/results/latent_space.json"
TINY = {"tiny": "runs/bench-gen/arms/preset/pipeline", "tiny_robust": "runs/bench-gen/arms/ae_latent_noise/pipeline"}
NUM_PAIRS, NUM_POINTS = 50, 5
NUM_INFILL, NUM_INFILL_VALIDATION = 200, 100
AGNEWS_NAMES = {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
AGNEWS_DIT_MINUTES, CLASSIFIER_MINUTES = 10.0, 5.0
NUM_VALIDATION, NUM_TEST = 100, 500  # generated items per guidance setting
CLASSIFIER_SCALES, CFG_SCALES = [1.0, 3.0, 10.0], [1.5, 2.0, 4.0]


def save_results(results: dict) -> None:
    write_results(RESULTS, results, summary, plot)


def ladder_pipeline(args) -> Path:
    return pipeline_dir(Path(args.ladder_dir), args.flagship)


# ---- interpolation ---------------------------------------------------------------------------------
def part_interp(args, results: dict, splits: Splits) -> None:
    systems = {**{name: (Path(path), ["slerp", "lerp", "slerp@0.5"]) for name, path in TINY.items()},
               args.flagship: (ladder_pipeline(args), ["slerp", "slerp@0.5"])}
    interpolation_rows(results, splits, systems)


def interpolation_rows(results: dict, splits: Splits, systems: dict[str, tuple[Path, list[str]]]) -> None:
    """Each system's paths over the validation pairs, per setting (method[@noise]), unless already in the results."""
    from latentdlm.evaluation.interpolation import interpolation_experiment
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    stories = splits.validation[: 2 * NUM_PAIRS]
    pairs = list(zip(stories[::2], stories[1::2]))
    rows = results.setdefault("interp", {"pairs": "rocstories/train.jsonl[4500:4600] paired", "systems": {}})
    for name, (path, settings) in systems.items():
        if not path.exists():
            print(f"== {name}: no pipeline at {path}, skipped", flush=True)
            continue
        pipe = LatentDiffusionTextPipeline.from_pretrained(path)
        for setting in settings:
            if setting in rows["systems"].get(name, {}):
                continue
            method, _, noise = setting.partition("@")
            result = interpolation_experiment(pipe, pairs, NUM_POINTS, method, float(noise) if noise else None)
            result["examples"] = [{"source": p["source"], "target": p["target"], "texts": p["texts"]} for p in result["paths"][:2]]
            rows["systems"].setdefault(name, {})[setting] = {k: v for k, v in result.items() if k != "paths"}
            print(f"{name} {setting}: new {result['new_text_rate']:.3f}, monotonic {result['monotonic_rate']:.3f}", flush=True)
            save_results(results)


ROBUST_LATENT_NOISE = 0.3  # std of the noise on the latents while the decoder trains (the tiny robust arm's value)


def part_robust(args, results: dict, splits: Splits) -> None:
    """The flagship's autoencoder trained again with latent-noise robustness (objective.latent_noise), for the
    same minutes, paired with the flagship's DiT (the latents are the same frozen MiniLM embeddings), and its paths."""
    work = Path(args.work_dir) / f"{args.flagship}_robust"
    run = work / "autoencoder-run"
    train_stage("train-autoencoder", ROOT / f"configs/autoencoder/{DESIGNS[args.flagship]}.yaml", run, AUTOENCODER_MINUTES,
                ROC_AUTOENCODER + DESIGN_OVERRIDES.get(args.flagship, []) + [f"objective.latent_noise={ROBUST_LATENT_NOISE}"])
    share_denoiser(ladder_pipeline(args), run / "autoencoder", work / "pipeline")
    results.setdefault("robust", {})[args.flagship] = {"latent_noise": ROBUST_LATENT_NOISE, **last_record(run)}
    interpolation_rows(results, splits, {f"{args.flagship}_robust": (work / "pipeline", ["slerp", "slerp@0.5"])})


# ---- variations ------------------------------------------------------------------------------------
VARY_STRENGTHS = [0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
NUM_VARY = 50


def part_vary(args, results: dict, splits: Splits) -> None:
    """The strength -> (similarity to the input, fluency) curve of the flagship's variations: one variation
    of each of 50 validation stories per strength; MiniLM cosine and BLEU to the input, perplexity under
    the untouched SmolLM2."""
    import sacrebleu

    from latentdlm.evaluation.reconstruction import meaning_similarity
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = LatentDiffusionTextPipeline.from_pretrained(ladder_pipeline(args))
    tokenizer, plain = peer_tokenizer(), peer_model(lora=False).eval()
    stories = splits.validation[-NUM_VARY:]
    rows = results["vary"] = {"stories": f"rocstories/train.jsonl[{5000 - NUM_VARY}:5000]", "curve": []}
    for strength in VARY_STRENGTHS:
        texts = [pipe.vary(story, strength, num_samples=1, seed=i)[0] for i, story in enumerate(stories)]
        rows["curve"].append({"strength": strength, "cosine_to_input": meaning_similarity(stories, texts),
                              "bleu_to_input": sacrebleu.corpus_bleu(texts, [stories]).score,
                              "perplexity_smollm2": perplexity(texts, tokenizer, plain), "examples": texts[:2]})
        print(json.dumps({k: v for k, v in rows["curve"][-1].items() if k != "examples"}), flush=True)
    rows["input_examples"] = stories[:2]
    rows["perplexity_smollm2_of_inputs"] = perplexity(stories, tokenizer, plain)
    plot_vary(rows, RESULTS.with_name("latent_space_vary.png"))


def plot_vary(rows: dict, png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    strengths = [r["strength"] for r in rows["curve"]]
    fig, left = plt.subplots(figsize=(6, 3.8))
    left.plot(strengths, [r["cosine_to_input"] for r in rows["curve"]], "o-", color="tab:blue", label="MiniLM cosine to input")
    left.plot(strengths, [r["bleu_to_input"] / 100 for r in rows["curve"]], "s--", color="tab:blue", label="BLEU to input / 100")
    left.set(xlabel="strength (share of the noise schedule)", ylabel="similarity to the input", ylim=(0, 1))
    right = left.twinx()
    right.plot(strengths, [r["perplexity_smollm2"] for r in rows["curve"]], "^-", color="tab:red", label="perplexity (SmolLM2)")
    right.axhline(rows["perplexity_smollm2_of_inputs"], color="tab:red", linestyle=":", linewidth=1)
    right.set_ylabel("perplexity under SmolLM2 (dotted: the inputs)", color="tab:red")
    left.legend(fontsize=7, loc="upper right")
    left.set_title("variations (SDEdit): distance from the input against strength")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)


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


def part_infill(args, results: dict, splits: Splits) -> None:
    from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    split = SentenceSegmenter(SegmentationConfig(mode="sentences", max_segments=None)).split
    cases = {name: [c for c in (blank_middle(s, split) for s in texts) if c][:count]
             for name, texts, count in (("validation", splits.validation[2 * NUM_PAIRS:], NUM_INFILL_VALIDATION),
                                        ("test", splits.test, NUM_INFILL))}
    pipe = LatentDiffusionTextPipeline.from_pretrained(ladder_pipeline(args))
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
    peer, tokenizer = load_adapter(peer_path(argparse.Namespace(work_dir=args.ladder_dir))), peer_tokenizer()
    prompts = [" ".join(parts[: parts.index(None)]) for parts in parts_list]
    continuations = peer_generate(peer, tokenizer, prompts, 16, seed=0, sample=False, max_new_tokens=40)
    peer_fills = []
    for parts, text in zip(parts_list, continuations):
        first = (split(text) or [""])[0]
        peer_fills.append((parts, [p if p is not None else first for p in parts], first))
    rows["systems"]["peer"] = {**infill_scores(parts_list, list(refs), peer_fills), "method": "greedy continuation of the "
                               "sentences before the blank (an AR model cannot read the text after it)",
                               "examples": [f[2] for f in peer_fills[:3]]}
    print(json.dumps({k: {m: v for m, v in s.items() if m != "examples"} for k, s in rows["systems"].items()}), flush=True)


# ---- AG News: classifier guidance vs classifier-free guidance ---------------------------------------
def agnews_splits() -> dict[str, list[tuple[str, str]]]:
    pairs = load_labeled_texts(str(data_root() / "ag_news" / "train.csv"), "content", "label")
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(0)).tolist()
    rows = [(pairs[i][0], AGNEWS_NAMES[pairs[i][1].strip()]) for i in order]
    return {"train": rows[:-1000], "validation": rows[-1000:-500], "test": rows[-500:]}


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["content", "label"])
        writer.writerows(rows)
    return path


def part_agnews(args, results: dict, splits: Splits) -> None:
    work = Path(args.work_dir)
    train = write_csv(work / "agnews-train.csv", agnews_splits()["train"])
    for kind, extra in (("uncond", []), ("class", ["data.label_names=null"])):
        run = work / f"agnews-{kind}"
        if not (run / "pipeline").exists():
            print(f"== AG News {kind} DiT: {AGNEWS_DIT_MINUTES} min", flush=True)
            run_cli(["train-diffusion", "--config", str(ROOT / f"configs/diffusion/flagship/concept_agnews_{kind}.yaml"),
                     f"autoencoder={autoencoder_dir(Path(args.ladder_dir), args.flagship)}", f"data.source={train}", f"training.output_dir={run}",
                     f"training.max_minutes={AGNEWS_DIT_MINUTES}", "training.eval_every=0", "training.overwrite_output_dir=true", *extra],
                    run.with_suffix(".log"))
        results.setdefault("agnews", {})[kind] = last_record(run)
        save_results(results)


def topic_judge(train_rows):
    """The independent judge: logistic regression on mpnet features of real AG News items."""
    from sklearn.linear_model import LogisticRegression

    from latentdlm.evaluation.generation import sentence_features

    judge = LogisticRegression(max_iter=2000).fit(sentence_features([t for t, _ in train_rows], "mpnet"), [c for _, c in train_rows])
    return lambda texts: judge.predict(sentence_features(texts, "mpnet"))


def guided_texts(pipe, count: int, seed: int, **kwargs) -> tuple[list[str], list[str]]:
    wanted = [AGNEWS_NAMES[str(1 + i % 4)] for i in range(count)]
    return pipe(num_samples=count, class_labels=wanted, num_inference_steps=20, seed=seed, show_progress=False, **kwargs).texts, wanted


def part_guidance(args, results: dict, splits: Splits) -> None:
    from latentdlm.diffusion.classifier import LatentClassifier
    from latentdlm.evaluation.generation import diversity, mauve_seeds, sentence_features
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
    from latentdlm.training.classifier import train_latent_classifier

    work = Path(args.work_dir)
    data = agnews_splits()
    uncond = LatentDiffusionTextPipeline.from_pretrained(work / "agnews-uncond" / "pipeline")
    conditional = LatentDiffusionTextPipeline.from_pretrained(work / "agnews-class" / "pipeline")
    folder = work / "agnews-classifier"
    if not folder.exists():
        rows = data["train"][:4000]
        model, record = train_latent_classifier(uncond, [t for t, _ in rows], [c for _, c in rows], CLASSIFIER_MINUTES)
        model.save_pretrained(folder)
        (folder / "training.json").write_text(json.dumps(record, indent=2))
    classifier = LatentClassifier.from_pretrained(folder)
    judge = topic_judge(data["train"][:4000])
    real = data["test"]
    rows = results["guidance"] = {"classifier": json.loads((folder / "training.json").read_text()),
                                  "judge_accuracy_on_real_test": float((judge([t for t, _ in real]) == [c for _, c in real]).mean())}
    accuracy = lambda texts, wanted: float((judge(texts) == wanted).mean())  # noqa: E731
    systems = {"classifier_guidance": (uncond, "classifier_scale", CLASSIFIER_SCALES, {"classifier": classifier}),
               "cfg": (conditional, "guidance_scale", CFG_SCALES, {})}
    real_features = sentence_features([t for t, _ in real], "mpnet")
    for name, (pipe, knob, scales, extra) in systems.items():
        sweep = {str(s): accuracy(*guided_texts(pipe, NUM_VALIDATION, 1, **{knob: s}, **extra)) for s in scales}
        best = float(max(sweep, key=sweep.get))
        texts, wanted = guided_texts(pipe, NUM_TEST, 0, **{knob: best}, **extra)
        mauve = mauve_seeds(real_features, sentence_features(texts, "mpnet"))
        rows[name] = {"validation_accuracy_by_scale": sweep, knob: best, "accuracy": accuracy(texts, wanted),
                      "mauve_mpnet": mauve["mean"], "mauve_mpnet_std": mauve["std"], "diversity": diversity(texts),
                      "examples": [{"class": c, "text": t} for t, c in list(zip(texts, wanted))[:4]]}
        print(json.dumps({name: {k: v for k, v in rows[name].items() if k != "examples"}}), flush=True)
        save_results(results)
    unguided, wanted = guided_texts(uncond, NUM_TEST, 0, classifier=classifier, classifier_scale=0.0)
    rows["unguided_accuracy"] = accuracy(unguided, wanted)  # chance level is 0.25: what guidance adds


# ---- the picture -----------------------------------------------------------------------------------
def part_map(args, results: dict, splits: Splits) -> None:
    """A PCA map of paragraph latents (the concept designs: mean sentence embedding) of AG News test items by topic
    and ROCStories validation stories, with the slerp path from a story to a Sports item drawn on it."""
    from latentdlm.evaluation.plots import paragraph_vectors, plot_latent_map
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = LatentDiffusionTextPipeline.from_pretrained(ladder_pipeline(args))
    news = agnews_splits()["test"][:300]
    stories = splits.validation[-100:]
    texts, labels = [t for t, _ in news] + stories, [c for _, c in news] + ["ROCStories"] * len(stories)
    encoded = pipe.encode(texts)
    source, target = stories[0], next(t for t, c in news if c == "Sports")
    path = pipe.interpolate(source, target, num_points=7)
    png = RESULTS.with_name("latent_space_map.png")
    plot_latent_map(png, paragraph_vectors(encoded.latents, encoded.segment_mask), labels,
                    paragraph_vectors(path.latents, path.segment_mask), [f"{t:.2f}" for t in path.positions],
                    title=f"design ({args.flagship}) latents (mean sentence embedding), PCA\na story -> Sports path")
    results["map"] = {"png": str(png.relative_to(ROOT)), "points": len(texts), "path": {"source": source, "target": target,
                                                                                       "texts": path.texts}}


# ---- the report --------------------------------------------------------------------------------
SUMMARY_KEYS = ["interp_new_text_rate", "interp_monotonic_rate", "infill_kept_verbatim_rate", "classifier_guidance_accuracy",
                "cfg_accuracy"]


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
    return out


def plot(results: dict, path: Path) -> None:
    from latentdlm.evaluation.interpolation import plot_interpolation_curves

    curves = {f"{name} {setting}": row for name, settings in results.get("interp", {}).get("systems", {}).items()
              for setting, row in settings.items()}
    if curves:
        plot_interpolation_curves(curves, path)


PARTS = {"interp": part_interp, "robust": part_robust, "vary": part_vary, "infill": part_infill, "agnews": part_agnews, "guidance": part_guidance, "map": part_map}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", action="append", choices=list(PARTS), required=True)
    parser.add_argument("--work-dir", default="runs/latent-space")
    parser.add_argument("--ladder-dir", default="runs/ladder", help="benchmarks/quality_ladder.py's work folder (its designs, the peer)")
    parser.add_argument("--flagship", choices=["b", "c"], default="c", help="the ladder's concept design to run on (c: the best)")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    torch.set_num_threads(2)
    splits, results = Splits(), load_results(RESULTS)
    run_parts(PARTS, args.only, args, results, splits, save_results)


if __name__ == "__main__":
    main()
