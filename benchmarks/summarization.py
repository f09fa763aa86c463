"""Summarization benchmark: latentdlm vs lead-1 vs an autoregressive encoder-decoder, equal CPU budget.

    python benchmarks/summarization.py [--datasets debian_descriptions xsum] [--autoencoder-minutes 8]
        [--diffusion-minutes 5] [--num-test 200]

For each dataset (../shared/data, or $LATENTDLM_DATA), shuffled with seed 0, the last `num-test` pairs
are the test set, the `num-validation` before them the validation set, and the rest (up to
`--train-limit`) the training set:
1. a `tiny` autoencoder on the training targets (one segment each: targets are one line / sentence);
2. a text-conditioned DiT (`configs/diffusion/tiny_cond.yaml`: frozen MiniLM condition encoder);
3. ROUGE-1/2/L/Lsum on the VALIDATION set across a guidance-scale sweep (one sample per document); the
   best scale is then used once on the test set, with 5 candidates and the minimum-Bayes-risk choice;
4. lead-1 (the document's first sentence);
5. an autoregressive baseline of the same trained-parameter count (a GPT-2-style decoder cross-
   attending to the same frozen MiniLM states, the same target tokenizer), trained for the minutes
   of both latentdlm stages together, greedy decoding.
Each training runs in its own process or alone (one torch job on the cores at a time).
Results: benchmarks/results/summarization.json (each dataset merged in as it finishes; the datasets not run
this time are kept) and summarization.png (ROUGE vs guidance scale).
"""

from __future__ import annotations

import functools
import json
import random
from pathlib import Path

import plots
from ar_baselines import MAX_TARGET_TOKENS, ar_summarizer
from runner import ROOT, last_record, load_pipeline, log, run_benchmark, run_cli, timed, torch_threads, write_jsonl

from latentdlm.data.segmentation import SentenceSegmenter
from latentdlm.data.sources import data_root, load_pairs
from latentdlm.evaluation.summarization import rouge_scores

DATASETS = {
    "debian_descriptions": ("debian_descriptions/pairs.jsonl.gz", "document", "summary"),
    "xsum": ("xsum/dev.jsonl", "document", "summary"),
    "dialogsum": ("dialogsum/dev.jsonl", "dialogue", "summary"),
}
SCALES = [1.0, 1.5, 2.0, 3.0, 5.0]


def split_pairs(name: str, num_test: int, num_validation: int, train_limit: int) -> tuple[list, list, list]:
    """(train, validation, test) (document, summary) pairs: shuffled with seed 0, test last, validation before it."""
    path, source_col, target_col = DATASETS[name]
    pairs = load_pairs(str(data_root() / path), source_col, target_col)
    random.Random(0).shuffle(pairs)  # debian is sorted by package name: a tail split would be all z*
    test, validation = pairs[-num_test:], pairs[-num_test - num_validation : -num_test]
    return pairs[: -num_test - num_validation][:train_limit], validation, test


def lead(documents: list[str], count: int = 1) -> list[str]:
    """Each document's first `count` sentences (lead-1, lead-3)."""
    segmenter = SentenceSegmenter()
    return [" ".join((segmenter.split(d) or [d])[:count]) for d in documents]


def guided_summaries(pipe, validation: list, test: list) -> dict:
    """The guidance scale chosen on the validation pairs (one sample per document, ROUGE-L), then the test
    pairs scored once at that scale with 5 candidates and the minimum-Bayes-risk choice."""
    from latentdlm.summarize import summarize

    sweep = []
    val_docs, val_refs = [s for s, _ in validation], [t for _, t in validation]
    for scale in SCALES:
        outputs, seconds = timed(lambda: summarize(pipe, val_docs, 1, 20, guidance_scale=scale, seed=0, show_progress=False))
        sweep.append({"split": "validation", "guidance_scale": scale, "seconds": seconds,
                      **rouge_scores(outputs, val_refs), "examples": outputs[:3]})
        log(sweep[-1])
    best = max(sweep, key=lambda r: r["rougeL"])["guidance_scale"]
    outputs = summarize(pipe, [s for s, _ in test], 5, 20, guidance_scale=best, seed=0, show_progress=False)
    return {"sweep": sweep, "latentdlm_mbr5": {"guidance_scale": best, **rouge_scores(outputs, [t for _, t in test]),
                                                "examples": outputs[:3]}}


