"""Autoencoder benchmark: the `tiny` preset on ROCStories for a fixed CPU budget, segment vs paragraph mode.

    python benchmarks/autoencoder.py [--segment-minutes 30] [--paragraph-minutes 20]

Each mode trains in its own process (one torch process on the cores at a time), evaluates held-out
reconstruction on rocstories/dev.jsonl (BLEU, exact match, latent gap) during training, and the
results go to benchmarks/results/autoencoder.json with a BLEU-vs-minutes plot (autoencoder.png).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import plots
import yaml
from runner import ROOT, run_benchmark

from latentdlm.data.sources import data_root

CHILD = (  # the CLI in a child process that also reports its peak memory
    "import resource, sys; from latentdlm.cli import main; rc = main(sys.argv[1:]); "
    "print('PEAK_RSS_MB', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024); sys.exit(rc)"
)

MODES = {
    # SLD-style: one 16 x 64 block per sentence
    "segment": ["model.segmentation.mode=sentences", "model.segmentation.max_segments=8", "model.max_length=48"],
    # whole story in 32 x 64 latents; KL annealing + free bits + strong decoder word dropout against
    # collapse, and half the batch for twice the steps (stories are ~5x longer than sentences)
    "paragraph": [
        "model.segmentation.mode=none", "model.num_latents=32", "model.max_length=128", "training.batch_size=32",
        "objective.word_dropout=0.5", "objective.free_bits=0.05", "objective.kl_anneal_steps=2000",
    ],
}


def run_mode(name: str, minutes: float, out_dir: Path, eval_every: int, max_eval: int, extra: list[str]) -> dict:
    rocstories = data_root() / "rocstories"
    run_dir = out_dir / name
    cmd = [
        sys.executable, "-c", CHILD, "train-autoencoder", "--config", str(ROOT / "configs/autoencoder/tiny.yaml"),
        f"data.source={rocstories / 'train.jsonl'}", f"data.eval_source={rocstories / 'dev.jsonl'}",
        "data.eval_split=train", f"data.max_eval={max_eval}", f"training.output_dir={run_dir}",
        "training.overwrite_output_dir=true", f"training.max_minutes={minutes}", "training.max_steps=1000000",
        f"training.eval_every={eval_every}", "training.save_every=0", "show_examples=2", *MODES[name], *extra,
    ]
    print(f"== {name} mode, {minutes} min", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    (out_dir / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{name} run failed, see {out_dir / f'{name}.log'}:\n{proc.stderr[-2000:]}")
    peak = float(next(line.split()[1] for line in proc.stdout.splitlines() if line.startswith("PEAK_RSS_MB")))
    return summarize(run_dir, peak, MODES[name] + extra)


def summarize(run_dir: Path, peak_rss_mb: float, overrides: list[str]) -> dict:
    """The numbers of one finished run, read back from its output folder."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if "loss" in r]
    curve = [
        {"train_minutes": r["train_minutes"], "step": r["step"], "bleu": r["eval/bleu"],
         "exact_match": r["eval/exact_match"], "latent_gap": r["eval/latent_gap"]}
        for r in records if "eval/bleu" in r
    ]
    final = json.loads((run_dir / "final_metrics.json").read_text())
    config = yaml.safe_load((run_dir / "train_config.yaml").read_text())
    examples = [json.loads(line) for line in (run_dir / "reconstructions.jsonl").read_text().splitlines()[:3]]
    return {
        "overrides": overrides,
        "learning_rate": config["training"]["learning_rate"],
        "latents_per_unit": f"{config['model']['num_latents']}x{config['model']['latent_dim']}",
        "train_minutes": train[-1]["train_minutes"],
        "steps": train[-1]["step"],
        "steps_per_second": train[-1]["step"] / (60 * train[-1]["train_minutes"]),
        "final_train_nll": train[-1]["nll"],
        "final_bleu": final["bleu"],
        "final_exact_match": final["exact_match"],
        "final_latent_gap": final.get("latent_gap"),
        "peak_rss_mb": peak_rss_mb,
        "curve": curve,
        "examples": examples,
    }


def part(name: str, args, results: dict) -> None:
    minutes = getattr(args, f"{name}_minutes")
    results["modes"][name] = run_mode(name, minutes, args.work_dir, args.eval_every, args.max_eval, args.set)


PARTS = {name: functools.partial(part, name) for name in MODES}


def arguments(parser) -> None:
    parser.add_argument("--segment-minutes", type=float, default=30)
    parser.add_argument("--paragraph-minutes", type=float, default=20)
    parser.add_argument("--eval-every", type=int, default=300)
    parser.add_argument("--max-eval", type=int, default=200, help="dev stories scored at each evaluation")
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value", help="extra config overrides for these runs")


def setup(args, results: dict) -> None:
    args.work_dir.mkdir(parents=True, exist_ok=True)
    results.setdefault("modes", {})  # the modes not run this time are kept
    results.update(preset="configs/autoencoder/tiny.yaml", data="rocstories/train.jsonl -> rocstories/dev.jsonl", machine="2 CPU cores")


def report(results: dict) -> None:
    for name, res in results["modes"].items():
        print(f"{name}: BLEU {res['final_bleu']:.1f}, exact {res['final_exact_match']:.1%}, "
              f"{res['steps_per_second']:.2f} steps/s, peak {res['peak_rss_mb']:.0f} MB")


if __name__ == "__main__":
    run_benchmark(__doc__, "autoencoder", PARTS, work_dir=str(ROOT / "runs/benchmark-autoencoder"), plot=plots.autoencoder,
                  arguments=arguments, setup=setup, report=report, select="--modes")
