"""Stage 2: train the latent DiT (`latentdlm train-diffusion`, scripts/train_diffusion.py).

The corpus is encoded once with the trained autoencoder (posterior means) and cached; the DiT then
trains on the cached latents with EMA weights kept on every rank. The result is one pipeline folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from accelerate.utils import set_seed
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latentdlm.autoencoder.embedding_cache import unit_embeddings, uses_embedding_cache
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
from latentdlm.io import CONFIG_NAME, WEIGHTS_NAME, atomic_file, file_sha256, write_errors_explained
from latentdlm.model_card import training_record
from latentdlm.pipelines.latent_text import DECODING_DEFAULTS, LatentDiffusionTextPipeline, check_decoding
from latentdlm.training.config import TrainingConfig
from latentdlm.training.loop import (
    clear_previous_run, finish_training, gathered_weights, global_batch, is_sharded, logged_minutes, make_accelerator,
    make_optimizer, prepare_output_dir, rank_checksums, read_metrics, run_training,
)

FINAL_NAME = "pipeline"
CACHE_NAME = "latents.safetensors"
CONDITION_CACHE_NAME = "conditions.safetensors"


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

    def decoding(self) -> dict:
        return {key: getattr(self, key) for key in DECODING_DEFAULTS}


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
    settings = {k: v for k, v in cfg.data.__dict__.items() if not (k == "label_names" and v is None)}  # older caches stay valid
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    digest.update((Path(cfg.autoencoder) / CONFIG_NAME).read_bytes())  # names any external pretrained parts
    return file_sha256(Path(cfg.autoencoder) / WEIGHTS_NAME, digest)


def _cache_is_current(path: Path, meta: Path, key: str) -> bool:
    """The cache file exists, was written for `key`, and is whole (its sha256 as recorded)."""
    if not (path.exists() and meta.exists()):
        return False
    info = json.loads(meta.read_text())
    if info.get("key") != key:
        return False
    return "sha256" not in info or info["sha256"] == file_sha256(path)  # caches from before the checksum: trusted


def encode_corpus(autoencoder: ParagraphAutoencoder, texts: list[str], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All segments' latents (N_units, k, d) in text order, and the number of segments of each text."""
    if uses_embedding_cache(autoencoder):  # the embeddings the autoencoder stage cached (or computed once now)
        per_text = autoencoder.split_units(texts)
        counts = torch.tensor([len(units) for units in per_text])
        return unit_embeddings(autoencoder, [u for units in per_text for u in units], batch_size), counts
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
        if not _cache_is_current(path, meta, key):
            names = sources = None
            if data_cfg.label_column and data_cfg.condition_column:
                raise LatentDLMError("data.label_column and data.condition_column: condition on a class or on a text, not both")
            if data_cfg.label_names is not None and not data_cfg.label_column:
                raise LatentDLMError("data.label_names names the classes of data.label_column, which is not set")
            if data_cfg.label_column:
                pairs = load_labeled_texts(data_cfg.source, data_cfg.column, data_cfg.label_column, data_cfg.split, data_cfg.limit)
                texts, names = [t for t, _ in pairs], name_labels([label for _, label in pairs], data_cfg.label_names)
            elif data_cfg.condition_column:
                pairs = load_pairs(data_cfg.source, data_cfg.condition_column, data_cfg.column, data_cfg.split, data_cfg.limit)
                sources, texts = [s for s, _ in pairs], [t for _, t in pairs]
            else:
                texts = load_texts(data_cfg.source, data_cfg.column, data_cfg.split, data_cfg.limit)
            units, counts = encode_corpus(autoencoder, texts, cfg.encode_batch_size)
            tensors = {"units": units.contiguous(), "counts": counts}
            raw_of = {name: raw for raw, name in (data_cfg.label_names or {}).items()}  # classes in the raw labels' order
            class_names = sorted(set(names), key=lambda n: _natural(raw_of.get(n, n))) if names else None
            if names:
                tensors["labels"] = torch.tensor([class_names.index(n) for n in names])
            with atomic_file(path) as tmp:
                save_file(tensors, str(tmp))
            meta.write_text(json.dumps({"key": key, "sha256": file_sha256(path), "class_names": class_names, "texts": len(texts),
                                        "sources": sources}))
    wait()
    data = load_file(str(path))
    info = json.loads(meta.read_text())
    data["class_names"], data["sources"] = info["class_names"], info.get("sources")
    return data


def _natural(label: str):
    return (0, int(label), "") if label.lstrip("-").isdigit() else (1, 0, label)


