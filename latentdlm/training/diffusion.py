"""Stage 2: train the latent DiT (`latentdlm train-diffusion`, scripts/train_diffusion.py).

The corpus is encoded once with the trained autoencoder (posterior means) and cached (training/latent_data.py);
the DiT then trains on the cached latents with EMA weights kept on every rank (training/checkpoints.py). The result is
one pipeline folder.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from safetensors import safe_open
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latentdlm.autoencoder.decoding import DecodingConfig
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.config import save_config
from latentdlm.diffusion.condition import ConditionConfig, ConditionEncoder
from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.objective import ConditionedObjective, DiffusionObjectiveConfig, diffusion_loss
from latentdlm.diffusion.schedulers import make_scheduler, training_scheduler
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.generation import distinct_n
from latentdlm.evaluation.plots import plot_training_curves
from latentdlm.io import WEIGHTS_NAME, write_errors_explained
from latentdlm.model_card import training_record
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
from latentdlm.shards import SHARD_UNITS
from latentdlm.training.checkpoints import (
    EMACheckpoint, ShadowParams, clear_previous_run, is_sharded, prepare_output_dir, trainable,
)
from latentdlm.training.config import TrainingConfig
from latentdlm.training.latent_data import LatentDataset, collate_latents, load_or_encode, load_or_encode_conditions
from latentdlm.training.loop import (
    finish_training, gathered_weights, global_batch, logged_minutes, make_accelerator, make_optimizer,
    rank_checksums, read_metrics, run_training,
)

FINAL_NAME = "pipeline"


@dataclass
class DiffusionDataConfig:
    source: str = "bundled"  # bundled[:austen|aesop], a local jsonl/json/csv/tsv/txt file, or a hub dataset
    column: Optional[str] = None
    label_column: Optional[str] = None  # class-conditional training: the label column ("first_word": SST-2 txt)
    condition_column: Optional[str] = None  # text-conditional training: the source column (`column` is the target)
    # raw label -> class name, e.g. {1: World, 2: Sports} for AG News: the model's classes (and --class-label)
    # are then the names; every raw label in the data must be named
    label_names: Optional[dict[Any, str]] = None
    split: str = "train"
    limit: Optional[int] = None
    # read the texts as a stream (a hub dataset with datasets' streaming, a local file in batches), encoded shard by
    # shard: the corpus is never a list in memory (unconditional corpora: no label or condition column)
    streaming: bool = False

    def __post_init__(self):
        if self.label_names is not None:  # YAML reads {1: World} with int keys, {"1": World} with str keys: one form
            self.label_names = {str(raw).strip(): str(name) for raw, name in self.label_names.items()}


@dataclass
class DenoiserConfig:
    hidden_size: int = 256
    num_layers: int = 6
    num_heads: int = 4
    patch_size: int = 1  # latents of a segment per DiT token: 4 makes a 16-latent segment 4 tokens (~4x cheaper)
    dropout: float = 0.0
    self_conditioning: bool = True
    # text-conditioned DiTs: a Perceiver resamples the source's token states to this many vectors, read by every
    # layer's cross-attention (null: all tokens, up to condition.max_length)
    source_latents: Optional[int] = None


@dataclass
class SamplingConfig:
    scheduler: str = "dpm"  # the pipeline's default sampler: ddpm | ddim | dpm
    num_inference_steps: int = 20
    guidance_scale: float = 1.0
    guidance_rescale: float = 0.0
    num_samples: int = 4  # printed at each evaluation and at the end
    # the decoder's settings, saved as the pipeline's defaults (model_index.json "decoding"; calls override them)
    decode_beams: int = 1  # 1: greedy
    no_repeat_ngram_size: int = 0  # 0: off
    repetition_penalty: float = 1.0  # 1: off
    top_p: Optional[float] = None  # nucleus sampling when set
    temperature: float = 1.0  # with top_p

    def decoding(self) -> DecodingConfig:
        return DecodingConfig(**{f.name: getattr(self, f.name) for f in dataclasses.fields(DecodingConfig)})


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
    # units per shard of the latent cache: every process of a launch encodes an even share of the shards
    encode_shard_units: int = SHARD_UNITS
    # a trained pipeline folder whose DiT starts this one (e.g. the unconditional story DiT for title -> story): its
    # weights where both DiTs have them (LatentDiT.start_from) and the latent statistics it was trained on
    init_from: Optional[str] = None
    # texts kept out of training: their denoising loss (fixed noise and timesteps, EMA weights) is logged at
    # every evaluation and at the end (eval/heldout_loss), so the DiT's size, EMA and schedule can be chosen on it
    heldout_texts: int = 0


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
        source_latents=cfg.denoiser.source_latents if condition_dim else None,
    )
    denoiser.set_segment_statistics(data["counts"], data.get("labels"))
    autoencoder.latent_space.fit(data["units"])  # the latent space's shift and scale: applied around the denoiser
    return denoiser


def train_diffusion(cfg: DiffusionTrainConfig, resume: bool = False, cpu: bool = False) -> Path:
    """Train and save `<output_dir>/pipeline`; returns that folder."""
    accelerator = make_accelerator(cfg.training, cpu=cpu)
    out, checkpoint = prepare_output_dir(cfg.training, resume, FINAL_NAME)
    set_seed(cfg.training.seed)  # the same on every rank while the models are built
    objective = cfg.objective
    train_scheduler = training_scheduler(objective.prediction_type, objective.beta_schedule, objective.num_train_timesteps,
                                         objective.noise_shift)
    make_scheduler(cfg.sampling.scheduler, train_scheduler)  # an unknown name fails now, not after training
    cfg.sampling.decoding()  # and so does a bad decoding setting
    if not 1 <= cfg.sampling.num_inference_steps <= cfg.objective.num_train_timesteps:
        raise LatentDLMError(f"sampling.num_inference_steps must be within 1..{cfg.objective.num_train_timesteps} "
                             f"(objective.num_train_timesteps), got {cfg.sampling.num_inference_steps}")
    if not 0 <= cfg.sampling.guidance_rescale <= 1:
        raise LatentDLMError(f"sampling.guidance_rescale must be within 0..1, got {cfg.sampling.guidance_rescale}")
    autoencoder = ParagraphAutoencoder.from_pretrained(cfg.autoencoder).to(accelerator.device)
    if autoencoder.config.source_context and not cfg.data.condition_column:
        raise LatentDLMError(f"{cfg.autoencoder} decodes from a source text (source_context): train its DiT on the same "
                             "(source, target) pairs, with data.condition_column")
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
        condition_encoder = ConditionEncoder.build(cfg.condition, autoencoder.processor.encoder_tokenizer)
        condition_encoder.warn_truncated(data["sources"])  # once, with the count of truncated sources
    denoiser = build_denoiser(cfg, autoencoder, data, None if condition_encoder is None else condition_encoder.hidden_size)
    if cfg.init_from:
        new = start_from_pipeline(denoiser, autoencoder, Path(cfg.init_from))
        accelerator.print(f"the DiT starts from {cfg.init_from}; new: {len(new)} tensors ({', '.join(sorted({n.split('.')[0] for n in new}))})")
    accelerator.print(f"denoiser: {sum(p.numel() for p in denoiser.parameters()) / 1e6:.1f} M parameters over "
                      f"{len(data['counts'])} texts ({len(data['units'])} segments)")
    conditions = data["sources"]
    if condition_encoder is not None and condition_encoder.config.freeze:
        conditions = load_or_encode_conditions(cfg, condition_encoder.to(accelerator.device), data["sources"], out)
    space = copy.deepcopy(autoencoder.latent_space).cpu()  # the dataset normalises each text's latents as it reads them
    dataset = LatentDataset(data["units"], data["counts"], data.get("labels"), conditions, space.normalize)
    dataset, heldout = split_heldout(dataset, cfg.heldout_texts, cfg.training.seed, condition_encoder)
    if len(dataset) < cfg.training.batch_size * accelerator.num_processes:
        raise LatentDLMError(f"heldout_texts={cfg.heldout_texts} leaves {len(dataset)} training texts, fewer than one batch")
    loader = DataLoader(dataset, batch_size=cfg.training.batch_size, shuffle=True, drop_last=True,
                        collate_fn=lambda items: collate_latents(items, condition_encoder),
                        generator=torch.Generator().manual_seed(cfg.training.seed))

    # a DiT that reads sources trains as one module with its objective (the source read once per step), and
    # with a trainable condition encoder (a frozen one's states were cached above)
    reads_sources = condition_encoder is not None
    trains_encoder = reads_sources and not condition_encoder.config.freeze
    trainee = (ConditionedObjective(denoiser, condition_encoder if trains_encoder else None, train_scheduler, cfg.objective)
               if reads_sources else denoiser)
    optimizer, scheduler = make_optimizer(cfg.training, trainee, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(trainee, optimizer, loader, scheduler)
    ema = EMAModel(trainable(accelerator.unwrap_model(model)), decay=cfg.ema_decay)  # under FSDP: this rank's shards
    # from here on every rank draws its own noise, timesteps and dropout (the data order is seeded apart)
    set_seed(cfg.training.seed, device_specific=True)
    if cfg.training.log_with:
        accelerator.init_trackers("latentdlm-diffusion")

    final_parts = {}  # FSDP: whole copies of the sharded parts, for the saved pipeline

    def pipeline() -> LatentDiffusionTextPipeline:
        sampler = make_scheduler(cfg.sampling.scheduler, train_scheduler)
        return LatentDiffusionTextPipeline(autoencoder, final_parts.get("denoiser", denoiser), sampler,
                                           final_parts.get("condition_encoder", condition_encoder), cfg.sampling.decoding())

    def samples(step: int, show: bool) -> list[str]:
        trainee.eval()
        count = cfg.sampling.num_samples
        labels = _round_robin(data["class_names"], count)
        sources = data["sources"][:count] if data["sources"] else None  # training sources: is the condition used?
        guided = bool(labels or sources) and cfg.sampling.guidance_scale != 1.0
        texts = pipeline()(
            num_samples=len(sources) if sources else count, num_inference_steps=cfg.sampling.num_inference_steps,
            seed=step, class_labels=labels, conditions=sources,
            guidance_scale=cfg.sampling.guidance_scale if guided else 1.0,
            guidance_rescale=cfg.sampling.guidance_rescale if guided else 0.0, show_progress=False,
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

    @torch.no_grad()
    def heldout_loss() -> float:
        """The objective on the held-out texts, with the same noise and timesteps at every evaluation."""
        batch = {k: v.to(accelerator.device) for k, v in heldout.items()}
        generator = torch.Generator(device=accelerator.device).manual_seed(0)
        module = accelerator.unwrap_model(model)
        terms = module(batch, generator) if reads_sources else diffusion_loss(module, train_scheduler, batch, objective, generator)
        return float(terms["loss"])

    def evaluate(step: int) -> dict:
        if not accelerator.is_main_process:
            return {}
        params = trainable(accelerator.unwrap_model(model))
        ema.store(params)
        ema.copy_to(params)  # samples come from the EMA weights
        texts = samples(step, show=True)
        metrics = {"eval/distinct_2": distinct_n(texts, 2)}
        if heldout is not None:
            metrics["eval/heldout_loss"] = heldout_loss()
            tqdm.write(f"step {step}: held-out denoising loss {metrics['eval/heldout_loss']:.4f} (EMA weights)")
        ema.restore(params)
        return metrics

    first_timesteps = []  # this rank's first batch of timesteps: run_info shows that the ranks draw apart

    def loss_fn(module, batch, step):
        terms = module(batch) if reads_sources else diffusion_loss(module, train_scheduler, batch, objective)
        timesteps = terms.pop("timesteps")
        if not first_timesteps:
            first_timesteps.append(timesteps.float().mean().reshape(1))
        return terms

    step = run_training(
        accelerator, cfg.training, model, optimizer, scheduler, loader, loss_fn=loss_fn,
        evaluate=evaluate, resume_from=checkpoint, description="diffusion",
        after_step=lambda step: ema.step(trainable(accelerator.unwrap_model(model))), extra_state=EMACheckpoint(ema, accelerator),
    )
    checksums = rank_checksums(accelerator, model) + rank_checksums(accelerator, ShadowParams(ema))
    drawn = accelerator.gather(first_timesteps[0] if first_timesteps else torch.full((1,), -1.0, device=accelerator.device))
    ema.copy_to(trainable(accelerator.unwrap_model(model)))  # every rank: the EMA weights are the ones saved
    if is_sharded(accelerator):  # FSDP: whole copies of the parts, from the weights gathered over the ranks
        prefix = "denoiser." if reads_sources else ""
        weights = {"denoiser": gathered_weights(accelerator, model, prefix)}
        if trains_encoder:
            weights["condition_encoder"] = gathered_weights(accelerator, model, "condition_encoder.")
        if accelerator.is_main_process:
            final_parts["denoiser"] = LatentDiT.from_config(denoiser.config)
            if trains_encoder:
                final_parts["condition_encoder"] = ConditionEncoder.build(cfg.condition, autoencoder.processor.encoder_tokenizer)
            for name, part in final_parts.items():
                part.load_state_dict(weights[name])
                part.eval()
    final = out / FINAL_NAME
    if accelerator.is_main_process:
        with write_errors_explained("the trained pipeline", final):
            info = {"world_size": accelerator.num_processes, "global_batch_size": global_batch(cfg.training, accelerator),
                    "final_step": step, "rank_weight_checksums": checksums,
                    "rank_first_timestep_mean": drawn.tolist()}
            (out / "run_info.json").write_text(json.dumps(info, indent=2))
            tqdm.write(f"samples after {step} steps:")
            texts = samples(step, show=True)
            if heldout is not None:
                info["heldout_loss"] = heldout_loss()
                (out / "run_info.json").write_text(json.dumps(info, indent=2))
            final_pipeline = pipeline()
            final_pipeline.training_record = training_record(cfg, len(data["counts"]), {"sample_distinct_2": distinct_n(texts, 2)},
                                                             info, logged_minutes(read_metrics(out)))
            final_pipeline.save_pretrained(final)
            plot_training_curves(out / "metrics.jsonl", out / "training_curves.png", f"diffusion: {out.name}")
            accelerator.print(f"saved the pipeline to {final}")
    finish_training(accelerator)
    return final


def start_from_pipeline(denoiser: LatentDiT, autoencoder: ParagraphAutoencoder, folder: Path) -> list[str]:
    """`init_from`: the DiT's weights from a trained pipeline's DiT, and that pipeline's latent statistics (the
    latents it learned to denoise were normalised by them); returns the names that start new."""
    parts = {"denoiser": folder / "denoiser", "autoencoder": folder / "autoencoder" / WEIGHTS_NAME}
    missing = [str(path) for path in parts.values() if not path.exists()]
    if missing:
        raise LatentDLMError(f"init_from={folder} is not a trained pipeline folder: {missing[0]} is missing")
    new = denoiser.start_from(LatentDiT.from_pretrained(parts["denoiser"]))
    with safe_open(str(parts["autoencoder"]), "pt") as weights:
        statistics = {name: weights.get_tensor(f"latent_space.{name}") for name in ("mean", "std")}
    if statistics["mean"].shape != autoencoder.latent_space.mean.shape:
        raise LatentDLMError(f"init_from={folder} was trained on {statistics['mean'].shape[0]}-d latents, this "
                             f"autoencoder's are {autoencoder.latent_space.mean.shape[0]}-d")
    autoencoder.latent_space.mean.copy_(statistics["mean"])
    autoencoder.latent_space.std.copy_(statistics["std"])
    return new


def split_heldout(dataset: LatentDataset, count: int, seed: int, condition_encoder) -> tuple:
    """(the training texts, one collated batch of `count` held-out texts or None), the held-out ones drawn by `seed`."""
    if count <= 0:
        return dataset, None
    if count >= len(dataset):
        raise LatentDLMError(f"heldout_texts={count} must be fewer than the {len(dataset)} training texts")
    kept = heldout_indices(len(dataset), count, seed)
    heldout = collate_latents([dataset[i] for i in kept], condition_encoder)
    return torch.utils.data.Subset(dataset, sorted(set(range(len(dataset))) - set(kept))), heldout


def heldout_indices(num_texts: int, count: int, seed: int) -> list[int]:
    """Which of the data's texts (in load order) `heldout_texts` keeps out of training: scorers read the same ones."""
    return torch.randperm(num_texts, generator=torch.Generator().manual_seed(seed))[:count].tolist()


def _round_robin(class_names: Optional[list[str]], count: int) -> Optional[list[str]]:
    return [class_names[i % len(class_names)] for i in range(count)] if class_names else None
