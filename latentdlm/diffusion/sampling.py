"""The sampling loop over any diffusers scheduler, with classifier-free guidance and self-conditioning."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
from diffusers.utils.torch_utils import randn_tensor

from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.objective import predicted_noise, predicted_x0

Generators = Optional[torch.Generator | Sequence[torch.Generator]]
MIN_GUIDED_ALPHA_BAR = 1e-3  # classifier guidance starts once the signal is above 0.1% of the variance
RESAMPLING_SAMPLERS = ("ddpm", "ddim")  # single-step samplers: a step can be repeated (multistep ones keep a history)


@dataclass
class Held:
    """Latents held fixed while the rest is generated (infilling, RePaint style): `values` (B, L, d)
    normalised, kept where `mask` (B, L) is True. After every sampler step the held positions are set
    to their values noised to the step's level (the same noise draw for the whole run); at the end they
    are the values themselves. `resample` > 1 repeats each step that many times, re-noising the result
    back one step between repeats (RePaint's resampling, which lets the generated part agree with the
    held part)."""

    values: torch.Tensor
    mask: torch.Tensor
    resample: int = 1


@dataclass
class ClassifierGuidance:
    """Steer sampling with a classifier on noised latents: eps' = eps - scale * sigma_t * grad log p(y | x_t)
    (Dhariwal & Nichol 2021), whatever the model predicts. `classifier(latents, timesteps, latent_mask)`
    returns logits; `labels` (B,) are the wanted classes."""

    classifier: Callable
    labels: torch.Tensor
    scale: float


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
    start: Optional[tuple[torch.Tensor, int]] = None,
    held: Optional[Held] = None,
    classifier: Optional[ClassifierGuidance] = None,
) -> torch.Tensor:
    """Normalised latents (B, L, d) for the rows of `latent_mask` (B, L).

    `generator` is one generator, or one per row (then a row's sample does not depend on the batch it
    is drawn in). `conditions` are the denoiser's condition kwargs (class_labels / condition_states +
    mask); with a guidance scale != 1 each step also runs the null condition and mixes the two
    predictions. With self-conditioning, each branch (conditional, null) is fed its own previous x0.
    `start` = (latents, step): begin at the sampler's step `step` from latents already at that step's
    noise level (SDEdit variations, interpolation through noise) instead of from pure noise at step 0.
    `held`: latents kept fixed while the others are generated (resampling needs a RESAMPLING_SAMPLERS
    sampler); `classifier`: classifier guidance.
    """
    conditions = conditions or {}
    size, length = latent_mask.shape
    device = denoiser.device
    latent_mask = latent_mask.to(device)
    shape = (size, length, denoiser.config.latent_dim)
    scheduler.set_timesteps(num_inference_steps, device=device)
    timesteps = scheduler.timesteps
    if start is None:
        latents = randn_tensor(shape, generator=_listed(generator), device=device) * scheduler.init_noise_sigma
    else:
        latents, first = start[0].to(device), start[1]
        timesteps = timesteps[first:]
        if hasattr(scheduler, "set_begin_index"):  # multistep samplers index their sigmas from the first step run
            scheduler.set_begin_index(first)
    guided = guidance_scale != 1.0
    if guided:
        conditions = with_null_half(denoiser, conditions, size)
        latent_mask = latent_mask.repeat(2, 1)
    branches = 2 if guided else 1
    self_condition = torch.zeros((branches * size, *shape[1:]), device=device) if denoiser.config.self_conditioning else None
    held_noise = randn_tensor(shape, generator=_listed(generator), device=device) if held is not None else None
    alphas = scheduler.alphas_cumprod.to(device)
    for i, t in enumerate(progress(timesteps)):
        following = timesteps[i + 1] if i + 1 < len(timesteps) else None
        for repeat in range(held.resample if held is not None else 1):
            if repeat:  # RePaint: back to step t's noise level, then the step again
                latents = renoise(latents, alphas, t, following, generator)
            model_input = scheduler.scale_model_input(latents, t).repeat(branches, 1, 1)
            steps = t.expand(branches * size).to(device)
            output = denoiser(model_input, steps, latent_mask, self_condition=self_condition, **conditions)
            if self_condition is not None:  # each branch's own estimate, before guidance mixes them
                self_condition = predicted_x0(scheduler, output, latents.repeat(branches, 1, 1), steps)
            if guided:
                output_cond, output_null = output.chunk(2)
                output = guide(output_cond, output_null, guidance_scale, guidance_rescale, latent_mask[:size])
            if classifier is not None:
                output = classifier_guided(scheduler, output, latents, t, latent_mask[:size], classifier)
            latents = scheduler.step(output, t, latents, generator=_listed(generator)).prev_sample
            if held is not None:
                level = held.values if following is None else noised(held.values, held_noise, alphas, following)
                latents = torch.where(held.mask[..., None].to(device), level.to(latents.dtype), latents)
    return latents


def noised(clean: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor, t) -> torch.Tensor:
    """`clean` (B, L, d) at training timestep t's noise level (one t, or one per row): sqrt(a_t) x0 +
    sqrt(1 - a_t) noise (every sampler here shares the training schedule's alphas)."""
    alpha = alphas_cumprod[torch.as_tensor(t).long()].reshape(-1, 1, 1)
    return alpha.sqrt() * clean + (1 - alpha).sqrt() * noise


def renoise(latents: torch.Tensor, alphas_cumprod: torch.Tensor, t, following, generator: Generators) -> torch.Tensor:
    """Latents at `following`'s level (None: clean) forward-diffused back to t's level."""
    ratio = alphas_cumprod[int(t)] / (alphas_cumprod[int(following)] if following is not None else 1.0)
    noise = randn_tensor(latents.shape, generator=_listed(generator), device=latents.device)
    return ratio.sqrt() * latents + (1 - ratio).sqrt() * noise


def classifier_guided(scheduler, output: torch.Tensor, latents: torch.Tensor, t, latent_mask: torch.Tensor,
                      guidance: ClassifierGuidance) -> torch.Tensor:
    """The model output with its implied noise moved along the classifier's gradient, re-expressed as the
    model's prediction type."""
    alpha_bar = scheduler.alphas_cumprod.to(latents.device, latents.dtype)[int(t)]
    if alpha_bar < MIN_GUIDED_ALPHA_BAR:  # (near) pure noise: nothing to classify, and x0 = (x - sigma eps) / alpha explodes
        return output
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    timesteps = torch.as_tensor(t, device=latents.device).reshape(1).expand(latents.shape[0])
    with torch.enable_grad():
        x = latents.detach().requires_grad_(True)
        log_probs = guidance.classifier(x, timesteps, latent_mask).log_softmax(dim=-1)
        chosen = log_probs.gather(1, guidance.labels.to(x.device).reshape(-1, 1)).sum()
        gradient = torch.autograd.grad(chosen, x)[0]
    kind = scheduler.config.prediction_type
    eps = predicted_noise(scheduler, output, latents, timesteps) - guidance.scale * sigma * gradient * latent_mask[..., None]
    x0 = (latents - sigma * eps) / alpha
    if kind == "epsilon":
        return eps
    if kind == "v_prediction":
        return alpha * eps - sigma * x0
    return x0


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
