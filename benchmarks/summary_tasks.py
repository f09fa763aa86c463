"""Summaries with source-aware decoding (benchmarks/text_to_text.py --only debian|xsum|dialogsum).

latentdlm: design (b)'s autoencoder trained on the summaries with `model.source_context`
(configs/autoencoder/minilm_smollm2_summaries.yaml: its SmolLM2 + LoRA decoder reads the document's first SOURCE_TOKENS
tokens, then writes from the summary's latent), and a document-conditioned DiT
(frozen MiniLM; per --granularity, one DiT reading every token or one vector per sentence) that plans the summary's
latent under guidance. The peer: SmolLM2-135M + LoRA fine-tuned on "document\\nSynopsis:" prompts cut at the same
SOURCE_TOKENS, for the minutes of both latentdlm stages together. On the validation pairs: the DiT (granularity), the
decoder (per --source-dropout, one trained hiding the source from that share of its rows, so that it must learn to
write from the latent: objective.context_dropout), the guidance scale and the candidate count (MBR) for latentdlm, and
the decoding rule both systems share (the best of each rule's two systems' mean ROUGE-L); the test pairs scored once. Beside them: lead-1 (lead-3), the ceiling (the
references' own latents decoded with their documents) and the latent gap (the decoder's loss on the test summaries
with another summary's latent minus with their own).
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

from flagship import peer_adapter, peer_generate, peer_path, peer_tokenizer, train_stage
from runner import ROOT, last_record, load_pipeline, log, timed, write_jsonl
from summarization import lead, split_pairs

SOURCE_TOKENS = 192  # what both systems read of each document (the peer's prompts are cut there: flagship.finetune_smollm2)
GUIDANCE_SCALES = [1.0, 2.0, 4.0]
CANDIDATES = [1, 4]
RULES = {"greedy": {}, "greedy_no_repeat_3": {"no_repeat_ngram_size": 3}}  # summaries: deterministic decoding


@dataclasses.dataclass(frozen=True)
class Task:
    dataset: str  # a benchmarks/summarization.py DATASETS name
    test: int
    validation: int
    train: int  # at most
    target_tokens: int  # the autoencoder's max_length (the longest summaries), and what either system may write
    autoencoder_minutes: float
    dit_minutes: float
    leads: tuple = (1,)


TASKS = {
    "debian": Task("debian_descriptions", 200, 100, 20000, 32, 15, 5),
    "xsum": Task("xsum", 200, 100, 500, 64, 6, 2, (1, 3)),  # a few hundred training pairs: shorter runs
    "dialogsum": Task("dialogsum", 200, 50, 250, 96, 6, 2),
}


def synopsis_prompt(document: str) -> str:
    return f"{document}\nSynopsis:"


def run_task(name: str, args, results: dict) -> None:
    from latentdlm.evaluation.summarization import rouge_scores

    task = TASKS[name]
    work = args.work_dir / name
    work.mkdir(parents=True, exist_ok=True)
    train, validation, test = split_pairs(task.dataset, task.test, task.validation, task.train)
    train_file = str(write_jsonl(work / "train.jsonl", [{"document": d, "summary": s} for d, s in train]))
    row = results.setdefault(name, {})
    row.update({"dataset": task.dataset, "pairs": {"train": len(train), "validation": len(validation), "test": len(test)},
                "source_tokens": SOURCE_TOKENS, "budget_minutes_per_system": task.autoencoder_minutes + task.dit_minutes})
    decoders = {}  # source dropout -> a source-aware autoencoder (each task.autoencoder_minutes: alternatives, one is chosen)
    for dropout in args.source_dropout:
        run = work / ("autoencoder-run" if dropout == 0 else f"autoencoder-run-source-dropout-{dropout}")
        train_stage("train-autoencoder", ROOT / "configs/autoencoder/minilm_smollm2_summaries.yaml", run,
                    task.autoencoder_minutes,
                    [f"model.source_context={SOURCE_TOKENS}", f"model.max_length={task.target_tokens}", "training.eval_every=0",
                     "training.save_every=500", f"objective.context_dropout={dropout}"], source=train_file, limit=None)
        decoders[dropout] = run / "autoencoder"
    dits = {}  # granularity -> a DiT; its latents (frozen MiniLM embeddings of the summaries) are every decoder's
    for granularity in args.granularity:
        run = work / f"diffusion-{granularity}"
        train_stage("train-diffusion", ROOT / "configs/diffusion/flagship/concept_debian.yaml", run, task.dit_minutes,
                    [f"autoencoder={next(iter(decoders.values()))}", "training.eval_every=0", "data.column=summary",
                     "data.condition_column=document", f"condition.granularity={granularity}"], source=train_file, limit=None)
        dits[granularity] = run / "pipeline"
    row["training"] = {**{f"autoencoder_source_dropout_{p}": last_record(a.parent) for p, a in decoders.items()},
                       **{f"diffusion_{g}": last_record(d.parent) for g, d in dits.items()}}
    results.save()
    peer, peer_record = peer_adapter(peer_path(args.work_dir, name), [(synopsis_prompt(d), " " + s) for d, s in train],
                                     row["budget_minutes_per_system"], max_prompt_tokens=SOURCE_TOKENS)

    docs, refs = [d for d, _ in validation], [s for _, s in validation]
    if "validation" not in row:
        row["validation"] = choose_on_validation(dits, decoders, peer, docs, refs)
        results.save()
    chosen = row["validation"]["chosen"]
    rule = RULES[chosen["rule"]]
    test_docs, test_refs = [d for d, _ in test], [s for _, s in test]
    pipe = combined(dits[chosen["granularity"]], decoders[chosen["source_dropout"]])
    outputs, seconds = timed(lambda: summaries(pipe, test_docs, chosen["guidance_scale"], chosen["candidates"], rule))
    row["latentdlm"] = {**chosen, **rouge_scores(outputs, test_refs), "seconds_per_summary": seconds / len(test)}
    ceiling = reconstructions(pipe, test_docs, test_refs, rule)
    row["ceiling"] = {**rouge_scores(ceiling, test_refs), "what": "each reference's own latent, decoded with its document"}
    row["latent_gap_nats"] = latent_gap(pipe, test_docs, test_refs)
    for count in task.leads:
        row[f"lead{count}"] = rouge_scores(lead(test_docs, count), test_refs)
    peer_outputs, seconds = timed(lambda: peer_generate(peer, peer_tokenizer(), [synopsis_prompt(d) for d in test_docs], 16, seed=0,
                                                        decoding=rule, max_new_tokens=task.target_tokens))
    row["peer"] = {**rouge_scores(peer_outputs, test_refs), "seconds_per_summary": seconds / len(test),
                   "training": peer_record}
    row["examples"] = examples(test_docs, test_refs, outputs, peer_outputs, ceiling)
    log({k: v for k, v in row.items() if k not in ("examples", "validation")}, name)
    results.save()


def summaries(pipe, documents: list[str], scale: float, candidates: int, rule: dict) -> list[str]:
    """`candidates` per document (different noise), the MBR one kept; written up to the autoencoder's max_length."""
    from latentdlm.autoencoder.decoding import DecodingConfig
    from latentdlm.summarize import summarize

    return summarize(pipe, documents, candidates, 20, guidance_scale=scale, scheduler="dpm", seed=0, batch_size=32,
                     show_progress=False, decoding=DecodingConfig.from_dict(rule))


