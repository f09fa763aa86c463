"""The flagship decoder's training step on the CPU: where its minutes go, side by side in one process.

    python benchmarks/decoder_step.py [--steps 8]

configs/autoencoder/minilm_smollm2_concept.yaml (frozen SmolLM2-135M + LoRA r 16 reading a MiniLM sentence
embedding), on bundled sentences from the embedding cache, at batch 16 (the preset's) and 64, three ways:
  float32     no autocast
  autocast    bf16 autocast over float32 base weights (mixed_precision: bf16, the shipped adapter's run)
  bf16_base   the same autocast over base weights stored in bfloat16 (model.decoder.dtype: bfloat16, the
              preset's since this benchmark)
Each: seconds per optimizer step (median of --steps after one warm-up), sentences and target tokens per
second; the summary's ratios are of target tokens per second. Results: benchmarks/results/decoder_step.json.
"""

from __future__ import annotations

import statistics
import time

from runner import ROOT, log, run_benchmark, torch_threads

PRESET = ROOT / "configs" / "autoencoder" / "minilm_smollm2_concept.yaml"
FLOAT32_BASE, BF16_BASE = ["model.decoder.dtype=float32"], ["model.decoder.dtype=bfloat16"]
VARIANTS = {"float32": (FLOAT32_BASE, False), "autocast": (FLOAT32_BASE, True), "bf16_base": (BF16_BASE, True)}


def step_times(overrides: list[str], autocast: bool, batch_size: int, steps: int) -> dict:
    import torch

    from latentdlm.autoencoder.build import build_autoencoder
    from latentdlm.autoencoder.objective import AutoencoderObjective
    from latentdlm.config import load_config
    from latentdlm.data.sources import load_texts
    from latentdlm.training.autoencoder import AutoencoderTrainConfig, make_dataloader

    cfg = load_config(AutoencoderTrainConfig, PRESET, overrides)
    torch.manual_seed(0)
    model = build_autoencoder(cfg.model)
    objective = AutoencoderObjective(model, cfg.objective).train()
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=cfg.training.learning_rate)
    batches = iter(make_dataloader(model, load_texts("bundled:austen")[:600], batch_size, seed=0))
    seconds, tokens = [], 0
    for step in range(steps + 1):
        batch = next(batches)
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = objective(batch, step)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step:  # the first step warms up
            seconds.append(time.perf_counter() - start)
            tokens += int((batch["labels"] != -100).sum())
    median = statistics.median(seconds)
    return {"seconds_per_step": median, "sentences_per_second": batch_size / median, "target_tokens_per_second": tokens / sum(seconds),
            "steps_timed": steps, "last_loss": float(loss)}


def part_steps(args, results: dict) -> None:
    rows = results["steps"] = {}
    for batch_size in (16, 64):
        for name, (overrides, autocast) in VARIANTS.items():
            steps = args.steps if batch_size == 16 else max(2, args.steps // 3)
            rows[f"{name}_batch_{batch_size}"] = step_times(overrides, autocast, batch_size, steps)
            log(rows[f"{name}_batch_{batch_size}"], f"{name} batch {batch_size}")
            results.save()


def summary(results: dict) -> dict:
    """Ratios of target tokens per second (batches of one size hold the same sentences in every variant;
    across sizes the sentences differ in length, so sentences per second would not compare)."""
    rows = results.get("steps", {})
    rate = lambda key: rows[key]["target_tokens_per_second"] if key in rows else None  # noqa: E731
    ratio = lambda a, b: rate(a) / rate(b) if rate(a) and rate(b) else None  # noqa: E731
    return {"target_tokens_per_second": {k: r["target_tokens_per_second"] for k, r in rows.items()},
            "speedup_bf16_base_vs_autocast_batch_16": ratio("bf16_base_batch_16", "autocast_batch_16"),
            "speedup_autocast_vs_float32_batch_16": ratio("autocast_batch_16", "float32_batch_16"),
            "speedup_batch_64_vs_16_bf16_base": ratio("bf16_base_batch_64", "bf16_base_batch_16")}


def arguments(parser) -> None:
    parser.add_argument("--steps", type=int, default=8, help="timed steps at batch 16 (a third of them at batch 64)")


if __name__ == "__main__":
    torch_threads(2)
    run_benchmark(__doc__, "decoder_step", {"steps": part_steps}, work_dir="runs/decoder_step", summary=summary,
                  arguments=arguments, required=False)
