"""The one latent cache: every unit's latents under an autoencoder, computed once and kept on disk.

A file is named by a hash of what the latents depend on and of the units, so any change of those makes
a new file. Latents that are a fixed function of a frozen encoder (`ParagraphAutoencoder.fixed_latents`)
depend on the encoder and the token limit only: the autoencoder stage (which then trains only the
decoder) and the diffusion stage share them under the latentdlm cache. Other latents depend on the
trained weights: the diffusion stage keeps them in its run folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from latentdlm.io import atomic_file, cache_dir


def _digest(model) -> "hashlib._Hash":
    if model.fixed_latents:
        digest = hashlib.sha256(json.dumps({
            "encoder": model.config.encoder.name_or_path, "encoder_config": model.encoder.hf_config,
            "max_length": model.config.max_length, "random_init": not model.encoder.external,
        }, sort_keys=True, default=str).encode())
        weights = {} if model.encoder.external else model.encoder.state_dict()  # a random frozen encoder: its weights count
    else:
        digest = hashlib.sha256(json.dumps(dataclasses.asdict(model.config), sort_keys=True, default=str).encode())
        weights = model._saved_state()
    for tensor in weights.values():
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest


def cache_path(model, units: Sequence[str], folder: Optional[Path] = None) -> Path:
    """The file of `units`' latents: under `folder` (default: the shared cache) unless they are fixed latents,
    which always live in the shared cache."""
    if model.fixed_latents or folder is None:
        folder = cache_dir() / "embeddings"
    digest = _digest(model)
    for unit in units:
        digest.update(unit.encode("utf-8") + b"\0")
    return folder / f"{digest.hexdigest()[:32]}.safetensors"


def ensure_cached(model, units: Sequence[str], batch_size: int = 128, folder: Optional[Path] = None) -> Path:
    """The file of `units`' latents (posterior means) under `model`, computed now if it is not there yet."""
    path = cache_path(model, units, folder)
    if not path.exists():
        latents = model.unit_latents(units, batch_size, progress=True).float().cpu()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            save_file({"latents": latents.contiguous()}, str(tmp))
    return path


def cached_unit_latents(model, units: Sequence[str], batch_size: int = 128, folder: Optional[Path] = None) -> torch.Tensor:
    """The latents (N, k, d) of `units`, from the cache or computed once."""
    return load_file(str(ensure_cached(model, units, batch_size, folder)))["latents"]
