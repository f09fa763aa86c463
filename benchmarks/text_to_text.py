"""Text-to-text (issue 24): summaries and title -> story against lead-1 and the fine-tuned peer.

    python benchmarks/text_to_text.py --only PART [--only PART ...]   # parts, each merged into one JSON

Parts:
  dit_step   seconds per training step of the Debian summariser's DiT (configs/diffusion/flagship/concept_debian.yaml:
             384 wide, 6 layers, self-conditioning, a batch of 64 with MiniLM states of real package descriptions,
             up to 256 tokens) reading the source (a) every token, as before, (b) resampled by a Perceiver to each
             --source-latents count of vectors, read once per step, (c) one MiniLM vector per source sentence
             (condition.granularity: sentences); against (d) the same DiT without a source. Interleaved
             rounds, the median step; also seconds per sampling call (64 samples, DPM 20 steps, guidance on).

  debian     Debian description -> synopsis, xsum: BBC article -> one-sentence summary (lead-1 and lead-3 beside it),
  xsum       dialogsum: dialogue -> summary (SLD's tasks): source-aware decoding against lead-1 and the fine-tuned peer
  dialogsum  at equal minutes (benchmarks/summary_tasks.py says how); --granularity: the DiTs tried on validation

Title -> story is the quality ladder's part (`quality_ladder.py --only title2story --flagship d`): this file's summary
reads its MAUVE rows from benchmarks/results/quality_ladder.json.

Results: benchmarks/results/text_to_text.json (+ text_to_text.png: validation ROUGE-L against the guidance scale);
summary keys as issue 24 names them (None until their part runs).
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import statistics
import time

import plots
import summary_tasks
from runner import RESULTS_DIR, ROOT, Results, run_benchmark, torch_threads

from latentdlm.data.sources import data_root

SUMMARY_KEYS = (
    "rougeL_debian", "rougeL_debian_lead1", "rougeL_debian_peer", "rougeL_xsum", "rougeL_xsum_lead1", "rougeL_xsum_peer",
    "rougeL_dialogsum", "rougeL_dialogsum_peer", "rougeL_debian_ceiling", "latent_gap_source_aware",
    "mauve_mpnet_title2story", "mauve_mpnet_title2story_peer", "cond_step_seconds_ratio",
)
BATCH, WARMUP = 64, 2


def debian_documents(count: int) -> list[str]:
    with gzip.open(data_root() / "debian_descriptions" / "pairs.jsonl.gz", "rt") as f:
        return [json.loads(line)["document"] for line in itertools.islice(f, count)]


def part_dit_step(args, results: dict) -> None:
    import torch

    from latentdlm.config import load_config
    from latentdlm.diffusion.condition import ConditionEncoder
    from latentdlm.diffusion.denoiser import LatentDiT
    from latentdlm.diffusion.objective import ConditionedObjective, diffusion_loss
    from latentdlm.diffusion.sampling import make_guider, sample_latents
    from latentdlm.diffusion.schedulers import make_scheduler, training_scheduler
    from latentdlm.training.diffusion import DiffusionTrainConfig

    torch_threads(2)
    cfg = load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/flagship/concept_debian.yaml")
    documents = debian_documents(BATCH)  # real descriptions: the token and sentence counts users' batches have
    sources, sentences = (ConditionEncoder.build(dataclasses.replace(cfg.condition, granularity=granularity), None).encode(documents)
                          for granularity in ("tokens", "sentences"))
    objective = cfg.objective
    scheduler = training_scheduler(objective.prediction_type, objective.beta_schedule, objective.num_train_timesteps,
                                   objective.noise_shift)
    size = dict(latent_dim=384, num_latents=1, max_segments=1, hidden_size=cfg.denoiser.hidden_size,
                num_layers=cfg.denoiser.num_layers, num_heads=cfg.denoiser.num_heads, self_conditioning=True)
    torch.manual_seed(0)
    batch = {"latents": torch.randn(BATCH, 1, 384), "latent_mask": torch.ones(BATCH, 1, dtype=torch.bool)}  # timing only
    arms = {
        "no_source": (LatentDiT(**size), {}),
        "every_token": (LatentDiT(**size, condition_dim=384, condition_dropout=0.1), sources),
        **{f"resampled_{n}": (LatentDiT(**size, condition_dim=384, condition_dropout=0.1, source_latents=n), sources)
           for n in sorted(set(args.source_latents) | {cfg.denoiser.source_latents} - {None}, reverse=True)},
        "sentences": (LatentDiT(**size, condition_dim=384, condition_dropout=0.1), sentences),
    }

    def step(dit, conditions, optimizer):
        terms = (ConditionedObjective(dit, None, scheduler, cfg.objective)({**batch, **conditions}) if conditions
                 else diffusion_loss(dit, scheduler, batch, cfg.objective))
        optimizer.zero_grad()
        terms["loss"].backward()
        optimizer.step()

    optimizers = {name: torch.optim.AdamW(dit.parameters(), lr=1e-4) for name, (dit, _) in arms.items()}
    seconds = {name: [] for name in arms}
    for round_ in range(WARMUP + args.rounds):  # interleaved: the machine's drift hits every arm alike
        for name, (dit, conditions) in arms.items():
            start = time.perf_counter()
            step(dit, conditions, optimizers[name])
            if round_ >= WARMUP:
                seconds[name].append(time.perf_counter() - start)

    sampler = make_scheduler("dpm", scheduler)
    sampling = {}
    with torch.no_grad():
        for name, (dit, conditions) in arms.items():
            dit.eval()
            start = time.perf_counter()
            sample_latents(dit, sampler, batch["latent_mask"], 20, torch.Generator().manual_seed(0), dict(conditions),
                           make_guider("cfg", 2.0) if conditions else None)
            sampling[name] = time.perf_counter() - start
    rows = {name: {"step_seconds_median": statistics.median(s), "step_seconds": s, "sampling_call_seconds": sampling[name],
                   "parameters_m": sum(p.numel() for p in arms[name][0].parameters()) / 1e6} for name, s in seconds.items()}
    base = rows["no_source"]["step_seconds_median"]
    for row in rows.values():
        row["ratio_to_no_source"] = row["step_seconds_median"] / base
    results["dit_step"] = {
        "setup": f"batch {BATCH}, Debian descriptions encoded by frozen MiniLM (max 256 tokens, mean "
                 f"{float(sources['condition_mask'].sum(1).float().mean()):.0f}; sentences: mean "
                 f"{float(sentences['condition_mask'].sum(1).float().mean()):.1f}), DiT {cfg.denoiser.hidden_size} x "
                 f"{cfg.denoiser.num_layers}, self-conditioning (two passes per step), AdamW; {args.rounds} interleaved rounds "
                 f"after {WARMUP} warm-up; sampling: DPM 20 steps, CFG 2.0 for the conditional arms; 2 threads",
        "source_latents": args.source_latents,
        "arms": rows,
    }
    for name, row in rows.items():
        print(f"{name:>16}: {row['step_seconds_median']:.3f} s/step ({row['ratio_to_no_source']:.2f}x), "
              f"sampling {row['sampling_call_seconds']:.2f} s", flush=True)


def preset_arm() -> str:
    """The dit_step arm that reads the source as configs/diffusion/flagship/concept_debian.yaml does: the summary's ratio."""
    from latentdlm.config import load_config
    from latentdlm.training.diffusion import DiffusionTrainConfig

    cfg = load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/flagship/concept_debian.yaml")
    if cfg.condition.granularity == "sentences":
        return "sentences"
    return f"resampled_{cfg.denoiser.source_latents}" if cfg.denoiser.source_latents else "every_token"