def combined(dit: Path, decoder: Path):
    """The pipeline of a DiT with another source-aware decoder over the same latents (the DiT's latent statistics kept)."""
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = load_pipeline(dit)
    autoencoder = ParagraphAutoencoder.from_pretrained(decoder)
    assert autoencoder.fixed_latents and pipe.autoencoder.fixed_latents, "decoders can only be swapped over fixed latents"
    autoencoder.latent_space.load_state_dict(pipe.autoencoder.latent_space.state_dict())
    return LatentDiffusionTextPipeline(autoencoder, pipe.denoiser, pipe.scheduler, pipe.condition_encoder, pipe.decoding)


def choose_on_validation(dits: dict, decoders: dict, peer, docs: list[str], refs: list[str]) -> dict:
    """Greedy, one candidate: every DiT x decoder (source dropout) x guidance scale; at the best of them, each decoding
    rule for both systems (the shared rule: the highest mean of the two systems' ROUGE-L), then more candidates (MBR)."""
    from latentdlm.evaluation.summarization import rouge_scores

    sweep = []

    def measure(setting: dict, outputs: list[str]) -> None:
        sweep.append({**setting, "rougeL": rouge_scores(outputs, refs)["rougeL"], "examples": outputs[:2]})
        log(sweep[-1])

    for granularity, dit in dits.items():
        for dropout, decoder in decoders.items():
            pipe = combined(dit, decoder)
            for scale in GUIDANCE_SCALES:
                measure({"system": "latentdlm", "granularity": granularity, "source_dropout": dropout, "rule": "greedy",
                         "guidance_scale": scale, "candidates": 1}, summaries(pipe, docs, scale, 1, RULES["greedy"]))
    top = max(sweep, key=lambda r: r["rougeL"])
    pipe = combined(dits[top["granularity"]], decoders[top["source_dropout"]])
    for rule_name, rule in RULES.items():
        if rule_name != "greedy":
            measure({**top, "rule": rule_name}, summaries(pipe, docs, top["guidance_scale"], 1, rule))
        measure({"system": "peer", "rule": rule_name},
                peer_generate(peer, peer_tokenizer(), [synopsis_prompt(d) for d in docs], 16, seed=0, decoding=rule,
                              max_new_tokens=pipe.autoencoder.config.max_length))
    rule_score = lambda system, rule: max(r["rougeL"] for r in sweep if r["system"] == system and r["rule"] == rule)  # noqa: E731
    rule_name = max(RULES, key=lambda r: rule_score("latentdlm", r) + rule_score("peer", r))
    for count in CANDIDATES[1:]:
        measure({**top, "rule": rule_name, "candidates": count}, summaries(pipe, docs, top["guidance_scale"], count, RULES[rule_name]))
    final = max((r for r in sweep if r["system"] == "latentdlm" and r["rule"] == rule_name), key=lambda r: r["rougeL"])
    chosen = {k: final[k] for k in ("granularity", "source_dropout", "rule", "guidance_scale", "candidates")}
    return {"sweep": sweep, "chosen": chosen, "pairs": len(docs)}


