"""Checkpoints and run folders, shared by both stages: `save_state` into a hidden folder with a
checksummed manifest, one rename to `step-N`, rotation; resume from the newest whole checkpoint (a
corrupt one is skipped with a warning); a run folder is never trained over unless asked; EMA weights
in checkpoints as safetensors (under FSDP every rank keeps the EMA of its own shards), never a pickle."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Optional, Protocol

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from latentdlm.errors import LatentDLMError
from latentdlm.io import atomic_file, file_sha256, write_errors_explained
from latentdlm.training.config import TrainingConfig

COMPLETE_MARKER = "checkpoint_complete"


def prepare_output_dir(cfg: TrainingConfig, resume: bool, final_name: str) -> tuple[Path, Optional[Path]]:
    """The output folder and, when resuming, the checkpoint to resume from; refuses to train over a
    finished run unless resuming or asked to overwrite."""
    out = Path(cfg.output_dir)
    if resume:
        checkpoint = latest_checkpoint(out)
        if checkpoint is None:
            raise LatentDLMError(f"--resume: no complete checkpoint under {out / 'checkpoints'}")
        return out, checkpoint
    if (out / final_name).exists() or latest_checkpoint(out) is not None:
        if not cfg.overwrite_output_dir:
            raise LatentDLMError(
                f"{out} already holds a run; pass --resume to continue it, "
                "training.overwrite_output_dir=true to replace it, or another training.output_dir"
            )
    return out, None


def clear_previous_run(out: Path) -> None:
    """A fresh run (asked to overwrite) starts without the old run's logs and checkpoints;
    the old final model stays until the new one replaces it."""
    for log in ("metrics.jsonl", "samples.jsonl"):
        (out / log).unlink(missing_ok=True)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)


def latest_checkpoint(out: Path) -> Optional[Path]:
    """The newest checkpoint whose files match its manifest; a corrupt or half-written one is skipped with
    a warning (resume then falls back to the one before)."""
    for path in sorted((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]), reverse=True):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        warnings.warn(f"skipping checkpoint {path}: {problem}")
    return None


def checkpoint_problem(path: Path) -> Optional[str]:
    """Why a checkpoint folder cannot be resumed from, or None when every file matches its manifest."""
    marker = path / COMPLETE_MARKER
    if not marker.exists():
        return "it was never completed"
    try:
        manifest = json.loads(marker.read_text())
    except ValueError:
        return "its manifest is unreadable"
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != expected["bytes"] or file_sha256(file) != expected["sha256"]:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def trim_logs(out: Path, step: int) -> None:
    """A run resumed at `step` drops the log rows written after it (they are written again): no step twice."""
    for log in ("metrics.jsonl", "samples.jsonl"):
        path = out / log
        if path.exists():
            rows = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            with atomic_file(path) as tmp:
                tmp.write_text("".join(row + "\n" for row in rows))


class ExtraState(Protocol):
    """State kept beside accelerate's in every checkpoint (save and load run on every rank)."""

    def save(self, folder: Path) -> None: ...

    def load(self, folder: Path) -> None: ...


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int, extra: Optional[ExtraState] = None) -> None:
    """accelerate's `save_state` into a hidden folder, a manifest (sizes and sha256 of every file), then
    one rename to `step-N` and the rotation to the newest `keep`: a kill or a write error mid-save
    leaves the earlier checkpoints as they were. (accelerate's automatic_checkpoint_naming counts saves,
    not steps, and rotates before the new save is complete, so the loop names and rotates its own.)"""
    final = out / "checkpoints" / f"step-{step}"
    partial = final.with_name(f".step-{step}.partial")
    with write_errors_explained(f"the checkpoint of step {step}", final):
        try:
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)  # left by a run killed while saving
            accelerator.wait_for_everyone()
            accelerator.save_state(str(partial))
            if extra is not None:
                extra.save(partial)
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                files = {str(p.relative_to(partial)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
                         for p in sorted(partial.rglob("*")) if p.is_file()}
                (partial / COMPLETE_MARKER).write_text(json.dumps({"step": step, "files": files}, indent=1))
                shutil.rmtree(final, ignore_errors=True)  # a checkpoint of this step from before a resume
                partial.rename(final)
        except OSError:
            if accelerator.is_main_process:
                shutil.rmtree(partial, ignore_errors=True)
            raise
    if accelerator.is_main_process:
        done = sorted(final.parent.glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in done[: max(0, len(done) - keep)]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()


def is_sharded(accelerator: Accelerator) -> bool:
    """Whether the prepared model holds only this rank's shards of its weights (FSDP)."""
    return accelerator.distributed_type == DistributedType.FSDP


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


def trainable(module: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The weights EMA follows: the DiT's, and a trainable condition encoder's."""
    return [p for p in module.parameters() if p.requires_grad]


class ShadowParams(torch.nn.Module):
    """The EMA weights as a module, for a per-rank checksum."""

    def __init__(self, ema: EMAModel):
        super().__init__()
        self.weights = torch.nn.ParameterList([torch.nn.Parameter(p, requires_grad=False) for p in ema.shadow_params])