# ---- one dataset ----------------------------------------------------------------------------------
def run_dataset(name: str, args, work: Path) -> dict:
    train, validation, test = split_pairs(name, args.num_test, args.num_validation, args.train_limit)
    work.mkdir(parents=True, exist_ok=True)
    train_file = write_jsonl(work / "train.jsonl", [{"source": s, "target": t} for s, t in train])
    docs, refs = [s for s, _ in test], [t for _, t in test]
    result = {"train_pairs": len(train), "validation_pairs": len(validation), "test_pairs": len(test)}

    print(f"== {name}: autoencoder on {len(train)} targets, {args.autoencoder_minutes} min", flush=True)
    run_cli(["train-autoencoder", "--config", str(ROOT / "configs/autoencoder/tiny.yaml"), f"data.source={train_file}",
             "data.column=target", "data.max_eval=100", "model.segmentation.mode=none", f"model.max_length={MAX_TARGET_TOKENS}",
             f"training.output_dir={work / 'autoencoder'}", "training.overwrite_output_dir=true",
             f"training.max_minutes={args.autoencoder_minutes}", "training.eval_every=0", "training.save_every=0"],
            work / "autoencoder.log")
    final = json.loads((work / "autoencoder" / "final_metrics.json").read_text())
    result["autoencoder"] = {**last_record(work / "autoencoder"), "bleu": final["bleu"], "exact_match": final["exact_match"]}

    print(f"== {name}: conditional DiT, {args.diffusion_minutes} min", flush=True)
    run_cli(["train-diffusion", "--config", str(ROOT / "configs/diffusion/tiny_cond.yaml"),
             f"autoencoder={work / 'autoencoder' / 'autoencoder'}", f"data.source={train_file}", "data.column=target",
             "data.condition_column=source", "data.limit=null", f"training.output_dir={work / 'diffusion'}",
             "training.overwrite_output_dir=true", f"training.max_minutes={args.diffusion_minutes}",
             "training.eval_every=0", "training.save_every=0"], work / "diffusion.log")
    result["diffusion"] = last_record(work / "diffusion")

    pipe = load_pipeline(work / "diffusion" / "pipeline")
    result.update(guided_summaries(pipe, validation, test))
    result["lead1"] = rouge_scores(lead(docs), refs)

    budget = result["autoencoder"]["train_minutes"] + result["diffusion"]["train_minutes"]
    print(f"== {name}: AR baseline, {budget:.1f} min", flush=True)
    info, outputs = ar_summarizer(pipe, train, docs, budget)
    result["ar_baseline"] = {**info, **rouge_scores(outputs, refs), "examples": outputs[:3]}
    result["references"], result["documents"] = refs[:3], [d[:300] for d in docs[:3]]
    return result


def part(name: str, args, results: dict) -> None:
    results["datasets"][name] = run_dataset(name, args, args.work_dir / name)


PARTS = {name: functools.partial(part, name) for name in DATASETS}


def summary(results: dict) -> dict:
    return {name: {"latentdlm_rougeL": res["latentdlm_mbr5"]["rougeL"], "guidance_scale": res["latentdlm_mbr5"]["guidance_scale"],
                   "lead1_rougeL": res["lead1"]["rougeL"], "ar_rougeL": res["ar_baseline"]["rougeL"]}
            for name, res in results["datasets"].items()}


def arguments(parser) -> None:
    parser.add_argument("--autoencoder-minutes", type=float, default=8)
    parser.add_argument("--diffusion-minutes", type=float, default=5)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--num-validation", type=int, default=100, help="pairs for choosing the guidance scale")
    parser.add_argument("--train-limit", type=int, default=20000)


def setup(args, results: dict) -> None:
    torch_threads(2, flush_denormal=False)
    results.update(machine="2 CPU cores", budget_minutes={"autoencoder": args.autoencoder_minutes, "diffusion": args.diffusion_minutes})
    results.setdefault("datasets", {})  # the datasets not run this time are kept


if __name__ == "__main__":
    run_benchmark(__doc__, "summarization", PARTS, work_dir=str(ROOT / "runs/benchmark-summarization"), summary=summary,
                  plot=plots.summarization, arguments=arguments, setup=setup, select="--datasets")
