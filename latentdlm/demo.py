"""`latentdlm demo`: the embedded default, end to end on a laptop CPU with no downloads.

Trains the tiny paragraph autoencoder and the tiny latent DiT on the bundled public-domain corpus
(Austen paragraphs + Aesop fables), generates paragraphs, and writes a Markdown report with the
training curves and the samples next to the saved pipeline folder.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from latentdlm.config import load_config
from latentdlm.data.sources import load_texts
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.generation import distinct_n, diversity, memorization

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = {"autoencoder": CONFIGS / "autoencoder" / "tiny.yaml", "diffusion": CONFIGS / "diffusion" / "tiny.yaml"}
# Minutes, not hours: small batches give the autoencoder 4x more (noisier) steps in the same time, which
# is what gets its decoder to read the latent before the budget ends; fewer held-out evaluations.
DEMO_AUTOENCODER = ["training.batch_size=16", "training.eval_every=500", "training.save_every=500"]


def run_demo(output_dir: str, autoencoder_minutes: float, diffusion_minutes: float, num_samples: int, overwrite: bool) -> Path:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
    from latentdlm.training.autoencoder import AutoencoderTrainConfig, train_autoencoder
    from latentdlm.training.diffusion import DiffusionTrainConfig, train_diffusion

    out = Path(output_dir)
    if (out / "report.md").exists() and not overwrite:
        raise LatentDLMError(f"{out} already holds a demo; pass --overwrite to replace it, or another --output-dir")
    missing = [str(p) for p in PRESETS.values() if not p.is_file()]
    if missing:
        raise LatentDLMError(f"the demo presets are missing ({', '.join(missing)}); run it from a source checkout (pip install -e .)")
    if num_samples < 1:
        raise LatentDLMError(f"--num-samples must be at least 1, got {num_samples}")
    started = time.monotonic()
    common = [f"training.overwrite_output_dir={str(overwrite).lower()}"]

    print("== 1/3 paragraph autoencoder on the bundled corpus", flush=True)
    ae_cfg = load_config(AutoencoderTrainConfig, PRESETS["autoencoder"], common + DEMO_AUTOENCODER + [
        f"training.output_dir={out / 'autoencoder-run'}", f"training.max_minutes={autoencoder_minutes}",
    ])
    autoencoder_dir = train_autoencoder(ae_cfg)

    print("\n== 2/3 latent DiT on the encoded corpus", flush=True)
    dm_cfg = load_config(DiffusionTrainConfig, PRESETS["diffusion"], common + [
        f"autoencoder={autoencoder_dir}", f"training.output_dir={out / 'diffusion-run'}",
        f"training.max_minutes={diffusion_minutes}",
    ])
    pipeline_dir = train_diffusion(dm_cfg)

    print(f"\n== 3/3 {num_samples} generated paragraphs", flush=True)
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    texts = pipe(num_samples=num_samples, num_inference_steps=dm_cfg.sampling.num_inference_steps, seed=0).texts
    for i, text in enumerate(texts, 1):
        print(f"\n[{i}] {text}")
    training_texts = load_texts(dm_cfg.data.source, dm_cfg.data.column)
    scores = {
        "diversity": diversity(texts), "distinct_2": distinct_n(texts, 2),
        "memorization_4gram": memorization(texts, training_texts),
    }
    report = write_report(out, autoencoder_dir.parent, pipeline_dir.parent, texts, scores, time.monotonic() - started)
    print(f"\npipeline: {pipeline_dir}\nreport:   {report}\n"
          f"try:      latentdlm generate --model {pipeline_dir} --num-samples 4 --seed 1")
    return report


def write_report(out: Path, ae_run: Path, dm_run: Path, texts: list[str], scores: dict, seconds: float) -> Path:
    ae_metrics = json.loads((ae_run / "final_metrics.json").read_text())
    recons = [json.loads(line) for line in (ae_run / "reconstructions.jsonl").read_text().splitlines()[:3]]
    ae_steps = json.loads((ae_run / "run_info.json").read_text())["final_step"]
    dm_steps = json.loads((dm_run / "run_info.json").read_text())["final_step"]
    lines = [
        "# latentdlm demo report", "",
        f"Tiny paragraph autoencoder + tiny latent DiT trained on the bundled public-domain corpus "
        f"(Austen + Aesop) in {seconds / 60:.1f} minutes.", "",
        "## 1. Paragraph autoencoder", "",
        f"{ae_steps} steps. Held-out reconstruction: BLEU {ae_metrics['bleu']:.1f}, exact match "
        f"{ae_metrics['exact_match']:.1%}, latent gap {ae_metrics.get('latent_gap', float('nan')):.2f} nats.", "",
        f"![autoencoder training curves]({(ae_run / 'training_curves.png').relative_to(out)})", "",
    ]
    for r in recons:
        lines += [f"- original: {r['text'][:400]}", f"  - reconstructed: {r['reconstruction'][:400]}"]
    lines += [
        "", "## 2. Latent DiT", "", f"{dm_steps} steps.", "",
        f"![diffusion training curves]({(dm_run / 'training_curves.png').relative_to(out)})", "",
        "## 3. Generated paragraphs", "",
        f"Diversity {scores['diversity']:.3f}, distinct-2 {scores['distinct_2']:.3f}, "
        f"4-grams found in the training corpus {scores['memorization_4gram']:.1%}.", "",
    ]
    lines += [f"{i}. {text}" for i, text in enumerate(texts, 1)]
    lines += ["", f"Pipeline folder: `{dm_run / 'pipeline'}`", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
