"""EMA weights in checkpoints: safetensors for the weights, JSON for the counters, never a pickle;
under FSDP every rank keeps (and saves) the EMA of its own shards."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers.training_utils import EMAModel
from safetensors.torch import load_file, save_file

from latentdlm.errors import LatentDLMError
from latentdlm.training.loop import is_sharded


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
