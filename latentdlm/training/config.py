"""Settings shared by both training stages (the accelerate loop)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass
class TrainingConfig:
    output_dir: str = "runs/autoencoder"
    overwrite_output_dir: bool = False  # a new run never deletes a finished one unless asked
    seed: int = 0
    batch_size: int = 32  # per process
    gradient_accumulation_steps: int = 1
    # when set, the same global batch on any number of processes: batch_size = this / (processes x accumulation)
    global_batch_size: Optional[int] = None
    learning_rate: float = 1e-3
    weight_decay: float = 0.01
    adam_beta2: float = 0.99
    lr_scheduler: str = "cosine"  # any name of transformers.get_scheduler (constant, linear, cosine, ...)
    warmup_steps: int = 100
    max_steps: int = 1000  # optimizer steps
    max_minutes: Optional[float] = None  # also stop on wall-clock time (CPU budgets)
    max_grad_norm: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    log_every: int = 20
    eval_every: int = 250
    save_every: int = 500
    checkpoints_total_limit: int = 2
    on_nonfinite: str = "stop"  # a NaN/inf loss or gradient: stop (naming the step) | skip (that batch; stops after 10 in a row)
    log_with: Optional[str] = None  # an accelerate tracker (tensorboard, wandb, ...); metrics.jsonl is always written
    num_threads: Optional[int] = None  # torch CPU threads (None: torch's default)
    num_workers: int = 0
