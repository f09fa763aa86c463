"""Train the decoder adapter that `latentdlm demo` ships with, and install it into the package.

The demo's autoencoder is design (b) of the flagship (configs/autoencoder/minilm_smollm2_concept.yaml):
frozen MiniLM sentence embeddings as latents, inverted by SmolLM2-135M through an MLP prefix and LoRA.
SmolLM2 learns at ~100-200 tokens/s on 2 CPU cores, too slowly to learn the inversion inside a
15-minute demo, so the trained weights (the prefix MLP and LoRA, a few MB in bfloat16; the frozen
MiniLM and SmolLM2 weights are not included) ship with the package, and the demo trains only the DiT.

    python scripts/train_demo_decoder.py --minutes 40

writes latentdlm/data/adapters/minilm_smollm2_concept/ (a saved autoencoder folder) with TRAINING.json:
the command, minutes, steps, held-out BLEU and meaning cosine, and example reconstructions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from latentdlm.config import load_config
from latentdlm.evaluation.reconstruction import meaning_similarity
from latentdlm.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "configs/autoencoder/minilm_smollm2_concept.yaml"
TARGET = ROOT / "latentdlm/data/adapters/minilm_smollm2_concept"


def install(autoencoder: Path, target: Path, record: dict) -> None:
    """Copy the saved autoencoder (and its run's training curves) into the package with its weights in
    bfloat16 (half the size)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(autoencoder, tmp)
    shutil.copy(autoencoder.parent / "training_curves.png", tmp / "training_curves.png")
    weights = load_file(str(tmp / "model.safetensors"))
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors"))
    (tmp / "TRAINING.json").write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=40.0, help="training budget")
    parser.add_argument("--work-dir", default="runs/demo-decoder")
    parser.add_argument("--target", default=str(TARGET))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    torch.set_flush_denormal(True)
    started = time.time()
    cfg = load_config(AutoencoderTrainConfig, PRESET, [
        f"training.output_dir={args.work_dir}", f"training.max_minutes={args.minutes}",
        "training.overwrite_output_dir=true", *args.overrides,
    ])
    final = train_autoencoder(cfg)
    run = final.parent
    pairs = [json.loads(line) for line in (run / "reconstructions.jsonl").read_text().splitlines()]
    metrics = json.loads((run / "final_metrics.json").read_text())
    metrics["meaning_cosine_minilm"] = meaning_similarity([p["text"] for p in pairs], [p["reconstruction"] for p in pairs])
    record = {
        "command": " ".join(["python", "scripts/train_demo_decoder.py", *sys.argv[1:]]),
        "preset": str(PRESET.relative_to(ROOT)), "overrides": args.overrides,
        "corpus": "bundled (Austen + Aesop, public domain), sentence segments",
        "training_minutes": round((time.time() - started) / 60, 1),  # wall clock: embedding, evaluations and saving included
        "train_loop_minutes": args.minutes,  # the budget of the training loop itself
        "final_step": json.loads((run / "run_info.json").read_text())["final_step"],
        "held_out": {"texts": len(pairs), **metrics},
        "examples": pairs[:6],
    }
    install(final, Path(args.target), record)
    print(json.dumps({k: v for k, v in record.items() if k != "examples"}, indent=2))
    print(f"installed into {args.target}")


if __name__ == "__main__":
    main()