def reconstructions(pipe, documents: list[str], references: list[str], rule: dict) -> list[str]:
    """The ceiling: each reference's own latent (what a perfect DiT would sample), decoded with its document."""
    import torch

    from latentdlm.autoencoder.decoding import DecodingConfig, decode_with_settings

    autoencoder = pipe.autoencoder
    encoded = autoencoder.encode(references)
    with torch.no_grad():
        return decode_with_settings(autoencoder, encoded, DecodingConfig.from_dict(rule), torch.Generator().manual_seed(0), 32,
                                    sources=documents)


def latent_gap(pipe, documents: list[str], references: list[str]) -> float:
    """Mean over the test summaries of the decoder's per-token loss with the next summary's latent minus with its
    own, both read with its document: > 0 when the latent, not the document alone, says what to write."""
    autoencoder = pipe.autoencoder
    latents = autoencoder.encode(references).latents[:, 0]
    per_text = [[r] for r in references]
    own = autoencoder.decoder_nll(latents, per_text, sources=documents)
    other = autoencoder.decoder_nll(latents.roll(1, dims=0), per_text, sources=documents)
    return float((other - own).mean())


def examples(docs, refs, ours, peer, ceiling, count: int = 4) -> dict:
    """The best and worst of latentdlm's test summaries by ROUGE-L, with the peer's and the ceiling's beside them."""
    from latentdlm.evaluation.summarization import pair_rouge_l

    scores = pair_rouge_l(ours, refs)
    order = sorted(range(len(refs)), key=scores.__getitem__)
    row = lambda i: {"document": docs[i][:400], "reference": refs[i], "latentdlm": ours[i], "peer": peer[i],  # noqa: E731
                     "ceiling": ceiling[i], "rougeL_latentdlm": round(scores[i], 1)}
    return {"good": [row(i) for i in order[::-1][:count]], "bad": [row(i) for i in order[:count]],
            "median_rougeL_latentdlm": statistics.median(scores)}
