"""Stage 1: train the paragraph autoencoder (`latentdlm train-autoencoder`, scripts/train_autoencoder.py)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from latentdlm.autoencoder.build import build_autoencoder
from latentdlm.autoencoder.config import AutoencoderConfig
from latentdlm.autoencoder.designs import plan_index
from latentdlm.autoencoder.latent_cache import LatentShards, cached_unit_latents, ensure_cached_stream
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.autoencoder.objective import AutoencoderObjective, ObjectiveConfig, latent_usage_gap
from latentdlm.autoencoder.token_cache import UnitTokens, ensure_tokenized_stream
from latentdlm.config import save_config
from latentdlm.data.batching import LengthGroupedSampler
from latentdlm.data.sources import TextStream, load_pairs, load_texts, train_eval_split
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.plots import plot_training_curves
from latentdlm.evaluation.reconstruction import reconstruction_metrics
from latentdlm.io import write_errors_explained
from latentdlm.model_card import training_record
from latentdlm.shards import SHARD_UNITS
from latentdlm.training.checkpoints import clear_previous_run, is_sharded, prepare_output_dir
from latentdlm.training.config import TrainingConfig
from latentdlm.training.loop import (
    finish_training, gathered_weights, global_batch, logged_minutes, make_accelerator, make_optimizer,
    rank_checksums, read_metrics, run_training,
)

FINAL_NAME = "autoencoder"
INITIAL_NAME = "initial"  # the untrained model with its tokenizers: what --resume rebuilds from


@dataclass
class TextDataConfig:
    source: str = "bundled"  # bundled[:austen|aesop], a local jsonl/json/csv/tsv/txt file, or a hub dataset
    column: Optional[str] = None
    # text -> text autoencoders (model.source_context): the column of each text's source (a document to summarise)
    source_column: Optional[str] = None
    split: str = "train"
    limit: Optional[int] = None
    eval_source: Optional[str] = None  # held-out texts; default: a slice of `source`
    eval_split: str = "validation"
    eval_fraction: float = 0.02
    max_eval: int = 64
    # read the texts as a stream (a hub dataset with datasets' streaming, a local file in batches), tokenized shard by
    # shard into the run folder: the corpus is never a list in memory. Held out: eval_source, or the first max_eval texts
    streaming: bool = False


@dataclass
class AutoencoderTrainConfig:
    data: TextDataConfig = field(default_factory=TextDataConfig)
    model: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval_batch_size: int = 64
    show_examples: int = 3  # reconstructions printed at each evaluation
    # stop with a clear message when an evaluation finds the decoder ignoring its latent (posterior
    # collapse): the latent gap (NLL with shuffled latents - with the right ones, nats) below this
    min_latent_gap: Optional[float] = None
    encode_shard_units: int = SHARD_UNITS  # units per shard of a streamed corpus's token (and fixed latent) caches


@dataclass
class Corpus:
    texts: Sequence[str] | TextStream  # a list, or (data.streaming) a stream read again as often as needed
    sources: Optional[list[str]] = None  # each text's source (data.source_column), or none


def load_corpus(data: TextDataConfig, seed: int, source_context: int = 0) -> tuple[Corpus, Corpus]:
    """(training, held-out) texts, with their sources where the decoder reads them (model.source_context). With
    data.streaming the training texts are a stream and the held-out ones data.eval_source's, or the stream's first
    data.max_eval texts (left out of training)."""
    if bool(source_context) != bool(data.source_column):
        raise LatentDLMError("model.source_context (the decoder reads a source text) and data.source_column (where the "
                             "sources are) go together: set both or neither")
    if data.streaming:
        if data.source_column:
            raise LatentDLMError("data.streaming reads texts alone: leave data.source_column unset (source-aware corpora are read as lists)")
        if data.eval_source:
            return Corpus(TextStream(data)), Corpus(load_texts(data.eval_source, data.column, data.eval_split, data.max_eval))
        held = list(itertools.islice(TextStream(data), data.max_eval))
        return Corpus(TextStream(data, skip=len(held))), Corpus(held)
    if not data.source_column:
        texts = load_texts(data.source, data.column, data.split, data.limit)
        if data.eval_source:
            return Corpus(texts), Corpus(load_texts(data.eval_source, data.column, data.eval_split, data.max_eval))
        train, held = train_eval_split(texts, data.eval_fraction, data.max_eval, seed)
        return Corpus(train), Corpus(held)
    pairs = load_pairs(data.source, data.source_column, data.column, data.split, data.limit)
    if data.eval_source:
        train, held = pairs, load_pairs(data.eval_source, data.source_column, data.column, data.eval_split, data.max_eval)
    else:
        train, held = train_eval_split(pairs, data.eval_fraction, data.max_eval, seed)
    return tuple(Corpus([t for _, t in rows], [s for s, _ in rows]) for rows in (train, held))


@dataclass
class UnitData:
    """Every unit of a corpus in text order: encoder inputs (token ids, or cached latents under fixed latents),
    decoder targets and contexts (decoder_context, source_context; else None), each indexable by unit; each text's
    unit count; what each unit's row costs (its target and the context it reads first)."""
    encoder_inputs: Sequence
    decoder_ids: Sequence[list[int]]
    contexts: Optional[Sequence[list[int]]]
    counts: list[int]
    lengths: Sequence[int] | torch.Tensor


