"""The sampling loop over any diffusers scheduler, with classifier-free guidance and self-conditioning."""

from __future__ import annotations

from typing import Callable, Iterable, Optional, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.objective import predicted_x0

Generators = Optional[torch.Generator | Sequence[torch.Generator]]


@torch.no_grad()
def sample_latents(
    denoiser: LatentDiT,
    scheduler,
    latent_mask: torch.Tensor,
    num_inference_steps: int,
    generator: Generators = None,
    conditions: Optional[dict] = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    progress: Callable[[Iterable], Iterable] = lambda steps: steps,
) -> torch.Tensor:
    """Normalised latents (B, L, d) for the rows of `latent_mask` (B, L).

    `generator` is one generator, or one per row (then a row's sample does not depend on the batch it
    is drawn in). `conditions` are the denoiser's condition kwargs (class_labels / condition_states +
    mask); with a guidance scale != 1 each step also runs the null condition and mixes the two
    predictions. With self-conditioning, each branch (conditional, null) is fed its own previous x0.
    """
    conditions = conditions or {}
    size, length = latent_mask.shape
    device = denoiser.device
    latent_mask = latent_mask.to(device)
    shape = (size, length, denoiser.config.latent_dim)
    latents = randn_tensor(shape, generator=_listed(generator), device=device) * scheduler.init_noise_sigma
    guided = guidance_scale != 1.0
    if guided:
        conditions = with_null_half(denoiser, conditions, size)
        latent_mask = latent_mask.repeat(2, 1)
    branches = 2 if guided else 1
    self_condition = torch.zeros((branches * size, *shape[1:]), device=device) if denoiser.config.self_conditioning else None
    scheduler.set_timesteps(num_inference_steps, device=device)
    for t in progress(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, t).repeat(branches, 1, 1)
        timesteps = t.expand(branches * size).to(device)
        output = denoiser(model_input, timesteps, latent_mask, self_condition=self_condition, **conditions)
        if self_condition is not None:  # each branch's own estimate, before guidance mixes them
            self_condition = predicted_x0(scheduler, output, latents.repeat(branches, 1, 1), timesteps)
        if guided:
            output_cond, output_null = output.chunk(2)
            output = guide(output_cond, output_null, guidance_scale, guidance_rescale, latent_mask[:size])
        latents = scheduler.step(output, t, latents, generator=_listed(generator)).prev_sample
    return latents


def guide(output_cond: torch.Tensor, output_null: torch.Tensor, scale: float, rescale: float,
          latent_mask: torch.Tensor) -> torch.Tensor:
    """Classifier-free guidance, null + scale * (conditional - null), optionally rescaled towards the
    conditional prediction's standard deviation (Lin et al. 2024), measured over real latents only."""
    output = output_null + scale * (output_cond - output_null)
    if rescale > 0:
        keep = latent_mask.unsqueeze(-1).to(output.dtype)
        rescaled = output * (_masked_std(output_cond, keep) / _masked_std(output, keep).clamp_min(1e-8))
        output = rescale * rescaled + (1 - rescale) * output
    return output


def _masked_std(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Per-row standard deviation over the kept positions: (B, 1, 1)."""
    count = (keep.sum(dim=(1, 2), keepdim=True) * x.shape[-1]).clamp_min(2)
    mean = (x * keep).sum(dim=(1, 2), keepdim=True) / count
    return (((x - mean) * keep) ** 2).sum(dim=(1, 2), keepdim=True).div(count - 1).sqrt()


def with_null_half(denoiser: LatentDiT, conditions: dict, size: int) -> dict:
    """Conditions for a doubled batch: the given ones, then the null ones."""
    doubled = {}
    if "class_labels" in conditions:
        labels = conditions["class_labels"]
        doubled["class_labels"] = torch.cat([labels, torch.full_like(labels, denoiser.null_class)])
    if "condition_states" in conditions:
        states, mask = conditions["condition_states"], conditions["condition_mask"].bool()
        null_states, null_mask = denoiser.null_conditions(size)
        pad = states.shape[1] - 1
        null_states = torch.cat([null_states.to(states.dtype), states.new_zeros(size, pad, states.shape[2])], dim=1)
        null_mask = torch.cat([null_mask, null_mask.new_zeros(size, pad)], dim=1)
        doubled["condition_states"] = torch.cat([states, null_states])
        doubled["condition_mask"] = torch.cat([mask, null_mask])
    return doubled


def _listed(generator: Generators):
    """diffusers takes one generator or a list with one per row; a 1-element list is one generator."""
    if isinstance(generator, (list, tuple)):
        return list(generator) if len(generator) > 1 else generator[0]
    return generator
