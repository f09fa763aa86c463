"""The denoising objective: epsilon-, v- or x0-prediction, self-conditioning, condition dropout."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.training_utils import compute_snr

from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.schedulers import model_target, x0_and_noise


@dataclass
class DiffusionObjectiveConfig:
    prediction_type: str = "v_prediction"  # epsilon | v_prediction | sample (x0)
    beta_schedule: str = "squaredcos_cap_v2"  # cosine; sqrt (Diffusion-LM); or any diffusers beta_schedule
    noise_shift: float = 1.0  # > 1 shifts the schedule towards noise: SNR / shift^2 (simple diffusion, LD4LG's scale)
    num_train_timesteps: int = 1000
    snr_gamma: Optional[float] = None  # Min-SNR-gamma loss weighting (Hang et al. 2023; 5 is their choice)
    self_conditioning_prob: float = 0.5  # LD4LG; needs denoiser.self_conditioning
    condition_dropout: float = 0.1  # classifier-free guidance: share of examples trained unconditionally
    length_loss_weight: float = 1.0  # text conditions: the head that predicts the number of target segments


def min_snr_weights(scheduler: DDPMScheduler, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-example loss weights of Min-SNR-gamma, for the scheduler's prediction type."""
    snr = compute_snr(scheduler, timesteps)
    clipped = snr.clamp(max=gamma)
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return clipped / snr
    if kind == "v_prediction":
        return clipped / (snr + 1)
    return clipped


def drop_conditions(denoiser: LatentDiT, batch: dict, drop: torch.Tensor) -> dict:
    """Condition kwargs for the denoiser with the conditions of `drop` rows replaced by the null ones."""
    kwargs = {}
    if "class_labels" in batch:
        kwargs["class_labels"] = torch.where(drop, denoiser.null_class, batch["class_labels"])
    if "condition_states" in batch:
        states, mask = batch["condition_states"], batch["condition_mask"].bool()
        null = denoiser.null_condition.to(states.dtype).expand_as(states)  # the graph always reaches the null token
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        kwargs["condition_states"] = torch.where(drop[:, None, None], null, states)
        kwargs["condition_mask"] = torch.where(drop[:, None], null_mask, mask)
    return kwargs


def diffusion_loss(
    denoiser: torch.nn.Module, scheduler: DDPMScheduler, batch: dict, cfg: DiffusionObjectiveConfig,
    generator: Optional[torch.Generator] = None,
) -> dict[str, torch.Tensor]:
    """batch: latents (B, L, d) normalised, latent_mask (B, L), optional class_labels / condition_states."""
    module: LatentDiT = getattr(denoiser, "module", denoiser)  # the DDP-wrapped model is called, its config read
    clean, mask = batch["latents"], batch["latent_mask"]
    size = clean.shape[0]
    noise = torch.randn(clean.shape, generator=generator, device=clean.device, dtype=clean.dtype)
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (size,), generator=generator, device=clean.device)
    noisy = scheduler.add_noise(clean, noise, timesteps)
    drop = torch.rand(size, generator=generator, device=clean.device) < cfg.condition_dropout
    conditions = drop_conditions(module, batch, drop)
    if denoiser is module:  # the source read once for both passes (a DiT that reads sources trains inside ConditionedObjective)
        conditions = module.prepare_conditions(conditions)

    self_condition = None
    if module.config.self_conditioning:
        use = torch.rand(size, generator=generator, device=clean.device) < cfg.self_conditioning_prob
        with torch.no_grad():
            first = denoiser(noisy, timesteps, latent_mask=mask, **conditions)
            self_condition = x0_and_noise(scheduler, first, noisy, timesteps)[0] * use[:, None, None]
    output = denoiser(noisy, timesteps, latent_mask=mask, self_condition=self_condition, **conditions)
    target = model_target(scheduler, clean, noise, timesteps)
    weights = mask.unsqueeze(-1).to(output.dtype)
    if cfg.snr_gamma:
        weights = weights * min_snr_weights(scheduler, timesteps, cfg.snr_gamma).reshape(-1, 1, 1).to(output.dtype)
    loss = ((output - target) ** 2 * weights).sum() / (mask.sum() * output.shape[-1])
    terms = {"loss": loss, "timesteps": timesteps}  # the timesteps are for inspection, not for logging
    if module.length_head is not None and "condition_states" in batch:
        counts = mask.sum(dim=1) // module.config.num_latents
        logits = module.segment_count_logits(batch["condition_states"], batch["condition_mask"].bool())
        terms["length_loss"] = F.cross_entropy(logits, counts - 1)
        terms["loss"] = loss + cfg.length_loss_weight * terms["length_loss"]
    return terms


class ConditionedObjective(torch.nn.Module):
    """A text-conditioned run as one module (one DDP wrapper): a trainable condition encoder turns the
    batch's source tokens into states (a frozen encoder's states come cached in the batch), then the DiT's
    loss, which reads the source once for both of its passes (`LatentDiT.prepare_conditions`)."""

    def __init__(self, denoiser: LatentDiT, condition_encoder: Optional[torch.nn.Module], scheduler: DDPMScheduler,
                 cfg: DiffusionObjectiveConfig):
        super().__init__()
        self.denoiser, self.condition_encoder = denoiser, condition_encoder
        self.scheduler, self.cfg = scheduler, cfg

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None) -> dict[str, torch.Tensor]:
        batch = dict(batch)
        if "condition_input_ids" in batch:
            ids, mask = batch.pop("condition_input_ids"), batch.pop("condition_attention_mask")
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.condition_encoder.config.freeze):
                batch.update(self.condition_encoder(ids, mask))
        return diffusion_loss(self.denoiser, self.scheduler, batch, self.cfg, generator)