def name_labels(labels: list[str], label_names: Optional[dict[str, str]]) -> list[str]:
    """The raw labels of the data as class names through `data.label_names` (unchanged without it).
    A raw label it does not name, or two raw labels with one name, is an error."""
    if label_names is None:
        return labels
    unnamed = sorted({label for label in labels if label.strip() not in label_names}, key=_natural)
    if unnamed:
        raise LatentDLMError(
            f"label{'s' if len(unnamed) > 1 else ''} {', '.join(repr(u) for u in unnamed[:10])} in the data "
            f"{'have' if len(unnamed) > 1 else 'has'} no name in data.label_names (which names "
            f"{', '.join(repr(k) for k in label_names) or 'nothing'}): add {'them' if len(unnamed) > 1 else 'it'}"
        )
    used = {label.strip() for label in labels}
    by_name: dict[str, list[str]] = {}
    for raw, name in label_names.items():
        if raw in used:
            by_name.setdefault(name, []).append(raw)
    shared = {name: raws for name, raws in by_name.items() if len(raws) > 1}
    if shared:
        name, raws = next(iter(shared.items()))
        raise LatentDLMError(f"data.label_names gives the labels {', '.join(map(repr, raws))} one name '{name}'")
    absent = [raw for raw in label_names if raw not in used]
    if absent:
        warnings.warn(f"data.label_names names label(s) {', '.join(map(repr, absent))} that the data does not have: "
                      "the model will not know those classes")
    return [label_names[label.strip()] for label in labels]


def load_or_encode_conditions(cfg: DiffusionTrainConfig, encoder: ConditionEncoder, sources: list[str], out: Path,
                               is_main: bool, wait) -> list[torch.Tensor]:
    """A frozen condition encoder is a fixed function: every source's token states (L_i, C), computed once
    by the main process (float16 on disk) and reused while the latents and the condition settings stay."""
    path, meta = out / CONDITION_CACHE_NAME, out / "conditions.json"
    key = hashlib.sha256((json.loads((out / "latents.json").read_text())["key"]
                          + json.dumps(dataclasses.asdict(cfg.condition), sort_keys=True)).encode()).hexdigest()
    if is_main and not _cache_is_current(path, meta, key):
        states, lengths = [], []
        chunk = cfg.encode_batch_size
        for start in tqdm(range(0, len(sources), chunk), desc="encoding the source texts", unit="chunk"):
            encoded = encoder.encode(sources[start : start + chunk], warn=False)
            for row, keep in zip(encoded["condition_states"], encoded["condition_mask"]):
                states.append(row[keep].half().cpu())
                lengths.append(int(keep.sum()))
        with atomic_file(path) as tmp:
            save_file({"states": torch.cat(states).contiguous(), "lengths": torch.tensor(lengths)}, str(tmp))
        meta.write_text(json.dumps({"key": key, "sha256": file_sha256(path)}))
    wait()
    cache = load_file(str(path))
    return list(torch.split(cache["states"], cache["lengths"].tolist()))