def unit_data(model: ParagraphAutoencoder, texts: Sequence[str] | TextStream, sources: Optional[list[str]] = None,
              folder: Optional[Path] = None, shard_units: int = SHARD_UNITS) -> UnitData:
    """A list of texts tokenized in memory; a stream tokenized once into a token cache under `folder` and read by index."""
    processor = model.processor
    if isinstance(texts, TextStream):
        if folder is None:
            raise LatentDLMError("a streamed corpus is tokenized into a folder: give one")
        store = UnitTokens(ensure_tokenized_stream(model, texts, folder, shard_units))
        decoder, contexts = store.column("decoder"), store.column("context")
        encoder = (LatentShards(ensure_cached_stream(model, texts, texts.identity, shard_units=shard_units)[0])
                   if model.fixed_latents else store.column("encoder"))
        lengths = decoder.lengths() + (0 if contexts is None else contexts.lengths())
        return UnitData(encoder, decoder, contexts, store.counts.tolist(), lengths)
    per_text = processor.split_units(texts)
    units = [u for units in per_text for u in units]
    tokens = processor.tokenize(units)
    contexts = processor.context_ids(per_text, model.check_sources(sources, len(texts)))
    # a frozen encoder under a weightless design: its latents are computed once, not every step
    encoder = cached_unit_latents(model, units) if model.fixed_latents else tokens.encoder_ids
    lengths = [len(ids) + (0 if contexts is None else len(contexts[i])) for i, ids in enumerate(tokens.decoder_ids)]
    return UnitData(encoder, tokens.decoder_ids, contexts, [len(u) for u in per_text], lengths)


class UnitDataset(torch.utils.data.Dataset):
    """(encoder input, decoder target, decoder context or None) per unit; the encoder input is token ids,
    or a cached latent."""

    def __init__(self, data: UnitData):
        self.data, self.texts = data, len(data.counts)

    def __len__(self) -> int:
        return len(self.data.decoder_ids)

    def __getitem__(self, i: int):
        data = self.data
        return data.encoder_inputs[i], data.decoder_ids[i], None if data.contexts is None else data.contexts[i]


class TextStreamDataset(torch.utils.data.Dataset):
    """decoder_stream and decoder_plan: one example per text, its units' (encoder inputs, decoder targets)."""

    def __init__(self, data: UnitData):
        self.data, self.texts = data, len(data.counts)
        self.starts = [0, *itertools.accumulate(data.counts)]

    def __len__(self) -> int:
        return self.texts

    def __getitem__(self, i: int):
        units = slice(self.starts[i], self.starts[i + 1])
        return self.data.encoder_inputs[units], self.data.decoder_ids[units]

    def lengths(self) -> torch.Tensor:
        """Each text's cost: its units' summed."""
        total = torch.cat([torch.zeros(1, dtype=torch.int64), torch.as_tensor(self.data.lengths).cumsum(0)])
        starts = torch.tensor(self.starts)
        return total[starts[1:]] - total[starts[:-1]]


