"""Stage 2: train the latent DiT (`latentdlm train-diffusion`, scripts/train_diffusion.py).

The corpus is encoded once with the trained autoencoder (posterior means) and cached; the DiT then
trains on the cached latents with EMA weights kept on every rank. The result is one pipeline folder.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.config import save_config
from latentdlm.data.sources import load_labeled_texts, load_pairs, load_texts
from latentdlm.diffusion.condition import ConditionConfig, ConditionEncoder
from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.objective import ConditionedObjective, DiffusionObjectiveConfig, diffusion_loss
from latentdlm.diffusion.schedulers import make_scheduler, training_scheduler
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.generation import distinct_n
from latentdlm.evaluation.plots import plot_training_curves
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
from latentdlm.training.config import TrainingConfig
from latentdlm.training.loop import (
    clear_previous_run, finish_training, make_accelerator, make_optimizer, prepare_output_dir, rank_checksums, run_training,
)

FINAL_NAME = "pipeline"
CACHE_NAME = "latents.safetensors"


@dataclass
class DiffusionDataConfig:
    source: str = "bundled"  # bundled[:austen|aesop], a local jsonl/json/csv/tsv/txt file, or a hub dataset
    column: Optional[str] = None
    label_column: Optional[str] = None  # class-conditional training: the label column ("first_word": SST-2 txt)
    condition_column: Optional[str] = None  # text-conditional training: the source column (`column` is the target)
    split: str = "train"
    limit: Optional[int] = None


@dataclass
class DenoiserConfig:
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    patch_size: int = 1  # latents of a segment per DiT token: 4 makes a 16-latent segment 4 tokens (~4x cheaper)
    dropout: float = 0.0
    self_conditioning: bool = True


@dataclass
class SamplingConfig:
    scheduler: str = "dpm"  # the pipeline's default sampler: ddpm | ddim | dpm
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    num_samples: int = 4  # printed at each evaluation and at the end


@dataclass
class DiffusionTrainConfig:
    autoencoder: str = "runs/tiny-autoencoder/autoencoder"  # a folder saved by train-autoencoder
    data: DiffusionDataConfig = field(default_factory=DiffusionDataConfig)
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    objective: DiffusionObjectiveConfig = field(default_factory=DiffusionObjectiveConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    condition: ConditionConfig = field(default_factory=ConditionConfig)  # used with data.condition_column
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(output_dir="runs/diffusion"))
    ema_decay: float = 0.999
    encode_batch_size: int = 128


# ---- the latent cache ----------------------------------------------------------------------------
def _cache_key(cfg: DiffusionTrainConfig) -> str:
    """Changes whenever the autoencoder weights or the data settings change."""
    digest = hashlib.sha256(json.dumps(cfg.data.__dict__, sort_keys=True).encode())
    with open(Path(cfg.autoencoder) / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def encode_corpus(autoencoder: ParagraphAutoencoder, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All segments' latents (N_units, k, d) in text order, and the number of segments of each text."""
    units, counts = [], []
    chunk = batch_size * 4
    with warnings.catch_warnings(record=True) as truncations:  # one summary instead of one line per chunk
        warnings.simplefilter("always")
        for start in tqdm(range(0, len(texts), chunk), desc="encoding the corpus", unit="chunk"):
            encoded = autoencoder.encode(texts[start : start + chunk], batch_size)
            units.append(encoded.latents[encoded.segment_mask].cpu())
            counts.append(encoded.segment_mask.sum(dim=1).cpu())
    units, counts = torch.cat(units), torch.cat(counts)
    truncated = sum(int(str(w.message).split()[0]) for w in truncations if "were truncated" in str(w.message))
    if truncated:
        warnings.warn(f"{truncated} of {len(units)} segments are longer than max_length="
                      f"{autoencoder.config.max_length} tokens and were truncated before encoding")
    return units, counts


def load_or_encode(cfg: DiffusionTrainConfig, autoencoder: ParagraphAutoencoder, out: Path, is_main: bool, wait) -> dict:
    """{units, counts, labels?}, the class names and the source texts, from the cache or encoded once by
    the main process."""
    path, meta = out / CACHE_NAME, out / "latents.json"
    data_cfg = cfg.data
    if is_main:
        key = _cache_key(cfg)
        if not (path.exists() and meta.exists() and json.loads(meta.read_text()).get("key") == key):
            names = sources = None
            if data_cfg.label_column and data_cfg.condition_column:
                raise LatentDLMError("data.label_column and data.condition_column: condition on a class or on a text, not both")
            if data_cfg.label_column:
                pairs = load_labeled_texts(data_cfg.source, data_cfg.column, data_cfg.label_column, data_cfg.split, data_cfg.limit)
                texts, names = [t for t, _ in pairs], [label for _, label in pairs]
            elif data_cfg.condition_column:
                pairs = load_pairs(data_cfg.source, data_cfg.condition_column, data_cfg.column, data_cfg.split, data_cfg.limit)
                sources, texts = [s for s, _ in pairs], [t for _, t in pairs]
            else:
                texts = load_texts(data_cfg.source, data_cfg.column, data_cfg.split, data_cfg.limit)
            units, counts = encode_corpus(autoencoder, texts, cfg.encode_batch_size)
            tensors = {"units": units.contiguous(), "counts": counts}
            class_names = sorted(set(names), key=_natural) if names else None
            if names:
                tensors["labels"] = torch.tensor([class_names.index(n) for n in names])
            save_file(tensors, str(path))
            meta.write_text(json.dumps({"key": key, "class_names": class_names, "texts": len(texts), "sources": sources}))
    wait()
    data = load_file(str(path))
    info = json.loads(meta.read_text())
    data["class_names"], data["sources"] = info["class_names"], info.get("sources")
    return data


