"""The accelerate training loop shared by both stages.

Gradient accumulation, clipping, a learning-rate schedule, checkpoints with `save_state` (resume
continues at the saved step, on the same data order), tqdm on the main process, metrics to
`metrics.jsonl` and to any accelerate tracker, periodic evaluation, and a wall-clock budget.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration
from tqdm.auto import tqdm
from transformers import get_scheduler

from latentdlm.errors import LatentDLMError
from latentdlm.training.config import TrainingConfig

LossFn = Callable[[torch.nn.Module, dict, int], dict]
EvalFn = Callable[[int], dict]
COMPLETE_MARKER = "checkpoint_complete"


def make_accelerator(cfg: TrainingConfig, cpu: bool = False) -> Accelerator:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    torch.set_flush_denormal(True)  # denormals made some CPU steps 10-30x slower
    return Accelerator(
        cpu=cpu,
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        log_with=cfg.log_with,
        project_config=ProjectConfiguration(project_dir=cfg.output_dir, logging_dir=str(Path(cfg.output_dir) / "logs")),
        # the data order follows the training seed alone, never the per-rank random state
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=cfg.seed),
    )


def prepare_output_dir(cfg: TrainingConfig, resume: bool, final_name: str) -> Path:
    """Refuse to train over a finished run unless resuming or asked to overwrite."""
    out = Path(cfg.output_dir)
    if resume:
        if latest_checkpoint(out) is None:
            raise LatentDLMError(f"--resume: no complete checkpoint under {out / 'checkpoints'}")
    elif (out / final_name).exists() or latest_checkpoint(out) is not None:
        if not cfg.overwrite_output_dir:
            raise LatentDLMError(
                f"{out} already holds a run; pass --resume to continue it, "
                "training.overwrite_output_dir=true to replace it, or another training.output_dir"
            )
    return out


def clear_previous_run(out: Path) -> None:
    """A fresh run (asked to overwrite) starts without the old run's logs and checkpoints;
    the old final model stays until the new one replaces it."""
    for log in ("metrics.jsonl", "samples.jsonl"):
        (out / log).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def latest_checkpoint(out: Path) -> Optional[Path]:
    done = [p for p in (out / "checkpoints").glob("step-*") if (p / COMPLETE_MARKER).exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


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


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int) -> None:
    path = out / "checkpoints" / f"step-{step}"
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (path / COMPLETE_MARKER).write_text(str(step))
        done = sorted((p for p in path.parent.glob("step-*")), key=lambda p: int(p.name.split("-")[1]))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def run_training(
    accelerator: Accelerator,
    cfg: TrainingConfig,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    dataloader,
    loss_fn: LossFn,
    evaluate: Optional[EvalFn] = None,
    resume: bool = False,
    after_step: Optional[Callable[[int], None]] = None,
    description: str = "training",
) -> int:
    """Train until `max_steps` (or `max_minutes`); returns the last optimizer step reached."""
    out = Path(cfg.output_dir)
    log = MetricsLog(accelerator, out)
    step = 0
    if resume:
        checkpoint = latest_checkpoint(out)
        accelerator.load_state(str(checkpoint))
        step = int(checkpoint.name.split("-")[1])
        accelerator.print(f"resumed from {checkpoint} at step {step}")
    epoch, skip = divmod(step * cfg.gradient_accumulation_steps, len(dataloader))
    window: dict[str, list[torch.Tensor]] = defaultdict(list)
    clock = TrainingClock()
    progress = BudgetProgress(
        cfg, clock, step, desc=description, disable=not accelerator.is_local_main_process,
        mininterval=1 if sys.stderr.isatty() else 30,  # logs and pipes get a line every 30 s, not a flood
    )
    last_saved = step
    done = step >= cfg.max_steps
    while not done:
        dataloader.set_epoch(epoch)
        batches = accelerator.skip_first_batches(dataloader, skip) if skip else dataloader
        skip = 0
        for batch in batches:
            model.train()
            with accelerator.accumulate(model):
                terms = loss_fn(model, batch, step)
                accelerator.backward(terms["loss"])
                if accelerator.sync_gradients and cfg.max_grad_norm:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
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
                    save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
                last_saved = step
            done = step >= cfg.max_steps or _out_of_time(accelerator, cfg, clock)
            if done:
                break
        epoch += 1
    progress.close()
    if step != last_saved:
        save_checkpoint(accelerator, out, step, cfg.checkpoints_total_limit)
    return step


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


class TrainingClock:
    """Minutes spent training in this run, evaluation and checkpointing excluded."""

    def __init__(self):
        self.started = time.monotonic()
        self.excluded = 0.0

    def minutes(self) -> float:
        return (time.monotonic() - self.started - self.excluded) / 60

    @contextmanager
    def paused(self):
        start = time.monotonic()
        try:
            yield
        finally:
            self.excluded += time.monotonic() - start


class BudgetProgress:
    """The run's tqdm bar, against the limit that ends the run.

    A run cut by `max_minutes` long before `max_steps` would show "0/100000, 9:00:00 left" on a step bar;
    its bar counts training minutes instead (total: the budget; the step count in the postfix). While
    `max_steps` would be reached first (projected from the steps per training minute so far), the
    bar counts steps. The bar starts in minutes when there is a budget, and switches as the projection
    says."""

    def __init__(self, cfg: TrainingConfig, clock: TrainingClock, step: int, **tqdm_kwargs):
        self.cfg, self.clock, self.first, self.step = cfg, clock, step, step
        self.loss: Optional[str] = None
        self.by_time = cfg.max_minutes is not None and step < cfg.max_steps
        self.bar = tqdm(**self._layout(), initial=self._position(), **tqdm_kwargs)

    def _layout(self) -> dict:
        if self.by_time:
            return {"total": self.cfg.max_minutes, "unit": "min",
                    "bar_format": "{l_bar}{bar}| {n:.2f}/{total:g} min of training [{elapsed}<{remaining}{postfix}]"}
        return {"total": self.cfg.max_steps, "unit": "it", "bar_format": None}

    def _position(self) -> float:
        return min(self.clock.minutes(), self.cfg.max_minutes) if self.by_time else self.step

    def _time_binds(self) -> bool:
        done, minutes = self.step - self.first, self.clock.minutes()
        if self.cfg.max_minutes is None or done == 0:
            return self.by_time
        needed = minutes / done * (self.cfg.max_steps - self.step)  # minutes to reach max_steps at this pace
        left = self.cfg.max_minutes - minutes
        return needed > 0.8 * left if self.by_time else needed > 1.25 * left  # no flip-flopping near a tie

    def _switch(self) -> None:
        self.by_time = not self.by_time
        layout, bar = self._layout(), self.bar
        bar.unit, bar.bar_format, bar.initial = layout["unit"], layout["bar_format"], 0
        bar.reset(total=layout["total"])  # a fresh rate estimate for the new unit
        bar.n = bar.last_print_n = bar.initial = self._position()
        bar.set_postfix(self._postfix())

    def _postfix(self) -> dict:
        items = {"step": f"{self.step}/{self.cfg.max_steps}"} if self.by_time else {}
        return {**items, **({"loss": self.loss} if self.loss is not None else {})}

    def update(self, step: int) -> None:
        self.step = step
        if self._time_binds() != self.by_time:
            self._switch()
        self.bar.set_postfix(self._postfix(), refresh=False)
        if self.by_time:
            self.bar.update(max(0.0, min(self.clock.minutes(), self.cfg.max_minutes) - self.bar.n))
        else:
            self.bar.update(step - self.bar.n)

    def set_loss(self, loss: float) -> None:
        self.loss = f"{loss:.3f}"
        self.bar.set_postfix(self._postfix())

    def close(self) -> None:
        self.bar.close()


def _out_of_time(accelerator: Accelerator, cfg: TrainingConfig, clock: TrainingClock) -> bool:
    if cfg.max_minutes is None:
        return False
    late = torch.tensor([float(clock.minutes() > cfg.max_minutes)], device=accelerator.device)
    return bool(accelerator.gather(late).max() > 0)  # every rank stops at the same step
