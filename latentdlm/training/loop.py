"""The accelerate training loop shared by both stages.

Gradient accumulation, clipping, a learning-rate schedule, checkpoints with `save_state` (resume
continues at the saved step, on the same data order), tqdm on the main process, metrics to
`metrics.jsonl` and to any accelerate tracker, periodic evaluation, and a wall-clock budget.
"""

from __future__ import annotations

import json
import sys
import warnings
from collections import defaultdict
from pathlib import Path
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from transformers import get_scheduler

from latentdlm.errors import LatentDLMError
from latentdlm.training.budget import BudgetProgress, TrainingClock
from latentdlm.training.checkpoints import ExtraState, save_checkpoint, trim_logs
from latentdlm.training.config import TrainingConfig

LossFn = Callable[[torch.nn.Module, dict, int], dict]
EvalFn = Callable[[int], dict]


def make_accelerator(cfg: TrainingConfig, cpu: bool = False) -> Accelerator:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.set_flush_denormal(True)  # denormals made some CPU steps 10-30x slower
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=cfg.log_with,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
        # the data order follows the training seed alone, never the per-rank random state
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )
    set_global_batch(cfg, accelerator)
    return accelerator


def global_batch(cfg: TrainingConfig, accelerator: Accelerator) -> int:
    return cfg.batch_size * accelerator.num_processes * cfg.gradient_accumulation_steps


def set_global_batch(cfg: TrainingConfig, accelerator: Accelerator) -> None:
    """Resolve training.global_batch_size into the per-process batch, and say what the global batch is."""
    processes, accumulation = accelerator.num_processes, cfg.gradient_accumulation_steps
    if cfg.global_batch_size is not None:
        if cfg.global_batch_size <= 0 or cfg.global_batch_size % (processes * accumulation):
            raise LatentDLMError(f"training.global_batch_size={cfg.global_batch_size} must be a positive multiple of "
                                 f"{processes} process(es) x {accumulation} accumulation step(s)")
        cfg.batch_size = cfg.global_batch_size // (processes * accumulation)
    if min(cfg.batch_size, accumulation, cfg.max_steps) <= 0:
        raise LatentDLMError("training.batch_size, training.gradient_accumulation_steps and training.max_steps must be at least 1")
    accelerator.print(f"global batch {global_batch(cfg, accelerator)} = {cfg.batch_size} per process x "
                      f"{processes} process(es) x {accumulation} accumulation step(s)")


def make_optimizer(cfg: TrainingConfig, model: torch.nn.Module, num_processes: int):
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise LatentDLMError("nothing to train: every parameter is frozen")
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.learning_rate,
        betas=(0.9, cfg.adam_beta2),
    )
    # accelerate steps a prepared scheduler once per process per optimizer step
    scheduler = get_scheduler(
        cfg.lr_scheduler, optimizer,
        num_warmup_steps=cfg.warmup_steps * num_processes, num_training_steps=cfg.max_steps * num_processes,
    )
    return optimizer, scheduler


class MetricsLog:
    """metrics.jsonl in the output folder (main process) plus the accelerate trackers."""

    def __init__(self, accelerator: Accelerator, out: Path):
        self.accelerator = accelerator
        self.path = out / "metrics.jsonl"

    def write(self, step: int, metrics: dict, minutes: float) -> None:
        if not metrics:
            return
        self.accelerator.log(metrics, step=step)
        if self.accelerator.is_main_process:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": step, "train_minutes": round(minutes, 3), **metrics}) + "\n")


def logged_minutes(records: list[dict]) -> float:
    """Training minutes over every part of a run from its metrics.jsonl records: each resumed part restarts
    the clock, so a drop in train_minutes starts a new part."""
    minutes = [r["train_minutes"] for r in records if "train_minutes" in r]
    return sum(a for a, b in zip(minutes, minutes[1:]) if b < a) + (minutes[-1] if minutes else 0.0)