class LatentDataset(torch.utils.data.Dataset):
    """Text i -> its normalised segment latents (S_i, k, d), its label and its condition: the source text
    (a trainable condition encoder reads it each step) or its cached token states (a frozen one)."""

    def __init__(self, units: torch.Tensor, counts: torch.Tensor, labels: Optional[torch.Tensor],
                 sources: Optional[list[str] | list[torch.Tensor]] = None):
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
    """Pad to the batch's largest segment count: latents (B, S*k, d), latent_mask (B, S*k); class labels;
    cached condition states (padded, with their mask), or the source texts' tokens for `condition_encoder`."""
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
    if isinstance(items[0][2], torch.Tensor):
        states = [source for _, _, source in items]
        batch["condition_states"] = torch.nn.utils.rnn.pad_sequence(states, batch_first=True).float()
        batch["condition_mask"] = torch.arange(batch["condition_states"].shape[1])[None] < torch.tensor([len(s) for s in states])[:, None]
    elif condition_encoder is not None:
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
    denoiser.set_latent_statistics(data["units"], data["counts"], data.get("labels"))
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
    check_decoding(cfg.sampling.decoding())  # and so does a bad decoding setting
    if not 1 <= cfg.sampling.num_inference_steps <= cfg.objective.num_train_timesteps:
        raise LatentDLMError(f"sampling.num_inference_steps must be within 1..{cfg.objective.num_train_timesteps} "
                             f"(objective.num_train_timesteps), got {cfg.sampling.num_inference_steps}")
    if not 0 <= cfg.sampling.guidance_rescale <= 1:
        raise LatentDLMError(f"sampling.guidance_rescale must be within 0..1, got {cfg.sampling.guidance_rescale}")
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
    conditions = data["sources"]
    if condition_encoder is not None and condition_encoder.config.freeze:
        conditions = load_or_encode_conditions(cfg, condition_encoder.to(accelerator.device), data["sources"], out,
                                               accelerator.is_main_process, accelerator.wait_for_everyone)
    dataset = LatentDataset(denoiser.normalize(data["units"]), data["counts"], data.get("labels"), conditions)
    loader = DataLoader(dataset, batch_size=cfg.training.batch_size, shuffle=True, drop_last=True,
                        collate_fn=lambda items: collate_latents(items, condition_encoder),
                        generator=torch.Generator().manual_seed(cfg.training.seed))

    # a trainable condition encoder trains with the DiT as one module; a frozen one was cached above
    reads_sources = condition_encoder is not None and not condition_encoder.config.freeze
    trainee = ConditionedObjective(denoiser, condition_encoder, train_scheduler, cfg.objective) if reads_sources else denoiser
    optimizer, scheduler = make_optimizer(cfg.training, trainee, accelerator.num_processes)
    model, optimizer, loader, scheduler = accelerator.prepare(trainee, optimizer, loader, scheduler)
    ema = EMAModel(_trainable(accelerator.unwrap_model(model)), decay=cfg.ema_decay)  # under FSDP: this rank's shards
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

    def evaluate(step: int) -> dict:
        if not accelerator.is_main_process:
            return {}
        params = _trainable(accelerator.unwrap_model(model))
        ema.store(params)
        ema.copy_to(params)  # samples come from the EMA weights
        texts = samples(step, show=True)
        ema.restore(params)
        return {"eval/distinct_2": distinct_n(texts, 2)}

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
        after_step=lambda step: ema.step(_trainable(accelerator.unwrap_model(model))), extra_state=EMACheckpoint(ema, accelerator),
    )
    checksums = rank_checksums(accelerator, model) + rank_checksums(accelerator, _ShadowParams(ema))
    drawn = accelerator.gather(first_timesteps[0] if first_timesteps else torch.full((1,), -1.0, device=accelerator.device))
    ema.copy_to(_trainable(accelerator.unwrap_model(model)))  # every rank: the EMA weights are the ones saved
    if is_sharded(accelerator):  # FSDP: whole copies of the parts, from the weights gathered over the ranks
        prefix = "denoiser." if reads_sources else ""
        weights = {"denoiser": gathered_weights(accelerator, model, prefix)}
        if reads_sources:
            weights["condition_encoder"] = gathered_weights(accelerator, model, "condition_encoder.")
        if accelerator.is_main_process:
            final_parts["denoiser"] = LatentDiT.from_config(denoiser.config)
            if reads_sources:
                final_parts["condition_encoder"] = ConditionEncoder.build(cfg.condition, autoencoder.encoder_tokenizer)
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
            final_pipeline = pipeline()
            final_pipeline.training_record = training_record(cfg, len(data["counts"]), {"sample_distinct_2": distinct_n(texts, 2)},
                                                             info, logged_minutes(read_metrics(out)))
            final_pipeline.save_pretrained(final)
            plot_training_curves(out / "metrics.jsonl", out / "training_curves.png", f"diffusion: {out.name}")
            accelerator.print(f"saved the pipeline to {final}")
    finish_training(accelerator)
    return final


class EMACheckpoint:
    """The EMA weights in a checkpoint as safetensors, its counters as JSON: never a pickle."""

    WEIGHTS, COUNTERS = "ema.safetensors", "ema.json"

    def __init__(self, ema: EMAModel, accelerator):
        self.ema, self.accelerator = ema, accelerator
        self.sharded = is_sharded(accelerator)  # FSDP: every rank keeps (and saves) the EMA of its own shards

    def _weights_file(self, folder: Path) -> Path:
        rank = self.accelerator.process_index
        return folder / (f"ema.rank{rank}.safetensors" if self.sharded else self.WEIGHTS)

    def save(self, folder: Path) -> None:
        if not (self.sharded or self.accelerator.is_main_process):
            return
        state = self.ema.state_dict()
        weights = state.pop("shadow_params")
        save_file({str(i): _local(p).detach().cpu().contiguous() for i, p in enumerate(weights)}, str(self._weights_file(folder)))
        if self.accelerator.is_main_process:
            (folder / self.COUNTERS).write_text(json.dumps(state))

    def load(self, folder: Path) -> None:
        path = self._weights_file(folder)
        if not path.exists():
            raise LatentDLMError(f"{folder} holds no {path.name} (a checkpoint of an older latentdlm): start the run again")
        weights, shadows = load_file(str(path)), self.ema.shadow_params
        if len(weights) != len(shadows):
            raise LatentDLMError(f"{path} holds {len(weights)} EMA tensors, the model has {len(shadows)}: another model's checkpoint")
        for i, shadow in enumerate(shadows):
            _local(shadow).copy_(weights[str(i)])
        state = json.loads((folder / self.COUNTERS).read_text())
        self.ema.load_state_dict({**state, "shadow_params": self.ema.shadow_params})


def _local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's part of a (FSDP-sharded) DTensor; a plain tensor as it is."""
    return tensor.to_local() if hasattr(tensor, "to_local") else tensor


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