def _natural(label: str):
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


class LatentDataset(torch.utils.data.Dataset):
    """Text i -> its normalised segment latents (S_i, k, d), its label and its source text."""

    def __init__(self, units: torch.Tensor, counts: torch.Tensor, labels: Optional[torch.Tensor],
                 sources: Optional[list[str]] = None):
        self.units, self.labels, self.sources = units, labels, sources
        self.offsets = torch.cumsum(counts, 0) - counts

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int):
        start = int(self.offsets[i])
        end = int(self.offsets[i + 1]) if i + 1 < len(self.offsets) else len(self.units)
        return (self.units[start:end], None if self.labels is None else self.labels[i],
                None if self.sources is None else self.sources[i])


def collate_latents(items: list, condition_encoder: Optional[ConditionEncoder] = None) -> dict[str, torch.Tensor]:
    """Pad to the batch's largest segment count: latents (B, S*k, d), latent_mask (B, S*k); class labels,
    or the source texts' tokens when a condition encoder is given."""
    width = max(x.shape[0] for x, _, _ in items)
    k, d = items[0][0].shape[1:]
    latents = torch.zeros(len(items), width, k, d)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for row, (x, _, _) in enumerate(items):
        latents[row, : len(x)] = x
        mask[row, : len(x)] = True
    batch = {"latents": latents.reshape(len(items), width * k, d), "latent_mask": mask.repeat_interleave(k, dim=1)}
    if items[0][1] is not None:
        batch["class_labels"] = torch.stack([label for _, label, _ in items])
    if condition_encoder is not None:
        tokens = condition_encoder.tokenize([source for _, _, source in items], warn=False)
        batch["condition_input_ids"], batch["condition_attention_mask"] = tokens["input_ids"], tokens["attention_mask"]
    return batch


# ---- training ------------------------------------------------------------------------------------
def build_denoiser(cfg: DiffusionTrainConfig, autoencoder: ParagraphAutoencoder, data: dict,
                   condition_dim: Optional[int] = None) -> LatentDiT:
    seg = autoencoder.config.segmentation
    conditional = bool(data["class_names"]) or condition_dim is not None
    max_segments = 1 if seg.mode == "none" else seg.max_segments or int(data["counts"].max())
    denoiser = LatentDiT(
        latent_dim=autoencoder.config.latent_dim, num_latents=autoencoder.config.num_latents, max_segments=max_segments,
        hidden_size=cfg.denoiser.hidden_size, num_layers=cfg.denoiser.num_layers, num_heads=cfg.denoiser.num_heads,
        patch_size=cfg.denoiser.patch_size, dropout=cfg.denoiser.dropout, self_conditioning=cfg.denoiser.self_conditioning,
        class_names=data["class_names"], condition_dim=condition_dim,
        condition_dropout=cfg.objective.condition_dropout if conditional else None,
    )
    denoiser.set_latent_statistics(data["units"], data["counts"])
    return denoiser


