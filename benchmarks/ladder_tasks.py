"""The quality ladder's conditional tasks (benchmarks/quality_ladder.py --only title2story|summarization):
both systems continue from their story models for the same extra minutes."""

from __future__ import annotations

import json
from pathlib import Path

from flagship import (
    DESIGNS, autoencoder_dir, finetune_smollm2, load_adapter, peer_generate, peer_path, peer_tokenizer, perplexity,
    perplexity_judge, pipeline_dir, save_adapter, shared_rule, train_stage,
)
from runner import ROOT, last_record, load_pipeline, log, timed, write_jsonl
from scoring import Scorer, rocstories

from latentdlm.data.sources import data_root

TITLE_TRAIN = 400  # roc_title2story/train.jsonl: the first 400 pairs train, the last 100 choose the guidance scale
GUIDANCE_SCALES = [1.0, 2.0, 3.0, 5.0]


def title_pairs(name: str) -> list[tuple[str, str]]:
    rows = [json.loads(line) for line in (data_root() / "roc_title2story" / name).read_text().splitlines() if line.strip()]
    return [(row["src"], row["trg"]) for row in rows]


def title_prompt(title: str) -> str:
    return f"Title: {title}\nStory:"


def peer_adapter(path: Path, pairs: list[tuple[str, str]], minutes: float, init: Path | None = None):
    """The peer fine-tuned on (prompt, continuation) pairs, saved to `path` with its record beside it (.json),
    unless an earlier run left them; (the adapter loaded, the record)."""
    if not path.exists():
        model, record = finetune_smollm2(pairs, minutes, init=init)
        save_adapter(model, path)
        path.with_suffix(".json").write_text(json.dumps(record))
    return load_adapter(path), json.loads(path.with_suffix(".json").read_text())


def part_title2story(args, results: dict) -> None:
    """Title -> story (SLD's task): the --flagship design's autoencoder with a title-conditioned DiT (frozen MiniLM title
    states, CFG) started from that design's unconditional story DiT where part dit trained one (init_from: only the
    cross-attention, the source projection and the length head are new), trained --dit-minutes on 400 titled stories, guidance scale chosen on 100 more (mpnet
    similarity to the reference story); the peer's story adapter fine-tuned on "Title: ...\nStory:"
    prompts for the same minutes. Test: roc_title2story/valid.jsonl (500 titles), one story each, once."""
    from latentdlm.autoencoder.decoding import DecodingConfig
    from latentdlm.evaluation.generation import mpnet_path
    from latentdlm.evaluation.reconstruction import meaning_similarity

    work = args.work_dir / "title2story"
    pairs, test = title_pairs("train.jsonl"), title_pairs("valid.jsonl")
    train, validation = pairs[:TITLE_TRAIN], pairs[TITLE_TRAIN:]
    work.mkdir(parents=True, exist_ok=True)
    train_file = write_jsonl(work / "train.jsonl", [{"src": title, "trg": story} for title, story in train])
    run = work / "diffusion-run"
    story_dit = pipeline_dir(args.work_dir, args.flagship)  # as the peer continues from its story adapter
    init = [f"init_from={story_dit}"] if story_dit.exists() else []
    train_stage("train-diffusion", ROOT / "configs/diffusion/flagship/concept_roc_title2story.yaml", run, args.dit_minutes,
                [f"autoencoder={autoencoder_dir(args.work_dir, args.flagship)}", "training.eval_every=0", *init],
                source=str(train_file), limit=None)
    pipe = load_pipeline(run / "pipeline")
    relevance = lambda stories, rows: meaning_similarity([s for _, s in rows], stories, mpnet_path())  # noqa: E731
    rule = shared_rule(results)  # the ladder's decoding rule, for both systems
    decoding = None if rule is None else DecodingConfig.from_dict(rule)
    story = lambda rows, scale: pipe(num_samples=len(rows), conditions=[t for t, _ in rows], guidance_scale=scale,  # noqa: E731
                                     num_inference_steps=20, scheduler="dpm", seed=0, batch_size=64, show_progress=False,
                                     decoding=decoding).texts
    sweep = [{"guidance_scale": scale, "similarity_to_reference_mpnet": relevance(story(validation, scale), validation)}
             for scale in GUIDANCE_SCALES]
    print(json.dumps(sweep), flush=True)
    best = max(sweep, key=lambda row: row["similarity_to_reference_mpnet"])["guidance_scale"]
    score = Scorer([s for _, s in test], rocstories().train + [s for _, s in train])
    tokenizer, plain = perplexity_judge()
    rows = results["title2story"] = {"test": "roc_title2story/valid.jsonl (500 titles)", "train_pairs": len(train),
                                     "extra_minutes_per_system": args.dit_minutes, "validation_sweep": sweep, "systems": {},
                                     "dit_started_from": str(story_dit) if init else None, "decoding": rule}

    def measure(system: str, stories: list[str], seconds: float, **extra) -> None:
        rows["systems"][system] = {**extra, **score(stories), "similarity_to_reference_mpnet": relevance(stories, test),
                                   "perplexity_smollm2": perplexity(stories, tokenizer, plain), "seconds_per_story": seconds / len(test),
                                   "examples": [{"title": t, "story": s} for (t, _), s in list(zip(test, stories))[:2]]}
        log(rows["systems"][system], system)
        results.save()

    stories, seconds = timed(lambda: story(test, best))
    measure(args.flagship, stories, seconds, guidance_scale=best, diffusion=last_record(run))
    peer, record = peer_adapter(peer_path(args.work_dir, "title2story"), [(title_prompt(t), " " + s) for t, s in train],
                                args.dit_minutes, init=peer_path(args.work_dir))
    stories, seconds = timed(lambda: peer_generate(peer, tokenizer, [title_prompt(t) for t, _ in test], 32, seed=0, decoding=rule))
    measure("peer", stories, seconds, training=record)


def synopsis_prompt(document: str) -> str:
    return f"{document}\nSynopsis:"


def part_summarization(args, results: dict) -> None:
    """Debian description -> synopsis with the fluent decoder: design (b)'s autoencoder trained on the
    synopses and a document-conditioned DiT (--autoencoder-minutes + --dit-minutes), guidance chosen on
    100 validation pairs, 5 candidates + MBR on the 200 test pairs once (benchmarks/summarization.py's
    splits); against lead-1 and SmolLM2 + LoRA fine-tuned on "document\nSynopsis:" prompts for the
    same minutes, greedy. ROUGE-1/2/L F1."""
    from summarization import guided_summaries, lead1, split_pairs

    from latentdlm.evaluation.summarization import rouge_scores

    work = args.work_dir / "debian"
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
        rows.update(guided_summaries(load_pipeline(run / "pipeline"), validation, test))
        rows["lead1"] = rouge_scores(lead1(docs), refs)
        results.save()
    peer, record = peer_adapter(peer_path(args.work_dir, "debian"), [(synopsis_prompt(d), " " + s) for d, s in train], budget)
    outputs = peer_generate(peer, peer_tokenizer(), [synopsis_prompt(d) for d in docs], 16, seed=0, decoding={}, max_new_tokens=32)
    rows["peer"] = {"training": record, **rouge_scores(outputs, refs), "examples": outputs[:3]}
    rows["references"], rows["documents"] = refs[:3], [d[:300] for d in docs[:3]]
    rows["rougeL"] = {"rougeL_debian": rows["latentdlm_mbr5"]["rougeL"], "rougeL_debian_lead1": rows["lead1"]["rougeL"],
                      "rougeL_debian_peer": rows["peer"]["rougeL"]}
