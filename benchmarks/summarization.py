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
Results: benchmarks/results/summarization.json and summarization.png (ROUGE vs guidance scale).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from generation import last_record, run_cli, timed, train_for_minutes  # noqa: E402
from latentdlm.data.segmentation import SentenceSegmenter  # noqa: E402
from latentdlm.data.sources import data_root, load_pairs  # noqa: E402
from latentdlm.evaluation.summarization import rouge_scores  # noqa: E402

DATASETS = {
    "debian_descriptions": ("debian_descriptions/pairs.jsonl.gz", "document", "summary"),
    "xsum": ("xsum/dev.jsonl", "document", "summary"),
}
SCALES = [1.0, 1.5, 2.0, 3.0, 5.0]
MAX_TARGET_TOKENS = 48


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


# ---- the autoregressive baseline ------------------------------------------------------------------
class ARSummarizer(torch.nn.Module):
    """A GPT-2-style decoder cross-attending to (projected) frozen condition-encoder states."""

    def __init__(self, vocab_size: int, bos: int, eos: int, condition_dim: int, layers: int, width: int = 256, heads: int = 4):
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        config = GPT2Config(vocab_size=vocab_size, n_positions=MAX_TARGET_TOKENS + 2, n_embd=width, n_layer=layers, n_head=heads,
                            add_cross_attention=True, bos_token_id=bos, eos_token_id=eos,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        self.project = torch.nn.Linear(condition_dim, width)
        self.lm = GPT2LMHeadModel(config)

    def forward(self, input_ids, attention_mask, states, states_mask, labels=None):
        return self.lm(input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=self.project(states),
                       encoder_attention_mask=states_mask, labels=labels)

    @torch.no_grad()
    def greedy(self, states, states_mask, pad: int) -> torch.Tensor:
        """Greedy decoding (no cache: targets are short), ids after the start token."""
        config = self.lm.config
        ids = torch.full((states.shape[0], 1), config.bos_token_id)
        done = torch.zeros(states.shape[0], dtype=torch.bool)
        for _ in range(MAX_TARGET_TOKENS):
            logits = self(ids, torch.ones_like(ids), states, states_mask).logits[:, -1]
            nxt = torch.where(done, pad, logits.argmax(-1))
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == config.eos_token_id
            if done.all():
                break
        return ids[:, 1:]


def trained_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def ar_baseline(pipe, train_pairs, test_docs, minutes: float, batch_size: int = 32) -> tuple[dict, list[str]]:
    condition, tokenizer = pipe.condition_encoder, pipe.autoencoder.decoder_tokenizer
    condition.eval()
    target = trained_parameters(pipe.denoiser) + sum(p.numel() for m in (pipe.autoencoder.decoder, pipe.autoencoder.to_memory)
                                                     for p in m.parameters())

    def make(layers):
        return ARSummarizer(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, condition.hidden_size, layers)

    layers = min(range(1, 25), key=lambda n: abs(trained_parameters(make(n)) - target))
    torch.manual_seed(0)
    model = make(layers)
    pad = tokenizer.pad_token_id
    targets = tokenizer([t for _, t in train_pairs], add_special_tokens=False, truncation=True, max_length=MAX_TARGET_TOKENS)["input_ids"]

    def batch_loss(rng):
        rows = rng.sample(range(len(train_pairs)), batch_size)
        states = condition.encode([train_pairs[i][0] for i in rows], warn=False)
        seqs = [[tokenizer.bos_token_id, *targets[i], tokenizer.eos_token_id] for i in rows]
        width = max(map(len, seqs))
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = ids != pad
        return model(ids, mask.long(), states["condition_states"], states["condition_mask"].long(), ids.masked_fill(~mask, -100)).loss

    trained = train_for_minutes(model, batch_loss, minutes)
    outputs = []
    for i in range(0, len(test_docs), 50):
        states = condition.encode(test_docs[i : i + 50], warn=False)
        ids = model.greedy(states["condition_states"], states["condition_mask"].long(), pad)
        outputs += [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    info = {"parameters": trained_parameters(model), "latentdlm_parameters": target, "layers": layers, **trained}
    return info, outputs


def split_pairs(name: str, num_test: int, num_validation: int, train_limit: int) -> tuple[list, list, list]:
    """(train, validation, test) (document, summary) pairs: shuffled with seed 0, test last, validation before it."""
    path, source_col, target_col = DATASETS[name]
    pairs = load_pairs(str(data_root() / path), source_col, target_col)
    random.Random(0).shuffle(pairs)  # debian is sorted by package name: a tail split would be all z*
    test, validation = pairs[-num_test:], pairs[-num_test - num_validation : -num_test]
    return pairs[: -num_test - num_validation][:train_limit], validation, test


def lead1(documents: list[str]) -> list[str]:
    segmenter = SentenceSegmenter()
    return [(segmenter.split(d) or [d])[0] for d in documents]


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
        print(json.dumps({k: v for k, v in sweep[-1].items() if k != "examples"}), flush=True)
    best = max(sweep, key=lambda r: r["rougeL"])["guidance_scale"]
    outputs = summarize(pipe, [s for s, _ in test], 5, 20, guidance_scale=best, seed=0, show_progress=False)
    return {"sweep": sweep, "latentdlm_mbr5": {"guidance_scale": best, **rouge_scores(outputs, [t for _, t in test]),
                                                "examples": outputs[:3]}}


# ---- one dataset ----------------------------------------------------------------------------------
def run_dataset(name: str, args, work: Path) -> dict:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

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

    pipe = LatentDiffusionTextPipeline.from_pretrained(work / "diffusion" / "pipeline")
    result.update(guided_summaries(pipe, validation, test))
    result["lead1"] = rouge_scores(lead1(docs), refs)

    budget = result["autoencoder"]["train_minutes"] + result["diffusion"]["train_minutes"]
    print(f"== {name}: AR baseline, {budget:.1f} min", flush=True)
    info, outputs = ar_baseline(pipe, train, docs, budget)
    result["ar_baseline"] = {**info, **rouge_scores(outputs, refs), "examples": outputs[:3]}
    result["references"], result["documents"] = refs[:3], [d[:300] for d in docs[:3]]
    return result


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["datasets"])
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names):
        res = results["datasets"][name]
        scales = [r["guidance_scale"] for r in res["sweep"]]
        for metric, colour in (("rouge1", "tab:blue"), ("rouge2", "tab:green"), ("rougeL", "tab:red")):
            ax.plot(scales, [r[metric] for r in res["sweep"]], marker="o", color=colour, label=f"latentdlm {metric}")
            ax.axhline(res["lead1"][metric], color=colour, linestyle=":", linewidth=1)
            ax.axhline(res["ar_baseline"][metric], color=colour, linestyle="--", linewidth=1)
        ax.set(xlabel="guidance scale", ylabel="ROUGE F1", title=f"{name}: sweep on validation; dotted lead-1, dashed AR (test)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--autoencoder-minutes", type=float, default=8)
    parser.add_argument("--diffusion-minutes", type=float, default=5)
    parser.add_argument("--num-test", type=int, default=200)
    parser.add_argument("--num-validation", type=int, default=100, help="pairs for choosing the guidance scale")
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--work-dir", default=str(ROOT / "runs/benchmark-summarization"))
    args = parser.parse_args()
    torch.set_num_threads(2)
    results = {"machine": "2 CPU cores", "budget_minutes": {"autoencoder": args.autoencoder_minutes, "diffusion": args.diffusion_minutes},
               "datasets": {}}
    out = ROOT / "benchmarks/results"
    out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        results["datasets"][name] = run_dataset(name, args, Path(args.work_dir) / name)
        (out / "summarization.json").write_text(json.dumps(results, indent=2))  # partial results survive a crash
    plot(results, out / "summarization.png")
    summary = {name: {"latentdlm_rougeL": res["latentdlm_mbr5"]["rougeL"], "guidance_scale": res["latentdlm_mbr5"]["guidance_scale"],
                      "lead1_rougeL": res["lead1"]["rougeL"], "ar_rougeL": res["ar_baseline"]["rougeL"]}
               for name, res in results["datasets"].items()}
    results["summary"] = summary
    (out / "summarization.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