def train_diffusion(cfg: DiffusionTrainConfig, resume: bool = False, cpu: bool = False) -> Path:
    """Train and save `<output_dir>/pipeline`; returns that folder."""
    accelerator = make_accelerator(cfg.training, cpu=cpu)
    out = prepare_output_dir(cfg.training, resume, FINAL_NAME)
    set_seed(cfg.training.seed)
    train_scheduler = training_scheduler(cfg.objective.prediction_type, cfg.objective.beta_schedule, cfg.objective.num_train_timesteps)
    make_scheduler(cfg.sampling.scheduler, train_scheduler)  # an unknown name fails now, not after training
    autoencoder = ParagraphAutoencoder.from_pretrained(cfg.autoencoder).to(accelerator.device)
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        if not resume:
            clear_previous_run(out)
            save_config(cfg, out / "train_config.yaml")
    data = load_or_encode(cfg, autoencoder, out, accelerator.is_main_process, accelerator.wait_for_everyone)
    if len(data["counts"]) < cfg.training.batch_size * accelerator.num_processes:
        raise LatentDLMError(f"{len(data['counts'])} training texts are fewer than one batch "
                             f"({cfg.training.batch_size} per process x {accelerator.num_processes})")
    condition_encoder = None
    if data["sources"] is not None:
        condition_encoder = ConditionEncoder.build(cfg.condition, autoencoder.encoder_tokenizer)
        condition_encoder.warn_truncated(data["sources"])  # once, with the count of truncated sources
    denoiser = build_denoiser(cfg, autoencoder, data, None if condition_encoder is None else condition_encoder.hidden_size)
    accelerator.print(f"denoiser: {sum(p.numel() for p in denoiser.parameters()) / 1e6:.1f} M parameters over "
                      f"{len(data['counts'])} texts ({len(data['units'])} segments)")
    dataset = LatentDataset(denoiser.normalize(data["units"]), data["counts"], data.get("labels"), data["sources"])
    loader = DataLoader(dataset, batch_size=cfg.training.batch_size, shuffle=True, drop_last=True,
                        collate_fn=lambda items: collate_latents(items, condition_encoder),
                        generator=torch.Generator().manual_seed(cfg.training.seed))

    # a text-conditioned run trains the DiT and (unless frozen) its condition encoder as one module
    trainee = denoiser if condition_encoder is None else ConditionedObjective(denoiser, condition_encoder, train_scheduler, cfg.objective)
    ema = EMAModel(_trainable(trainee), decay=cfg.ema_decay)
    optimizer, scheduler = make_optimizer(cfg.training, trainee, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(trainee, optimizer, loader, scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    if cfg.training.log_with:
        accelerator.init_trackers("latentdlm-diffusion")

    def pipeline() -> LatentDiffusionTextPipeline:
        sampler = make_scheduler(cfg.sampling.scheduler, train_scheduler)
        return LatentDiffusionTextPipeline(autoencoder, denoiser, sampler, condition_encoder)

    def samples(step: int, show: bool) -> list[str]:
        trainee.eval()
        count = cfg.sampling.num_samples
        labels = _round_robin(data["class_names"], count)
        sources = data["sources"][:count] if data["sources"] else None  # training sources: is the condition used?
        texts = pipeline()(
            num_samples=len(sources) if sources else count, num_inference_steps=cfg.sampling.num_inference_steps,
            seed=step, class_labels=labels, conditions=sources,
            guidance_scale=cfg.sampling.guidance_scale if labels or sources else 1.0,
            guidance_rescale=cfg.sampling.guidance_rescale, show_progress=False,
        ).texts
        with (out / "samples.jsonl").open("a") as f:
            for i, text in enumerate(texts):
                record = {"step": step, "class_label": labels[i] if labels else None, "text": text}
                if sources:
                    record["condition"] = sources[i]
                f.write(json.dumps(record) + "\n")
        if show:
            for i, text in enumerate(texts):
                given = f" [{labels[i]}]" if labels else f" [{sources[i][:60]}...]" if sources else ""
                tqdm.write(f"  sample{given}: {text[:300]}")
        return texts

    def evaluate(step: int) -> dict:
        if not accelerator.is_main_process:
            return {}
        params = _trainable(accelerator.unwrap_model(model))
        ema.store(params)
        ema.copy_to(params)  # samples come from the EMA weights
        texts = samples(step, show=True)
        ema.restore(params)
        return {"eval/distinct_2": distinct_n(texts, 2)}

    step = run_training(
        accelerator, cfg.training, model, optimizer, scheduler, loader,
        loss_fn=(lambda module, batch, step: diffusion_loss(module, train_scheduler, batch, cfg.objective))
        if condition_encoder is None else (lambda module, batch, step: module(batch)),
        evaluate=evaluate, resume=resume, description="diffusion",
        after_step=lambda step: ema.step(_trainable(accelerator.unwrap_model(model))),
    )
    checksums = rank_checksums(accelerator, model) + rank_checksums(accelerator, _ShadowParams(ema))
    final = out / FINAL_NAME
    if accelerator.is_main_process:
        ema.copy_to(_trainable(accelerator.unwrap_model(model)))
        info = {"world_size": accelerator.num_processes, "final_step": step, "rank_weight_checksums": checksums}
        (out / "run_info.json").write_text(json.dumps(info, indent=2))
        pipeline().save_pretrained(final)
        tqdm.write(f"samples after {step} steps:")
        samples(step, show=True)
        plot_training_curves(out / "metrics.jsonl", out / "training_curves.png", f"diffusion: {out.name}")
        accelerator.print(f"saved the pipeline to {final}")
    finish_training(accelerator)
    return final


def _trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights EMA follows: the DiT's, and a trainable condition encoder's."""
    return [p for p in module.parameters() if p.requires_grad]


class _ShadowParams(torch.nn.Module):
    """The EMA weights as a module, for a per-rank checksum."""

    def __init__(self, ema: EMAModel):
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False) for p in ema.shadow_params])


def _round_robin(class_names: Optional[list[str]], count: int) -> Optional[list[str]]:
    return [class_names[i % len(class_names)] for i in range(count)] if class_names else None
