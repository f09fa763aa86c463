"""One sampling loop over any diffusers scheduler, with a diffusers guider and step hooks.

    guider = make_guider("cfg", guidance_scale=3.0)           # or "apg"; None: no guidance
    latents = sample_latents(denoiser, scheduler, latent_mask, 20, generators, conditions, guider,
                             hooks=[Held(values, held_mask)])  # and/or ClassifierGuidance(...)

Each step runs the denoiser once (on a doubled batch with a guider: the conditions, then the null
ones), the guider combines the two predictions, each hook may adjust the output (classifier guidance),
the scheduler steps, and each hook may constrain the new latents (infilling). A hook with `repeats` > 1
has every step run that many times, re-noised back to the step's level in between (RePaint).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance
from diffusers.guiders.guider_utils import BaseGuidance, logger as guider_logger
from diffusers.utils.torch_utils import randn_tensor

from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.schedulers import add_noise, model_target, x0_and_noise
from latentdlm.errors import LatentDLMError

Generators = Optional[torch.Generator | Sequence[torch.Generator]]
MIN_GUIDED_ALPHA_BAR = 1e-3  # classifier guidance starts once the signal is above 0.1% of the variance
RESAMPLING_SAMPLERS = ("ddpm", "ddim")  # single-step samplers: a step can be repeated (multistep ones keep a history)
# guidance by name: diffusers guiders. APG (Sadat et al. 2024) with the paper's choices: only the part of
# the guidance update orthogonal to the conditional prediction (eta 0), reverse momentum -0.5.
GUIDANCE_METHODS = {
    "cfg": (ClassifierFreeGuidance, {}),
    "apg": (AdaptiveProjectedGuidance, {"eta": 0.0, "adaptive_projected_guidance_momentum": -0.5}),
}
guider_logger.addFilter(lambda record: "experimental feature" not in record.getMessage())  # said at every guider made


def make_guider(method: str = "cfg", guidance_scale: float = 1.0, guidance_rescale: float = 0.0) -> Optional[BaseGuidance]:
    """The diffusers guider `method` names (a template: each sampling run uses fresh copies); None at scale 1."""
    if method not in GUIDANCE_METHODS:
        raise LatentDLMError(f"unknown guidance method '{method}'; choose one of {', '.join(GUIDANCE_METHODS)}")
    if guidance_scale == 1.0:
        return None
    cls, settings = GUIDANCE_METHODS[method]
    return cls(guidance_scale=guidance_scale, guidance_rescale=guidance_rescale, **settings)


class RowGuidance:
    """A guider applied to each row's real latents only, so its statistics (the rescale's std, APG's norms)
    never see padding: rows are grouped by their number of real latents, one fresh copy of the guider per
    group (APG's momentum is per run and per shape). Padded positions hold no text; they get the plain
    combination scaled by the gain the guider gave their row (for CFG + rescale: what it always was)."""

    def __init__(self, guider: BaseGuidance, latent_mask: torch.Tensor):
        self.mask, counts = latent_mask.bool(), latent_mask.sum(dim=1)
        self.groups = [(n, counts == n, guider.new()) for n in counts.unique().tolist()]
        self.plain = ClassifierFreeGuidance(guidance_scale=guider.guidance_scale)

    def __call__(self, cond: torch.Tensor, null: torch.Tensor, step: int, num_steps: int, t) -> torch.Tensor:
        out = self.plain.forward(cond, null).pred
        for n, rows, guider in self.groups:
            guider.set_state(step, num_steps, t)
            guider.prepare_inputs({})  # APG: a fresh momentum buffer at the first step
            keep = self.mask & rows[:, None]
            shape = (int(rows.sum()), n, cond.shape[-1])
            guided = guider.forward(cond[keep].view(shape), null[keep].view(shape)).pred
            gain = guided.flatten(1).norm(dim=1) / out[keep].view(shape).flatten(1).norm(dim=1).clamp_min(1e-12)
            out[rows] = out[rows] * gain[:, None, None]
            out[keep] = guided.flatten(0, 1)
        return out


class StepHook:
    """A piece of the sampling loop; override what it needs."""

    repeats = 1  # runs of each step (> 1: RePaint resampling)

    def begin(self, latents: torch.Tensor, generator: Generators) -> None:
        """Once, before the first step (after the starting latents are drawn)."""

    def adjust_output(self, scheduler, output: torch.Tensor, latents: torch.Tensor, t, latent_mask: torch.Tensor) -> torch.Tensor:
        return output

    def constrain(self, scheduler, latents: torch.Tensor, following) -> torch.Tensor:
        """The latents after a step to `following` (None: the last step, clean)."""
        return latents


@dataclass
class Held(StepHook):
    """Latents held fixed while the rest is generated (infilling, RePaint style): `values` (B, L, d)
    normalised, kept where `mask` (B, L) is True. After every sampler step the held positions are set
    to their values noised to the step's level (the same noise draw for the whole run); at the end they
    are the values themselves. `resample` > 1 repeats each step that many times, re-noising the result
    back one step between repeats (RePaint's resampling, which lets the generated part agree with the
    held part; needs a RESAMPLING_SAMPLERS sampler)."""

    values: torch.Tensor
    mask: torch.Tensor
    resample: int = 1

    @property
    def repeats(self) -> int:
        return self.resample

    def begin(self, latents, generator):
        self.values, self.mask = self.values.to(latents.device), self.mask.to(latents.device)
        self.noise = randn_tensor(latents.shape, generator=_listed(generator), device=latents.device)

    def constrain(self, scheduler, latents, following):
        level = self.values if following is None else add_noise(scheduler, self.values, self.noise, following)
        return torch.where(self.mask[..., None], level.to(latents.dtype), latents)


@dataclass
class ClassifierGuidance(StepHook):
    """Steer sampling with a classifier on noised latents: eps' = eps - scale * sigma_t * grad log p(y | x_t)
    (Dhariwal & Nichol 2021), whatever the model predicts. `classifier(latents, timesteps, latent_mask)`
    returns logits; `labels` (B,) are the wanted classes."""

    classifier: Callable
    labels: torch.Tensor
    scale: float

    def adjust_output(self, scheduler, output, latents, t, latent_mask):
        alpha_bar = scheduler.alphas_cumprod[int(t)]
        if alpha_bar < MIN_GUIDED_ALPHA_BAR:  # (near) pure noise: nothing to classify, and x0 = (x - sigma eps) / alpha explodes
            return output
        sigma = (1 - alpha_bar.to(latents.device, latents.dtype)).sqrt()
        timesteps = torch.as_tensor(t, device=latents.device).reshape(1).expand(latents.shape[0])
        with torch.enable_grad():
            x = latents.detach().requires_grad_(True)
            log_probs = self.classifier(x, timesteps, latent_mask).log_softmax(dim=-1)
            chosen = log_probs.gather(1, self.labels.to(x.device).reshape(-1, 1)).sum()
            gradient = torch.autograd.grad(chosen, x)[0]
        eps = x0_and_noise(scheduler, output, latents, timesteps)[1] - self.scale * sigma * gradient * latent_mask[..., None]
        x0 = x0_and_noise(scheduler, eps, latents, timesteps, kind="epsilon")[0]
        return model_target(scheduler, x0, eps, timesteps)


@torch.no_grad()
def sample_latents(
    denoiser: LatentDiT,
    scheduler,
    latent_mask: torch.Tensor,
    num_inference_steps: int,
    generator: Generators = None,
    conditions: Optional[dict] = None,
    guider: Optional[BaseGuidance] = None,
    hooks: Sequence[StepHook] = (),
    start: Optional[tuple[torch.Tensor, int]] = None,
    progress: Callable[[Iterable], Iterable] = lambda steps: steps,
) -> torch.Tensor:
    """Normalised latents (B, L, d) for the rows of `latent_mask` (B, L).

    `generator` is one generator, or one per row (then a row's sample does not depend on the batch it
    is drawn in). `conditions` are the denoiser's condition kwargs (class_labels / condition_states +
    mask); with a `guider` (`make_guider`) each step also runs the null condition and the guider mixes
    the two predictions. With self-conditioning, each branch (conditional, null) is fed its own previous
    x0. `start` = (latents, step): begin at the sampler's step `step` from latents already at that step's
    noise level (SDEdit variations, interpolation through noise) instead of from pure noise at step 0.
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
    for hook in hooks:
        hook.begin(latents, generator)
    branches = 1 if guider is None else 2
    if guider is not None:
        conditions = with_null_half(denoiser, conditions, size)
        guider = RowGuidance(guider, latent_mask)
    if "condition_states" in conditions:  # the source read once for every step and both branches
        conditions = denoiser.prepare_conditions(conditions)
    self_condition = torch.zeros((branches * size, *shape[1:]), device=device) if denoiser.config.self_conditioning else None
    repeats = max([hook.repeats for hook in hooks], default=1)
    for i, t in enumerate(progress(timesteps)):
        following = timesteps[i + 1] if i + 1 < len(timesteps) else None
        for repeat in range(repeats):
            if repeat:  # RePaint: back to step t's noise level, then the step again
                latents = renoise(scheduler, latents, t, following, generator)
            steps = t.expand(branches * size).to(device)
            output = denoiser(scheduler.scale_model_input(latents, t).repeat(branches, 1, 1), steps,
                              latent_mask.repeat(branches, 1), self_condition=self_condition, **conditions)
            if self_condition is not None:  # each branch's own estimate, before guidance mixes them
                self_condition = x0_and_noise(scheduler, output, latents.repeat(branches, 1, 1), steps)[0]
            if guider is not None:
                output = guider(*output.chunk(2), i, len(timesteps), t)
            for hook in hooks:
                output = hook.adjust_output(scheduler, output, latents, t, latent_mask)
            latents = scheduler.step(output, t, latents, generator=_listed(generator)).prev_sample
            for hook in hooks:
                latents = hook.constrain(scheduler, latents, following)
    return latents


def renoise(scheduler, latents: torch.Tensor, t, following, generator: Generators) -> torch.Tensor:
    """Latents at `following`'s level (None: clean) forward-diffused back to t's level."""
    alphas = scheduler.alphas_cumprod.to(latents.device)
    ratio = alphas[int(t)] / (alphas[int(following)] if following is not None else 1.0)
    noise = randn_tensor(latents.shape, generator=_listed(generator), device=latents.device)
    return ratio.sqrt() * latents + (1 - ratio).sqrt() * noise


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
