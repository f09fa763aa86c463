"""The quality ladder on ROCStories: latentdlm tiny vs the pretrained flagship's two latent designs vs the
model a user would pick instead, SmolLM2-135M fine-tuned as a plain autoregressive LM on the same stories.

    python benchmarks/quality_ladder.py --only PART [--only PART ...]   # parts, each merged into one JSON

Budget: AUTOENCODER_MINUTES + DIT_MINUTES of training per latentdlm system, the same total for the peer
(the tiny system is the generation benchmark's best, trained for its own minutes, stated in the JSON); the
conditional tasks add the same minutes to each system, stated in their parts.
Parts (each reuses what the earlier ones saved under --work-dir, default runs/ladder):
  plan_noise    (b)'s DiT first, on the frozen encoder's latents; the decoders of (b), (c) and (d) then train with
                the sphere noise that matches its samples' distance to the nearest real sentence
  plan          the concept designs' plan chosen on validation: (b)'s DiT with each noise_shift of PLAN_DITS, each
                sampler of PLAN_SAMPLERS, scored by the plan alone (nearest training sentences); the winner serves
                (c), (d) (part dit) and samples every latentdlm system after it
  autoencoders  design (a) minilm_smollm2 (Perceiver latents), design (b) minilm_smollm2_concept
                (frozen MiniLM sentence embeddings), (c) = (b) with model.decoder_context=1 (the decoder also
                reads the previous sentence), (d) = (b) decoded as one stream per story (model.decoder_stream) and
                (e) = (b) with every sentence decoded in parallel from the whole story's latents (model.decoder_plan),
                on the training stories' sentences
  recon         reconstruction of held-out stories (rocstories/dev.jsonl[:RECON_COUNT]): BLEU, exact match,
                meaning (MiniLM cosine, BERTScore F1 on mpnet) for tiny, (a), (b)
  dit           the latent DiT of each design (configs/diffusion/flagship/*_roc_uncond.yaml); (c), (d) use (b)'s
  peer          SmolLM2-135M + LoRA (same rank as the decoders) fine-tuned on the stories, bf16, same minutes
  decoding      one decoding rule for every system, the peer included (DECODING_RULES: greedy + no-repeat,
                top-p, temperature, repetition penalty), chosen on NUM_VALIDATION validation stories per system
  uncond        NUM_EVAL stories per system, decoded by the chosen rule, scored on the test stories: MAUVE (mpnet and MiniLM features,
                3 k-means seeds), coherence ratio, diversity, memorization, repeated 4-grams, perplexity under
                the untouched SmolLM2
  title2story   title -> story: the --flagship design (b, c or d) with a title-conditioned DiT vs the peer continued on titled
                prompts, --dit-minutes more each; guidance chosen on validation titles, test scored once
  split         the loss split between plan and decoder (a, b, c, d): DiT samples decoded by their nearest
                training sentence, the consecutive-latent cosine, and the decoder's ceiling on real latents
  curve         quality against training minutes: the peer's snapshots, the best concept design with a shorter DiT
  speed         stories per second at batch 1 and 32
  demo          the README's first command from a fresh clone of HEAD with an empty model cache, timed
  demo_heldout  the demo's samples against the paragraphs its DiT never saw (decoding chosen on half of
                them, the other half scored once): MAUVE, coherence, set diversity
Summaries (rougeL_debian*) are benchmarks/text_to_text.py's part debian: the summary reads them from text_to_text.json.
Results: benchmarks/results/quality_ladder.json (+ .png). Splits as benchmarks/generation.py. Over 300
lines: one part per measured question of the ladder; the systems live in flagship.py, the tasks in ladder_tasks.py.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import plots
import torch
from flagship import (
    AUTOENCODER_MINUTES, CONCEPT_DESIGNS, DECODING_RULES, DESIGN_OVERRIDES, DESIGNS, DIT_MINUTES, DIT_PRESETS, ROC_AUTOENCODER,
    TINY_PIPELINE, autoencoder_dir, finetune_smollm2, judged_examples, latentdlm_generate, load_adapter, peer_generate, peer_path,
    peer_tokenizer, perplexity_judge, pipeline_dir, pooled_perplexity, save_adapter, share_denoiser, shared_rule, stage_record,
    token_nlls, train_stage,
)
from ladder_tasks import part_title2story
from runner import RESULTS_DIR, ROOT, Results, load_pipeline, log, run_benchmark, run_cli, timed, torch_threads
from scoring import (
    NUM_EVAL, Scorer, consecutive_latent_cosine, heldout_halves, plan_retrieval, rocstories, segment_bank, speed, unit_vectors,
)

RECON_COUNT = 200
SYSTEMS = ("tiny", "a", "b", "c", "d", "e", "peer")
NUM_VALIDATION = 200  # stories per system and rule
# the concept designs' plan, chosen on validation (part plan): (b)'s DiT trained with each of these overrides,
# sampled by each sampler; "shift_1" is part plan_noise's run (the plain schedule)
PLAN_DITS = {"shift_1": ["objective.noise_shift=1"], "shift_2": ["objective.noise_shift=2"], "shift_4": ["objective.noise_shift=4"]}
PLAN_SAMPLERS = {"dpm_20": {"scheduler": "dpm", "num_inference_steps": 20}, "dpm_50": {"scheduler": "dpm", "num_inference_steps": 50},
                 "ddpm_250": {"scheduler": "ddpm", "num_inference_steps": 250}}
SAMPLES_KEPT = 30  # unconditional samples per system kept in the JSON, to read together


# ---- parts -----------------------------------------------------------------------------------------
def part_plan_noise(args, results: dict) -> None:
    """The concept designs' sphere noise, chosen from the plan: (b)'s DiT trains first (concept latents are the
    frozen encoder's, whatever the decoder: an untrained autoencoder serves); its NUM_EVAL samples and the test
    stories' real sentences are each compared with the nearest of the validation stories' sentences. A new real
    sentence is no closer than c_real to the bank either, so only the samples' extra distance is the DiT's error:
    an error orthogonal to the real sentence gives cos(sample, nearest) = c_real cos(error) (spherical cosine law),
    so cos(error) = c_samples / c_real, and projected Gaussian noise of std s per dimension moves a sqrt(d)-radius
    latent to cosine 1/sqrt(1 + s^2): s = sqrt((c_real / c_samples)^2 - 1). The decoders of the concept designs
    train with it. The DiT is (b)'s in part dit."""
    run = plan_run(args.work_dir, "shift_1")
    train_stage("train-autoencoder", ROOT / f"configs/autoencoder/{DESIGNS['b']}.yaml", encoder_only_run(args.work_dir), 0.05, ROC_AUTOENCODER)
    train_stage("train-diffusion", ROOT / f"configs/diffusion/flagship/{DIT_PRESETS['b']}.yaml", run, args.dit_minutes,
                [f"autoencoder={encoder_only_run(args.work_dir) / 'autoencoder'}", "training.eval_every=0", *PLAN_DITS["shift_1"]])
    pipe = load_pipeline(run / "pipeline")
    sampled = pipe(num_samples=NUM_EVAL, seed=0, batch_size=64, show_progress=False, output_type="latent", **PLAN_SAMPLERS["dpm_20"])
    _, bank = segment_bank(pipe, rocstories().validation)
    _, real = segment_bank(pipe, rocstories().test)
    nearest = {"samples": (unit_vectors(sampled.latents, sampled.segment_mask) @ bank.T).max(dim=1).values,
               "real_test_sentences": (real @ bank.T).max(dim=1).values}
    c_samples, c_real = (float(nearest[k].mean()) for k in ("samples", "real_test_sentences"))
    quartiles = torch.tensor([0.25, 0.5, 0.75])
    results["plan_noise"] = {"dit": {"preset": DIT_PRESETS["b"], **stage_record(run)},
                             "nearest_validation_cosine": {k: {"mean": float(v.mean()), "quartiles": v.quantile(quartiles).tolist()}
                                                           for k, v in nearest.items()},
                             "latent_noise": round(math.sqrt(max((c_real / c_samples) ** 2 - 1, 0.0)), 3)}
    log(results["plan_noise"], "plan noise")


def encoder_only_run(work: Path) -> Path:
    """Part plan_noise's (b) autoencoder trained for minutes only: the frozen encoder's latents every plan DiT trains on."""
    return work / "b" / "encoder-only"


def plan_run(work: Path, dit: str) -> Path:
    """(b)'s DiT run of one PLAN_DITS entry (shift_1: part plan_noise's)."""
    return work / "b" / ("plan-run" if dit == "shift_1" else f"plan-run-{dit}")


def part_plan(args, results: dict) -> None:
    """The plan chosen on validation, on the concept latents (the split finds the plan losing most, not the decoder):
    (b)'s DiT trained --dit-minutes with each of PLAN_DITS (noise_shift s divides the SNR by s^2: more of the training
    draws and sampler steps where two sentence latents become distinguishable), each sampled by each of PLAN_SAMPLERS;
    scored by the plan alone on the validation stories (every sampled sentence latent replaced by its nearest
    training sentence): MAUVE (mpnet) + coherence ratio. The winner's DiT serves (c) and (d) in part dit, its
    sampler every latentdlm system in the parts after it."""
    splits, work = rocstories(), args.work_dir
    score, bank = Scorer(splits.validation, splits.train), None
    rows = results.setdefault("plan", {"split": "validation (train.jsonl[4500:5000])", "dits": PLAN_DITS, "samplers": PLAN_SAMPLERS,
                                       "criterion": "plan retrieval MAUVE (mpnet) + coherence ratio", "candidates": {}})
    for dit, overrides in PLAN_DITS.items():
        run = plan_run(work, dit)
        train_stage("train-diffusion", ROOT / f"configs/diffusion/flagship/{DIT_PRESETS['b']}.yaml", run, args.dit_minutes,
                    [f"autoencoder={encoder_only_run(work) / 'autoencoder'}", "training.eval_every=0", *overrides])
        pipe = load_pipeline(run / "pipeline")
        bank = bank or segment_bank(pipe, splits.train)
        for name, sampler in PLAN_SAMPLERS.items():
            key = f"{dit}/{name}"
            if key in rows["candidates"] and not args.rerun:
                continue
            sampled = pipe(num_samples=len(splits.validation), seed=1, batch_size=64, show_progress=False, output_type="latent", **sampler)
            retrieved = plan_retrieval(*bank, sampled)
            row = score(retrieved)
            rows["candidates"][key] = {**{k: row[k] for k in ("mauve_mpnet", "mauve_mpnet_std", "mauve_minilm", "coherence_ratio", "diversity_set")},
                                       "consecutive_latent_cosine": consecutive_latent_cosine(sampled.latents, sampled.segment_mask),
                                       "dit": stage_record(run), "examples": retrieved[:2]}
            log(rows["candidates"][key], key)
            results.save()
    quality = {k: r["mauve_mpnet"] + r["coherence_ratio"] for k, r in rows["candidates"].items()}
    rows["chosen"] = max(quality, key=quality.get)
    log({"chosen": rows["chosen"]}, "plan")


def chosen_plan(results: dict) -> str:
    """"DIT/SAMPLER" (a PLAN_DITS and a PLAN_SAMPLERS entry) that part plan chose; before it runs, plan_noise's DiT and DPM-20."""
    return results.get("plan", {}).get("chosen", "shift_1/dpm_20")


def plan_dit(results: dict) -> str:
    """The chosen plan's PLAN_DITS entry."""
    return chosen_plan(results).split("/")[0]


def plan_sampler(results: dict) -> dict:
    """The chosen plan's sampler, as pipeline arguments."""
    return PLAN_SAMPLERS[chosen_plan(results).split("/")[1]]


def replace_row(rows: dict, system: str, row: dict) -> None:
    """A system's row measured again (--rerun, or a new plan): the one it replaces kept under rows["earlier"]."""
    if system in rows["systems"]:
        rows.setdefault("earlier", {}).setdefault(system, []).append(rows["systems"][system])
    rows["systems"][system] = row


def part_autoencoders(args, results: dict) -> None:
    work = args.work_dir
    for design in args.design:
        preset = DESIGNS[design]
        run = work / design / "autoencoder-run"
        noise = [f"objective.latent_noise={results['plan_noise']['latent_noise']}"] if design in CONCEPT_DESIGNS and "plan_noise" in results else []
        try:
            train_stage("train-autoencoder", ROOT / f"configs/autoencoder/{preset}.yaml", run, args.autoencoder_minutes,
                        ROC_AUTOENCODER + DESIGN_OVERRIDES.get(design, []) + noise)
        except SystemExit:  # e.g. stopped by min_latent_gap: the run's own message and its last step kept, then the part fails
            results.setdefault("autoencoders", {})[design] = {"preset": preset, **stopped_record(run)}
            results.save()
            raise
        results.setdefault("autoencoders", {})[design] = {"preset": preset, **stage_record(run)}
        results.save()


def stopped_record(run: Path) -> dict:
    """A training run that stopped with an error: its last `error:` line and its last logged step."""
    errors = [line[line.index("error: ") :] for line in run.with_suffix(".log").read_text().splitlines() if "error: " in line]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    return {"stopped": errors[-1] if errors else "failed, see the log", "log": str(run.with_suffix(".log")),
            "last_step": last["step"], "train_minutes": last["train_minutes"], "loss": last["loss"]}


def part_recon(args, results: dict) -> None:
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.evaluation.reconstruction import meaning_similarity, reconstruction_metrics

    work = args.work_dir
    texts = rocstories().test[:RECON_COUNT]
    rows = results.setdefault("recon", {"split": f"rocstories/dev.jsonl[:{RECON_COUNT}]", "systems": {}})
    for system in (s for s in args.system if s != "peer"):
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
        log(rows["systems"][system], system)
        results.save()


def bertscore_f1(references: list[str], candidates: list[str]) -> float:
    """BERTScore F1 on the local all-mpnet-base-v2 (its 12 layers' last; no baseline rescaling offline)."""
    from bert_score import score

    from latentdlm.evaluation.generation import mpnet_path

    _, _, f1 = score(candidates, references, model_type=mpnet_path(), num_layers=12, lang="en", verbose=False)
    return float(f1.mean())


def part_dit(args, results: dict) -> None:
    work = args.work_dir
    for design in args.design:
        if design in ("c", "d", "e"):  # (b)'s DiT chosen by part plan: the same latents (frozen MiniLM), only the decoder differs
            dit = plan_dit(results)
            if results.get("dit", {}).get(design, {}).get("plan_dit", "shift_1") != dit:  # the plan changed: share the new one
                shutil.rmtree(pipeline_dir(work, design), ignore_errors=True)
            share_denoiser(plan_run(work, dit) / "pipeline", autoencoder_dir(work, design), pipeline_dir(work, design))
            results.setdefault("dit", {})[design] = {"shared_with": "b", "plan_dit": dit, **stage_record(plan_run(work, dit))}
            results.save()
            continue
        if design == "b" and (plan_run(work, "shift_1") / "pipeline").exists():  # trained first, by part plan_noise
            share_denoiser(plan_run(work, "shift_1") / "pipeline", autoencoder_dir(work, "b"), pipeline_dir(work, "b"))
            results.setdefault("dit", {})["b"] = {"trained_by": "plan_noise", **results["plan_noise"]["dit"]}
            results.save()
            continue
        preset = DIT_PRESETS[design]
        run = work / design / "diffusion-run"
        train_stage("train-diffusion", ROOT / f"configs/diffusion/flagship/{preset}.yaml", run, args.dit_minutes,
                    [f"autoencoder={autoencoder_dir(work, design)}", "training.eval_every=0"])
        results.setdefault("dit", {})[design] = {"preset": preset, **stage_record(run)}
        results.save()


def part_peer(args, results: dict) -> None:
    minutes = args.autoencoder_minutes + args.dit_minutes
    snapshots = {m: peer_path(args.work_dir, f"uncond-{m:g}min") for m in (minutes / 3, 2 * minutes / 3)}
    model, record = finetune_smollm2([("", story) for story in rocstories().train], minutes, snapshots=snapshots)
    save_adapter(model, peer_path(args.work_dir))
    results["peer"] = {"task": "stories from BOS", **record}


def system_model(work: Path, system: str) -> Path:
    return peer_path(work) if system == "peer" else pipeline_dir(work, system)


def stories(model: Path, count: int, decoding: dict | None, seed: int, sampler: dict) -> tuple[list[str], float]:
    """`count` unconditional stories of one system (a peer adapter file or a pipeline folder, sampled by `sampler`) and
    the seconds taken."""
    if model.suffix == ".safetensors":
        return timed(lambda: peer_generate(load_adapter(model), peer_tokenizer(), [""] * count, 32, seed, decoding))
    pipe = load_pipeline(model)
    return timed(lambda: latentdlm_generate(pipe, count, 64, seed, decoding, sampler))


def part_decoding(args, results: dict) -> None:
    """NUM_VALIDATION stories of every system under every rule, scored on the validation stories; the rule
    with the best mean MAUVE (mpnet) over the systems measured under all rules decodes them all in uncond."""
    score = Scorer(rocstories().validation, rocstories().train)
    rows = results.setdefault("decoding", {"split": "validation (train.jsonl[4500:5000])", "rules": DECODING_RULES, "systems": {}})
    for system in args.system:
        if not system_model(args.work_dir, system).exists():
            continue
        for name, rule in DECODING_RULES.items():
            if name not in rows["systems"].get(system, {}) or args.rerun:
                texts, _ = stories(system_model(args.work_dir, system), NUM_VALIDATION, rule, seed=1, sampler=plan_sampler(results))
                row = score(texts)
                rows["systems"].setdefault(system, {})[name] = {**{k: row[k] for k in ("mauve_mpnet", "mauve_mpnet_std",
                                                                                       "coherence_ratio", "diversity_set")},
                                                                "examples": texts[:2]}
                log(rows["systems"][system][name], f"{system} {name}")
                results.save()
    complete = [s for s, by_rule in rows["systems"].items() if len(by_rule) == len(DECODING_RULES)]
    rows["rule"] = max(DECODING_RULES, key=lambda n: sum(rows["systems"][s][n]["mauve_mpnet"] for s in complete))


def part_uncond(args, results: dict) -> None:
    score = Scorer(rocstories().test, rocstories().train)
    tokenizer, plain = perplexity_judge()
    rows = results.setdefault("uncond", {"split": "test (dev.jsonl[:500])", "systems": {}})
    rows["decoding"], rows["diversity_set_real"] = shared_rule(results), score.real_diversity
    for system in args.system:
        model = system_model(args.work_dir, system)
        if system in rows["systems"] and not args.rerun:
            continue
        if not model.exists():
            print(f"== {system}: not trained yet, skipped", flush=True)
            continue
        row = stories_scored(system, model, score, tokenizer, plain, rows["decoding"], plan_sampler(results))
        replace_row(rows, system, row if system == "peer" else {**row, "plan": chosen_plan(results)})
        results.save()


def stories_scored(system: str, model: Path, score: Scorer, tokenizer, plain, decoding: dict | None, sampler: dict) -> dict:
    """NUM_EVAL unconditional stories of one system, scored."""
    texts, seconds = stories(model, NUM_EVAL, decoding, seed=0, sampler=sampler)
    nlls = token_nlls(texts, tokenizer, plain)
    row = {**score(texts), "decoding": decoding, "perplexity_smollm2": pooled_perplexity(nlls),  # each row its own rule
           "seconds_per_story": seconds / NUM_EVAL, "examples": judged_examples(texts, nlls), "samples": texts[:SAMPLES_KEPT]}
    log(row, system)
    return row


def part_split(args, results: dict) -> None:
    """Where the loss is, per latentdlm system: (i) the plan, its NUM_EVAL DiT samples (seed 0, as in uncond)
    with each segment replaced by its nearest training sentence (cosine on the latents), scored on the test
    stories, and the consecutive-latent cosine of the samples against the real test stories'; (ii) the decoder
    ceiling, the real latents of the validation stories decoded by the system's decoder (the shared rule),
    scored against the test stories (not against their own sources, which would inflate MAUVE)."""
    from latentdlm.autoencoder.decoding import DecodingConfig, decode_with_settings

    splits = rocstories()
    score = Scorer(splits.test, splits.train)
    rows = results.setdefault("split", {"systems": {}})
    rule = DecodingConfig.from_dict(shared_rule(results) or {})
    for system in (s for s in args.system if s in ("a", "b", "c", "d", "e")):
        folder = pipeline_dir(args.work_dir, system)
        if not folder.exists() or (system in rows["systems"] and not args.rerun):
            continue
        pipe = load_pipeline(folder)
        sampled = pipe(num_samples=NUM_EVAL, seed=0, batch_size=64, show_progress=False, output_type="latent", **plan_sampler(results))
        retrieved = plan_retrieval(*segment_bank(pipe, splits.train), sampled)
        real = pipe.encode(splits.test)
        validation = pipe.encode(splits.validation)
        ceiling = decode_with_settings(pipe.autoencoder, validation, rule, torch.Generator().manual_seed(0), 64)
        replace_row(rows, system, {
            "plan": chosen_plan(results),
            "plan_retrieval": {**score(retrieved), "examples": retrieved[:2]},
            "consecutive_latent_cosine": {"samples": consecutive_latent_cosine(sampled.latents, sampled.segment_mask),
                                          "real_test_stories": consecutive_latent_cosine(real.latents, real.segment_mask)},
            "decoder_ceiling": {**score(ceiling), "examples": ceiling[:2]},
        })
        log(rows["systems"][system], system)
        results.save()


def part_curve(args, results: dict) -> None:
    """Quality against training minutes: the peer's adapter snapshots (a third and two thirds of its
    minutes) and the best concept design with a DiT trained a third of --dit-minutes on (b)'s latents
    (which (c) shares); the final points are uncond's."""
    work = args.work_dir
    best = best_latentdlm(results)
    short = work / "b" / "diffusion-run-short"
    train_stage("train-diffusion", ROOT / f"configs/diffusion/flagship/{DIT_PRESETS['b']}.yaml", short, args.dit_minutes / 3,
                [f"autoencoder={autoencoder_dir(work, 'b')}", "training.eval_every=0"])
    pipeline = work / best / "diffusion-run-short" / "pipeline"
    share_denoiser(short / "pipeline", autoencoder_dir(work, best), pipeline)
    score = Scorer(rocstories().test, rocstories().train)
    tokenizer, plain = perplexity_judge()
    points = results.setdefault("curve", {})
    for system in (best, "peer"):
        points.setdefault(system, {})
    budget = args.autoencoder_minutes + args.dit_minutes
    models = {(best, args.autoencoder_minutes + args.dit_minutes / 3): pipeline,
              **{("peer", m): peer_path(args.work_dir, f"uncond-{m:g}min") for m in (budget / 3, 2 * budget / 3)}}
    for (system, minutes), model in models.items():
        if f"{minutes:g}" not in points[system]:
            row = stories_scored(system, model, score, tokenizer, plain, shared_rule(results), plan_sampler(results))
            points[system][f"{minutes:g}"] = {k: row[k] for k in ("mauve_mpnet", "mauve_mpnet_std", "coherence_ratio", "examples")}
            results.save()


def part_speed(args, results: dict) -> None:
    tokenizer, peer = peer_tokenizer(), load_adapter(peer_path(args.work_dir))
    best = best_latentdlm(results)
    pipe = load_pipeline(pipeline_dir(args.work_dir, best))
    rule = shared_rule(results)
    ours = lambda size, seed: latentdlm_generate(pipe, size, size, seed, rule, plan_sampler(results))  # noqa: E731
    theirs = lambda size, seed: peer_generate(peer, tokenizer, [""] * size, size, seed, rule)  # noqa: E731
    results["speed"] = {"latentdlm_system": best, **{name: {"batch_1": speed(fn, 1, 4), "batch_32": speed(fn, 32, 1)}
                                                      for name, fn in (("latentdlm", ours), ("peer", theirs))}}


def readme_main_command() -> str:
    """The README's first command: what a new user runs."""
    text = (ROOT / "README.md").read_text()
    return text.split("```bash\n", 1)[1].split("\n", 1)[0]


def part_demo(args, results: dict) -> None:
    """`latentdlm demo` as a new user runs it: a fresh clone of HEAD, a new venv, an empty model cache
    (GGUF conversion and corpus embeddings redone), the README's first command, timed end to end."""
    work = args.work_dir / "fresh-clone"
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


def part_demo_heldout(args, results: dict) -> None:
    """The demo's pipeline (--demo-dir, else a `latentdlm demo` run under the work folder) on the paragraphs
    its DiT never trained on (its config's heldout_texts), in two halves: on the first (validation) its own
    decoding and each of DECODING_RULES, the best MAUVE (mpnet) + coherence ratio chosen; on the second
    (test) the chosen rule and its own, scored once: MAUVE (mpnet, MiniLM), coherence, LD4LG's set diversity
    beside the real paragraphs'."""
    from latentdlm.autoencoder.decoding import DecodingConfig

    out = args.demo_dir or args.work_dir / "demo"
    if not (out / "report.md").exists():
        run_cli(["demo", "--output-dir", str(out), "--overwrite"], args.work_dir / "demo.log")
    validation, test, training = heldout_halves(out / "diffusion-run")
    pipe = load_pipeline(out / "diffusion-run" / "pipeline")
    rules = {"pipeline_default": pipe.decoding.to_dict(), **DECODING_RULES}
    rows = results.setdefault("demo_heldout", {})
    rows.update({"demo_dir": str(out), "split": f"the DiT's {len(validation) + len(test)} held-out paragraphs: {len(validation)} validation, {len(test)} test",
                 "rules": rules, "criterion": "validation MAUVE (mpnet) + coherence ratio"})
    rows.setdefault("validation", {})
    score = Scorer(validation, training)
    for name, rule in rules.items():
        same = [n for n in rows["validation"] if n in rules and n != name and DecodingConfig.from_dict(rules[n]) == DecodingConfig.from_dict(rule)]
        if same and name not in rows["validation"]:  # the pipeline's own decoding is one of the rules: measured once
            rows["validation"][name] = rows["validation"][same[0]]
        if name not in rows["validation"] or args.rerun:
            samples = latentdlm_generate(pipe, len(validation), 32, seed=1, decoding=rule)
            row = score(samples)
            rows["validation"][name] = {**{k: row[k] for k in ("mauve_mpnet", "mauve_mpnet_std", "coherence_ratio", "diversity_set")},
                                        "examples": samples[:2]}
            log(rows["validation"][name], f"validation {name}")
            results.save()
    rows["rule"] = max(rules, key=lambda n: rows["validation"][n]["mauve_mpnet"] + rows["validation"][n]["coherence_ratio"])
    score = Scorer(test, training)
    rows["diversity_set_real"], tested = score.real_diversity, rows.setdefault("test", {})
    for name in dict.fromkeys([rows["rule"], "pipeline_default"]):
        if name not in tested or args.rerun:
            samples = latentdlm_generate(pipe, len(test), 32, seed=0, decoding=rules[name])
            tested[name] = {**score(samples), "examples": samples[:3] + samples[-3:]}
            log(tested[name], f"test {name}")
            results.save()


# ---- the report --------------------------------------------------------------------------------
def best_latentdlm(results: dict) -> str:
    systems = {k: v for k, v in results.get("uncond", {}).get("systems", {}).items() if k != "peer"}
    return max(systems, key=lambda s: systems[s]["mauve_mpnet"]) if systems else "b"


SUMMARY_KEYS = [
    "mauve_mpnet_best_latentdlm", "mauve_mpnet_peer", "mauve_gap_to_peer", "coherence_ratio_best_latentdlm", "coherence_ratio_peer",
    "diversity_set_best_latentdlm", "diversity_set_peer", "diversity_set_real", "mauve_mpnet_plan_retrieval",
    "mauve_mpnet_decoder_ceiling", "recon_bleu_a", "recon_cosine_a", "recon_cosine_b", "demo_mauve_mpnet_heldout",
    "demo_diversity_set", "demo_minutes_fresh_clone", "speedup_batch1_vs_peer", "rougeL_debian", "rougeL_debian_lead1", "rougeL_debian_peer",
]


def summary(results: dict) -> dict:
    """The issue's keys (None until the part that measures them has run)."""
    out = dict.fromkeys(SUMMARY_KEYS)
    recon = results.get("recon", {}).get("systems", {})
    if "a" in recon:
        out["recon_bleu_a"], out["recon_cosine_a"] = recon["a"]["bleu"], recon["a"]["cosine_minilm"]
    concept = next((d for d in CONCEPT_DESIGNS if d in recon), None)  # (b), else the decoders that share its latents
    if concept:
        out["recon_cosine_b"] = recon[concept]["cosine_minilm"]
    systems = results.get("uncond", {}).get("systems", {})
    if any(s != "peer" for s in systems):
        best = systems[best_latentdlm(results)]
        out["mauve_mpnet_best_latentdlm"], out["coherence_ratio_best_latentdlm"] = best["mauve_mpnet"], best["coherence_ratio"]
        out["diversity_set_best_latentdlm"] = best.get("diversity_set")
    # the peer's code, budget and decoding (top-p 0.9) did not change with issue 23's fixes: until part peer runs
    # again, its earlier row stands (it has no set diversity: that metric came with the fixes)
    peer = systems.get("peer") or results.get("before_fixes", {}).get("uncond", {}).get("systems", {}).get("peer")
    if peer:
        out["mauve_mpnet_peer"], out["coherence_ratio_peer"] = peer["mauve_mpnet"], peer["coherence_ratio"]
        out["diversity_set_peer"] = peer.get("diversity_set")
    out["diversity_set_real"] = results.get("uncond", {}).get("diversity_set_real")
    split = results.get("split", {}).get("systems", {}).get(best_latentdlm(results))
    if split:
        out["mauve_mpnet_plan_retrieval"] = split["plan_retrieval"]["mauve_mpnet"]
        out["mauve_mpnet_decoder_ceiling"] = split["decoder_ceiling"]["mauve_mpnet"]
    if out["mauve_mpnet_peer"] is not None and out["mauve_mpnet_best_latentdlm"] is not None:
        out["mauve_gap_to_peer"] = out["mauve_mpnet_peer"] - out["mauve_mpnet_best_latentdlm"]
    if "speed" in results:
        out["speedup_batch1_vs_peer"] = results["speed"]["latentdlm"]["batch_1"] / results["speed"]["peer"]["batch_1"]
    out["demo_minutes_fresh_clone"] = results.get("demo", {}).get("minutes_fresh_clone")
    held = results.get("demo_heldout", {})
    demo = held.get("test", {}).get(held.get("rule"))
    if demo:
        out["demo_mauve_mpnet_heldout"], out["demo_diversity_set"] = demo["mauve_mpnet"], demo["diversity_set"]
    debian = Results(RESULTS_DIR / "text_to_text.json").get("debian", {})  # Debian summaries live in text_to_text.py
    if "peer" in debian:
        out.update(rougeL_debian=debian["latentdlm"]["rougeL"], rougeL_debian_lead1=debian["lead1"]["rougeL"],
                   rougeL_debian_peer=debian["peer"]["rougeL"])
    return out


PARTS = {"plan_noise": part_plan_noise, "plan": part_plan, "autoencoders": part_autoencoders, "recon": part_recon, "dit": part_dit, "peer": part_peer, "decoding": part_decoding,
         "uncond": part_uncond, "split": part_split, "curve": part_curve, "title2story": part_title2story, "speed": part_speed,
         "demo": part_demo, "demo_heldout": part_demo_heldout}


def arguments(parser) -> None:
    parser.add_argument("--autoencoder-minutes", type=float, default=AUTOENCODER_MINUTES)
    parser.add_argument("--dit-minutes", type=float, default=DIT_MINUTES)
    parser.add_argument("--design", action="append", choices=list(DESIGNS),
                        help="autoencoders/dit: this flagship design (default: a and b)")
    parser.add_argument("--flagship", choices=["b", "c", "d", "e"], default="b", help="title2story: the concept design it runs on")
    parser.add_argument("--demo-dir", type=Path, help="demo_heldout: score this finished `latentdlm demo` output")
    parser.add_argument("--rule", choices=list(DECODING_RULES),
                        help="the shared decoding rule while part decoding has not chosen one (recorded as given)")
    parser.add_argument("--system", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
                        help="recon, decoding, uncond, split: these systems, in this order (default: all)")
    parser.add_argument("--rerun", action="store_true", help="recon, decoding, uncond: score systems measured earlier again")


def setup(args, results: dict) -> None:
    args.design = args.design or ["a", "b"]
    torch_threads(2)
    if args.rule:
        results["given_rule"] = {"rule": args.rule, "why": "given by --rule: part decoding has not chosen one on validation"}
    if not {"autoencoders", "dit", "peer"}.isdisjoint(args.only) or "setup" not in results:  # the story systems' budget
        results["setup"] = {"budget_minutes_per_system": args.autoencoder_minutes + args.dit_minutes,
                            "split_minutes": {"autoencoder": args.autoencoder_minutes, "dit": args.dit_minutes},
                            "tiny_system": f"{TINY_PIPELINE} (benchmarks/results/generation.json: its own 28 CPU minutes)"}


if __name__ == "__main__":
    run_benchmark(__doc__, "quality_ladder", PARTS, work_dir="runs/ladder", summary=summary, plot=plots.quality_ladder,
                  arguments=arguments, setup=setup)