def make_dataloader(model: ParagraphAutoencoder, texts: Sequence[str] | TextStream, batch_size: int, seed: int,
                    num_workers: int = 0, sources: Optional[list[str]] = None, folder: Optional[Path] = None,
                    shard_units: int = SHARD_UNITS) -> DataLoader:
    """Every unit (a segment, or a whole paragraph) of every text is one example (with decoder_context,
    together with the text of the units before it; with source_context, with its text's source); with
    decoder_stream or decoder_plan every text is one example (a batch holds `batch_size` texts). A stream of texts
    (`TextStream`) is tokenized into shards under `folder` first (`unit_data`)."""
    processor = model.processor
    data = unit_data(model, texts, sources, folder, shard_units)
    loader = lambda dataset, collate, lengths: DataLoader(  # noqa: E731
        dataset, batch_size=batch_size, sampler=LengthGroupedSampler(lengths, batch_size, seed), collate_fn=collate,
        num_workers=num_workers, drop_last=True, generator=torch.Generator().manual_seed(seed),  # keeps the global RNG (restored on resume) untouched
    )
    if model.config.decoder_stream or model.config.decoder_plan:
        dataset = TextStreamDataset(data)
        return loader(dataset, lambda items: text_batch(model, [e for e, _ in items], [d for _, d in items]), dataset.lengths())
    cached, contexts = model.fixed_latents, data.contexts

    def collate(items):
        context = None if contexts is None else [c for _, _, c in items]
        if not cached:
            return processor.collate([a for a, _, _ in items], [b for _, b, _ in items], context)
        return {**processor.collate(None, [b for _, b, _ in items], context), "latents": torch.stack([a for a, _, _ in items])}

    return loader(UnitDataset(data), collate, data.lengths)


def text_batch(model: ParagraphAutoencoder, encoder_inputs: list, decoder_ids: list[list[list[int]]]) -> dict:
    """Whole texts: their units' encoder side (cached latents or token ids) in order, and the decoder side: as
    streams (decoder_stream, `collate_stream`), or one row per unit that reads its text's units first (decoder_plan:
    `plan_index` into the batch's units, `plan_own` its own position among them)."""
    if model.config.decoder_stream:
        batch = model.processor.collate_stream(decoder_ids, model.to_memory.length)
    else:
        batch = model.processor.collate(None, [ids for text in decoder_ids for ids in text])
        batch["plan_index"], batch["plan_own"] = plan_index([len(text) for text in decoder_ids])
    if isinstance(encoder_inputs[0], torch.Tensor):
        return {**batch, "latents": torch.cat(encoder_inputs)}
    input_ids, attention_mask = model.processor.encoder_batch([ids for text in encoder_inputs for ids in text])
    return {**batch, "input_ids": input_ids, "attention_mask": attention_mask}


def evaluate_autoencoder(model: ParagraphAutoencoder, corpus: Corpus, batch_size: int) -> tuple[dict, list[str]]:
    """Held-out BLEU, exact match and latent gap, with the reconstructions (each read with its source, if any)."""
    model.eval()
    reconstructions = model.reconstruct(corpus.texts, batch_size, corpus.sources)
    metrics = reconstruction_metrics(corpus.texts, reconstructions)
    metrics["latent_gap"] = latent_gap(model, corpus.texts, sources=corpus.sources)
    return metrics, reconstructions


def latent_gap(model: ParagraphAutoencoder, texts: list[str], max_units: int = 64, sources: Optional[list[str]] = None) -> float:
    """How much the decoder relies on the latent: NLL(shuffled latents) - NLL(own latents)."""
    processor = model.processor
    per_text = processor.split_units(texts)
    if model.config.decoder_stream or model.config.decoder_plan:  # whole texts, up to max_units units (at least one text)
        counts = list(itertools.accumulate(len(u) for u in per_text))
        per_text = per_text[: max(1, sum(c <= max_units for c in counts))]
        tokenized = [processor.tokenize(units) for units in per_text]
        batch = text_batch(model, [t.encoder_ids for t in tokenized], [t.decoder_ids for t in tokenized])
        return latent_usage_gap(model, {k: v.to(model.device) for k, v in batch.items()})
    units = [u for units in per_text for u in units][:max_units]
    tokens = processor.tokenize(units)
    contexts = processor.context_ids(per_text, model.check_sources(sources, len(texts)))
    contexts = None if contexts is None else contexts[:max_units]  # as in training
    batch = {k: v.to(model.device) for k, v in processor.collate(tokens.encoder_ids, tokens.decoder_ids, contexts).items()}
    return latent_usage_gap(model, batch)


