"""The quality ladder's conditional task (benchmarks/quality_ladder.py --only title2story):
both systems continue from their story models for the same extra minutes."""

from __future__ import annotations

import json

from flagship import (
    autoencoder_dir, peer_adapter, peer_generate, peer_path, perplexity, perplexity_judge, pipeline_dir, shared_rule,
    train_stage,
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
