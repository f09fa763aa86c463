"""Model cards: the `README.md` a saved folder (and its hub repo) carries, in the hub's format (YAML
metadata, then text), written from the model's config and the record of its training."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Optional

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from latentdlm.data.sources import BUNDLED

TAGS = ["latentdlm", "latent-diffusion", "paragraph-autoencoder", "text-generation"]
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".tsv", ".txt")


def training_record(config, num_texts: int, metrics: dict, run_info: dict, minutes: float) -> dict:
    """What the card says of a finished training run: its data, length (`run_info`: the trainer's final step,
    world size and global batch; `minutes` over every resumed part), final scores and whole config."""
    data = config.data
    return {
        "data": {"source": data.source, "column": data.column, "split": data.split, "num_texts": num_texts},
        "steps": run_info["final_step"], "train_minutes": round(minutes, 1), "world_size": run_info["world_size"],
        "global_batch_size": run_info["global_batch_size"],
        "metrics": {name: round(value, 4) for name, value in metrics.items() if isinstance(value, (int, float))},
        "config": dataclasses.asdict(config),
    }


def hub_dataset(source: str) -> Optional[str]:
    """The hub dataset id of a data source, or None for the bundled corpora and local files."""
    if source.startswith("bundled") or source.endswith(LOCAL_SUFFIXES) or Path(source).exists():
        return None
    return source


def dataset_name(source: str) -> str:
    if source.startswith("bundled"):
        names = source.partition(":")[2] or " + ".join(BUNDLED)
        return f"the bundled public-domain corpus ({names})"
    return f"`{source}`" if hub_dataset(source) else f"the local file `{Path(source).name}`"


def _card(title: str, summary: str, record: Optional[dict], usage: str, pipeline_tag: str, extra_tags: list[str],
          parts: list[str]) -> ModelCard:
    record = record or {}
    data = record.get("data", {})
    dataset = hub_dataset(data["source"]) if data else None
    metrics = record.get("metrics", {})
    card_data = ModelCardData(
        library_name="latentdlm", tags=sorted(set(TAGS + extra_tags)), pipeline_tag=pipeline_tag, model_name=title,
        datasets=[dataset] if dataset else None, metrics=sorted(metrics) or None,
        base_model=[p for p in parts if p and not p.startswith(("package:", "/", "."))] or None,
        eval_results=[EvalResult(task_type=pipeline_tag, dataset_type=dataset, dataset_name=dataset, metric_type=name,
                                 metric_value=value) for name, value in metrics.items()] if dataset and metrics else None,
    )
    lines = [f"# {title}", "", summary, ""]
    if data:
        lines += ["## Training", "",
                  f"Trained on {dataset_name(data['source'])}" + (f", column `{data['column']}`" if data.get("column") else "")
                  + f", {data['num_texts']} texts, for {record['steps']} optimizer steps ({record['train_minutes']} minutes; "
                  f"{record['world_size']} process(es), global batch {record['global_batch_size']}).", ""]
    else:
        lines += ["## Training", "", "No training record was saved with this model.", ""]
    if metrics:
        lines += ["## Scores", "", "| metric | value |", "|---|---|"] + [f"| {k} | {v:g} |" for k, v in metrics.items()] + [""]
    lines += ["## Usage", "", "```bash", "pip install latentdlm", "```", "", "```python", usage, "```", ""]
    if record.get("config"):
        lines += ["## Training config", "", "```yaml", yaml.safe_dump(record["config"], sort_keys=False).rstrip(), "```", ""]
    lines += ["Made with [latentdlm](https://github.com/latentdlm/latentdlm): latent paragraph-level diffusion language models.", ""]
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n".join(lines))


def _part_name(part) -> str:
    return part.name_or_path or f"a random {part.config.get('model_type', 'model')}"


def autoencoder_card(model) -> ModelCard:
    c = model.config
    units = "each sentence segment" if c.segmentation.mode != "none" else "each paragraph"
    summary = (f"A latentdlm paragraph autoencoder: {_part_name(c.encoder)} encodes {units} into {c.num_latents} x "
               f"{c.latent_dim} latents ({c.latent_type}, {c.regularization} bottleneck), and a {c.decoder.kind} decoder "
               f"({_part_name(c.decoder)}) writes the text back. It is the first stage of a latent diffusion language model.")
    usage = ("from latentdlm import ParagraphAutoencoder\n\n"
             "autoencoder = ParagraphAutoencoder.from_pretrained(\"REPO_OR_FOLDER\")\n"
             "print(autoencoder.reconstruct([\"The fox saw the grapes. They were too high.\"]))")
    return _card("latentdlm paragraph autoencoder", summary, model.training_record, usage, "feature-extraction",
                 ["autoencoder"], [c.encoder.name_or_path, c.decoder.name_or_path])


def pipeline_summary(pipe) -> str:
    """One paragraph on what a pipeline is (its card's opening, the app's header)."""
    ae, dn = pipe.autoencoder.config, pipe.denoiser.config
    condition = (f"conditioned on a class ({', '.join(dn.class_names)})" if dn.class_names else
                 "conditioned on a source text (e.g. summarization)" if dn.condition_dim else "unconditional")
    return (f"A latentdlm latent diffusion language model, {condition}: a DiT ({dn.num_layers} layers, width "
            f"{dn.hidden_size}) denoises {ae.num_latents} x {ae.latent_dim} latents per "
            f"{'segment' if ae.segmentation.mode != 'none' else 'paragraph'}, sampled with {pipe.sampler_name}, and "
            f"the paragraph autoencoder ({_part_name(ae.encoder)} -> {_part_name(ae.decoder)}) decodes them to text.")


def pipeline_card(pipe) -> ModelCard:
    ae, dn = pipe.autoencoder.config, pipe.denoiser.config
    if dn.class_names:
        call = f"pipe(num_samples=4, class_labels={dn.class_names[0]!r}, guidance_scale=2.0)"
    elif dn.condition_dim:
        call = "pipe(conditions=[\"A long document ...\"], guidance_scale=2.0)"
    else:
        call = "pipe(num_samples=4, num_inference_steps=50)"
    summary = pipeline_summary(pipe)
    usage = ("from latentdlm import LatentDiffusionTextPipeline\n\n"
             "pipe = LatentDiffusionTextPipeline.from_pretrained(\"REPO_OR_FOLDER\")\n"
             f"print({call}.texts)\n"
             "# or on the command line: latentdlm generate --model REPO_OR_FOLDER --num-samples 4\n"
             "# or in a browser page:   latentdlm app --model REPO_OR_FOLDER")
    record = pipe.training_record
    ae_metrics = (pipe.autoencoder.training_record or {}).get("metrics", {})
    if record and ae_metrics:  # the autoencoder's reconstruction scores belong on the pipeline's card too
        record = {**record, "metrics": {**record["metrics"], **{f"autoencoder_{k}": v for k, v in ae_metrics.items()}}}
    return _card("latentdlm latent diffusion language model", summary, record, usage, "text-generation",
                 ["diffusers", "text-diffusion"], [ae.encoder.name_or_path, ae.decoder.name_or_path])