def train_autoencoder(cfg: AutoencoderTrainConfig, resume: bool = False, cpu: bool = False) -> Path:
    """Train and save `<output_dir>/autoencoder`; returns that folder."""
    accelerator = make_accelerator(cfg.training, cpu=cpu)
    out, checkpoint = prepare_output_dir(cfg.training, resume, FINAL_NAME)
    set_seed(cfg.training.seed)
    train, held = load_corpus(cfg.data, cfg.training.seed, cfg.model.source_context)
    train_texts, eval_texts = train.texts, held.texts
    if accelerator.is_main_process and not resume:
        out.mkdir(parents=True, exist_ok=True)
        clear_previous_run(out)
        save_config(cfg, out / "train_config.yaml")
        counted = "a stream of" if isinstance(train_texts, TextStream) else len(train_texts)
        accelerator.print(f"building the autoencoder ({counted} training texts, {len(eval_texts)} held out)")
        build_autoencoder(cfg.model, train_texts).save_pretrained(out / INITIAL_NAME)
    accelerator.wait_for_everyone()
    model = ParagraphAutoencoder.from_pretrained(out / INITIAL_NAME)  # same tokenizer and init on every rank
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    accelerator.print(f"autoencoder: {trainable / 1e6:.2f} M trainable parameters, {frozen / 1e6:.1f} M frozen")

    objective = AutoencoderObjective(model, cfg.objective)
    loader = make_dataloader(model, train_texts, cfg.training.batch_size, cfg.training.seed, cfg.training.num_workers, train.sources,
                             out, cfg.encode_shard_units)
    trained_texts = loader.dataset.texts
    optimizer, scheduler = make_optimizer(cfg.training, objective, accelerator.num_processes)
    objective, optimizer, loader, scheduler = accelerator.prepare(objective, optimizer, loader, scheduler)
    set_seed(cfg.training.seed, device_specific=True)  # each rank its own VAE samples, dropout and noise
    if cfg.training.log_with:
        accelerator.init_trackers("latentdlm-autoencoder")

    def evaluate(step: int) -> dict:
        if not accelerator.is_main_process:
            return {}
        metrics, recons = evaluate_autoencoder(model, held, cfg.eval_batch_size)
        for original, recon in list(zip(eval_texts, recons))[: cfg.show_examples]:
            tqdm.write(f"  original:      {original[:300]}\n  reconstructed: {recon[:300]}")
        tqdm.write(
            f"step {step}: held-out BLEU {metrics['bleu']:.1f}, exact match {metrics['exact_match']:.2%}, "
            f"latent gap {metrics['latent_gap']:.2f} nats"
        )
        if cfg.min_latent_gap is not None and metrics["latent_gap"] < cfg.min_latent_gap:
            raise LatentDLMError(
                f"the decoder ignores its latent (posterior collapse): at step {step} the latent gap is "
                f"{metrics['latent_gap']:.3f} nats, under min_latent_gap {cfg.min_latent_gap}; try model.regularization: l2 "
                "with objective.latent_noise, objective.free_bits, model.pooled_residual: true, or less objective.word_dropout")
        return {f"eval/{k}": v for k, v in metrics.items()}

    step = run_training(
        accelerator, cfg.training, objective, optimizer, scheduler, loader,
        loss_fn=lambda module, batch, step: module(batch, step),
        evaluate=evaluate, resume_from=checkpoint, description="autoencoder",
    )
    checksums = rank_checksums(accelerator, objective)
    if is_sharded(accelerator):  # FSDP: a whole copy of the model, from the weights gathered over the ranks
        weights = gathered_weights(accelerator, objective, "autoencoder.")
        if accelerator.is_main_process:
            model = ParagraphAutoencoder.from_pretrained(out / INITIAL_NAME)
            model.load_state_dict(weights)
    final = out / FINAL_NAME
    if accelerator.is_main_process:
        with write_errors_explained("the trained autoencoder", final):
            info = {"world_size": accelerator.num_processes, "global_batch_size": global_batch(cfg.training, accelerator),
                    "final_step": step, "rank_weight_checksums": checksums}
            (out / "run_info.json").write_text(json.dumps(info, indent=2))
            metrics, recons = evaluate_autoencoder(model, held, cfg.eval_batch_size)
            held_out = {f"heldout_{name}": value for name, value in metrics.items()}
            model.training_record = training_record(cfg, trained_texts, held_out, info, logged_minutes(read_metrics(out)))
            model.save_pretrained(final)
            with (out / "reconstructions.jsonl").open("w") as f:
                for original, recon in zip(eval_texts, recons):
                    f.write(json.dumps({"text": original, "reconstruction": recon}) + "\n")
            (out / "final_metrics.json").write_text(json.dumps(metrics, indent=2))
            plot_training_curves(out / "metrics.jsonl", out / "training_curves.png", f"autoencoder: {out.name}")
            print_reconstructions(eval_texts, recons, metrics, cfg.show_examples)
            accelerator.print(f"saved the autoencoder to {final}")
    finish_training(accelerator)
    return final


def print_reconstructions(texts: list[str], recons: list[str], metrics: dict, count: int) -> None:
    for original, recon in list(zip(texts, recons))[:count]:
        print(f"\noriginal:      {original}\nreconstructed: {recon}")
    print(f"\nheld-out reconstruction over {len(texts)} texts: BLEU {metrics['bleu']:.1f}, exact match {metrics['exact_match']:.1%}")
