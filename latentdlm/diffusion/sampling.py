"""The sampling loop over any diffusers scheduler, with classifier-free guidance and self-conditioning."""

from __future__ import annotations

from typing import Callable, Iterable, Optional

import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg

from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.objective import predicted_x0


@torch.no_grad()
def sample_latents(
    denoiser: LatentDiT,
    scheduler,
    latent_mask: torch.Tensor,
    num_inference_steps: int,
    generator: Optional[torch.Generator] = None,
    conditions: Optional[dict] = None,
    guidance_scale: float = 1.0,
    guidance_rescale: float = 0.0,
    progress: Callable[[Iterable], Iterable] = lambda steps: steps,
) -> torch.Tensor:
    """Normalised latents (B, L, d) for the rows of `latent_mask` (B, L).

    `conditions` are the denoiser's condition kwargs (class_labels / condition_states + mask); with a
    guidance scale != 1 each step also runs the null condition and mixes the two predictions.
    """
    conditions = conditions or {}
    size, length = latent_mask.shape
    device = denoiser.device
    latent_mask = latent_mask.to(device)
    shape = (size, length, denoiser.config.latent_dim)
    latents = torch.randn(shape, generator=generator, device=device) * scheduler.init_noise_sigma
    guided = guidance_scale != 1.0
    self_condition = torch.zeros(shape, device=device) if denoiser.config.self_conditioning else None
    scheduler.set_timesteps(num_inference_steps, device=device)
    for t in progress(scheduler.timesteps):
        model_input = scheduler.scale_model_input(latents, t)
        timesteps = t.expand(size).to(device)
        if guided:
            output = guided_output(denoiser, model_input, timesteps, latent_mask, self_condition, conditions,
                                   guidance_scale, guidance_rescale)
        else:
            output = denoiser(model_input, timesteps, latent_mask, self_condition, **conditions)
        if self_condition is not None:
            self_condition = predicted_x0(scheduler, output, latents, timesteps)
        latents = scheduler.step(output, t, latents, generator=generator).prev_sample
    return latents


def guided_output(
    denoiser: LatentDiT, sample: torch.Tensor, timesteps: torch.Tensor, latent_mask: torch.Tensor,
    self_condition: Optional[torch.Tensor], conditions: dict, guidance_scale: float, guidance_rescale: float = 0.0,
) -> torch.Tensor:
    """Classifier-free guidance: null + scale * (conditional - null), both in one doubled batch."""
    output_cond, output_null = denoiser(
        sample.repeat(2, 1, 1), timesteps.repeat(2), latent_mask.repeat(2, 1),
        None if self_condition is None else self_condition.repeat(2, 1, 1),
        **_with_null_half(denoiser, conditions, sample.shape[0]),
    ).chunk(2)
    output = output_null + guidance_scale * (output_cond - output_null)
    if guidance_rescale > 0:
        output = rescale_noise_cfg(output, output_cond, guidance_rescale)
    return output


def _with_null_half(denoiser: LatentDiT, conditions: dict, size: int) -> dict:
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