def read_metrics(out: Path) -> list[dict]:
    """The records of a run's metrics.jsonl (none when it has not logged yet)."""
    path = Path(out) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def run_training(
    accelerator: Accelerator,
    cfg: TrainingConfig,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    dataloader,
    loss_fn: LossFn,
    evaluate: Optional[EvalFn] = None,
    resume_from: Optional[Path] = None,
    after_step: Optional[Callable[[int], None]] = None,
    description: str = "training",
    extra_state: Optional[ExtraState] = None,
) -> int:
    """Train until `max_steps` (or `max_minutes`); returns the last optimizer step reached."""
    out = Path(cfg.output_dir)
    if len(dataloader) == 0:
        raise LatentDLMError(f"the training data fills no batch of {cfg.batch_size} (per process): add data or lower training.batch_size")
    log = MetricsLog(accelerator, out)
    step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        if extra_state is not None:
            extra_state.load(resume_from)
        step = int(resume_from.name.split("-")[1])
        accelerator.print(f"resumed from {resume_from} at step {step}")
        if accelerator.is_main_process:
            trim_logs(out, step)
    epoch, skip = divmod(step * cfg.gradient_accumulation_steps, len(dataloader))
    window: dict[str, list[torch.Tensor]] = defaultdict(list)
    clock = TrainingClock()
    progress = BudgetProgress(
        cfg, clock, step, desc=description, disable=not accelerator.is_local_main_process,
        mininterval=1 if sys.stderr.isatty() else 30,  # logs and pipes get a line every 30 s, not a flood
    )
    last_saved = step
    guard = NonFiniteGuard(accelerator, cfg.on_nonfinite)
    done = step >= cfg.max_steps
    while not done:
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        skip = 0
        for batch in batches:
            model.train()
            with accelerator.accumulate(model):
                terms = loss_fn(model, batch, step)
                finite = guard.check(terms["loss"], "loss", step)
                if finite:
                    accelerator.backward(terms["loss"])
                    if accelerator.sync_gradients and cfg.max_grad_norm:
                        norm = accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                        finite = guard.check(norm, "gradient norm", step)
                if finite:
                    optimizer.step()
                    scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if not finite:
                continue
            for name, value in terms.items():
                window[name].append(value.detach().float())
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.update(step)
            if after_step is not None:
                after_step(step)
            if step % cfg.log_every == 0 or step == cfg.max_steps:
                means = {k: accelerator.gather(torch.stack(v).mean().reshape(1)).mean().item() for k, v in sorted(window.items())}
                means["lr"] = scheduler.get_last_lr()[0]
                window.clear()
                progress.set_loss(means["loss"])
                log.write(step, means, clock.minutes())
            if evaluate is not None and cfg.eval_every and step % cfg.eval_every == 0:
                with clock.paused():
                    log.write(step, evaluate(step), clock.minutes())
            if cfg.save_every and step % cfg.save_every == 0:
                with clock.paused():
                    save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit, extra_state)
                last_saved = step
            done = step >= cfg.max_steps or _out_of_time(accelerator, cfg, clock)
            if done:
                break
        epoch += 1
    progress.close()
    if step != last_saved:
        save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit, extra_state)
    return step


class NonFiniteGuard:
    """A NaN/inf loss or gradient norm (on any rank) stops the run with a message naming the step, before
    anything is written from it; with on_nonfinite=skip the batch is dropped instead, up to MAX_SKIPS in a row."""

    MAX_SKIPS = 10

    def __init__(self, accelerator: Accelerator, mode: str):
        if mode not in ("stop", "skip"):
            raise LatentDLMError(f"training.on_nonfinite must be stop or skip, got {mode!r}")
        self.accelerator, self.mode, self.skipped_in_a_row = accelerator, mode, 0

    def check(self, value: torch.Tensor, what: str, step: int) -> bool:
        bad = (~torch.isfinite(value.detach().float())).any().float().reshape(1).to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            bad = self.accelerator.gather(bad).max().reshape(1)  # every rank skips or stops together
        if not bad.item():
            self.skipped_in_a_row = 0
            return True
        self.skipped_in_a_row += 1
        if self.mode == "skip" and self.skipped_in_a_row <= self.MAX_SKIPS:
            warnings.warn(f"non-finite {what} at step {step + 1}: batch skipped")
            return False
        raise LatentDLMError(
            f"the {what} became NaN/inf at step {step + 1}"
            + (f" ({self.skipped_in_a_row} batches in a row)" if self.mode == "skip" else "")
            + "; nothing was saved from that step. Resume from the last checkpoint (--resume) with a lower "
            "training.learning_rate or training.mixed_precision=no, or set training.on_nonfinite=skip to drop such batches"
        )


def gathered_weights(accelerator: Accelerator, model: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The full weights of a prepared model (FSDP gathers every rank's shards: all ranks must call this),
    keys under `prefix` with the prefix taken off; complete on the main process."""
    state = accelerator.get_state_dict(model)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def finish_training(accelerator: Accelerator) -> None:
    """Close trackers and the process group together on every rank.

    Without the barrier a rank that finishes first tears down gloo while rank 0 still writes the
    final model, and the late rank can abort at exit."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def rank_checksums(accelerator: Accelerator, model: torch.nn.Module) -> list[float]:
    """One checksum of the weights per process: equal values mean the ranks stayed in sync."""
    total = sum(p.detach().double().sum() for p in accelerator.unwrap_model(model).parameters())
    return accelerator.gather(total.float().reshape(1).to(accelerator.device)).tolist()


def _out_of_time(accelerator: Accelerator, cfg: TrainingConfig, clock: TrainingClock) -> bool:
    if cfg.max_minutes is None:
        return False
    late = torch.tensor([float(clock.minutes() > cfg.max_minutes)], device=accelerator.device)
    return bool(accelerator.gather(late).max() > 0)  # every rank stops at the same step