def summary(results: dict) -> dict:
    out = dict.fromkeys(SUMMARY_KEYS)
    title2story = Results(RESULTS_DIR / "quality_ladder.json").get("title2story", {}).get("systems", {})  # the ladder's part
    if "peer" in title2story and len(title2story) > 1:
        out["mauve_mpnet_title2story"] = next(row for name, row in title2story.items() if name != "peer")["mauve_mpnet"]
        out["mauve_mpnet_title2story_peer"] = title2story["peer"]["mauve_mpnet"]
    for task in ("debian", "xsum", "dialogsum"):
        row = results.get(task, {})
        if "peer" in row:
            out[f"rougeL_{task}"], out[f"rougeL_{task}_peer"] = row["latentdlm"]["rougeL"], row["peer"]["rougeL"]
            if f"rougeL_{task}_lead1" in out:
                out[f"rougeL_{task}_lead1"] = row["lead1"]["rougeL"]
    if "peer" in results.get("debian", {}):
        out["rougeL_debian_ceiling"] = results["debian"]["ceiling"]["rougeL"]
        out["latent_gap_source_aware"] = results["debian"]["latent_gap_nats"]
    step = results.get("dit_step")
    if step:
        out["cond_step_seconds_ratio"] = step["arms"][preset_arm()]["ratio_to_no_source"]
    return out


def arguments(parser) -> None:
    parser.add_argument("--source-latents", type=int, nargs="+", default=[32, 8],
                        help="dit_step: the Perceiver's vectors, one arm each (default %(default)s)")
    parser.add_argument("--rounds", type=int, default=12, help="dit_step: timed rounds per arm (default %(default)s)")
    parser.add_argument("--granularity", nargs="+", default=["sentences", "tokens"], choices=["sentences", "tokens"],
                        help="summaries: the DiTs trained and compared on validation (default %(default)s)")
    parser.add_argument("--source-dropout", type=float, nargs="+", default=[0.0, 0.3],
                        help="summaries: the decoders trained and compared on validation, each hiding the source from this "
                             "share of its training rows (objective.context_dropout: it must write from the latent alone; "
                             "default %(default)s)")


if __name__ == "__main__":
    tasks = {name: (lambda args, results, name=name: summary_tasks.run_task(name, args, results)) for name in summary_tasks.TASKS}
    run_benchmark(__doc__, "text_to_text", {"dit_step": part_dit_step, **tasks}, work_dir="runs/text_to_text", summary=summary,
                  arguments=arguments, plot=plots.text_to_text)
