"""Frozen sentence embeddings computed once per corpus and kept on disk.

With `latent_type: pooled` and a frozen encoder, a unit's latent is a fixed function of its text: the
autoencoder stage (which then trains only the decoder) and the diffusion stage read the same cached
embeddings instead of running the encoder again. Files live under the latentdlm cache, named by a hash
of the encoder, the token limit and the units, so any change of those makes a new file.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file

from latentdlm.io import cache_dir


def uses_embedding_cache(model) -> bool:
    return model.config.latent_type == "pooled" and model.encoder.frozen


def _cache_path(model, units: Sequence[str]):
    digest = hashlib.sha256(json.dumps({
        "encoder": model.config.encoder.name_or_path, "encoder_config": model.encoder.hf_config,
        "max_length": model.config.max_length, "random_init": not model.encoder.external,
    }, sort_keys=True, default=str).encode())
    if not model.encoder.external:  # a random frozen encoder: its weights are part of the key
        for tensor in model.encoder.state_dict().values():
            digest.update(tensor.detach().cpu().numpy().tobytes())
    for unit in units:
        digest.update(unit.encode("utf-8") + b"\0")
    return cache_dir() / "embeddings" / f"{digest.hexdigest()[:32]}.safetensors"


def unit_embeddings(model, units: Sequence[str], batch_size: int = 128) -> torch.Tensor:
    """The latents (N, 1, d) of `units` under a pooled frozen encoder, from the cache or computed once
    (a frozen part stays in eval mode, and nothing else runs before the pooled latent)."""
    path = _cache_path(model, units)
    if path.exists():
        return load_file(str(path))["latents"]
    latents = model.unit_latents(units, batch_size, progress=True).float().cpu()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({"latents": latents.contiguous()}, str(tmp))
    tmp.replace(path)
    return latents
