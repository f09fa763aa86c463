"""Noise schedules and samplers: diffusers schedulers chosen by name.

Every sampler uses "trailing" timestep spacing (Lin et al. 2024, "Common Diffusion Noise Schedules and
Sample Steps are Flawed"): whatever the number of steps, sampling starts at the last training timestep,
where the model was trained to see pure noise. "leading" spacing (DDPM's and DDIM's default) starts a
20-step run at t=950, "linspace" rounds differently per sampler.
"""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from latentdlm.errors import LatentDLMError

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
# latents are not images: never clip or threshold them
_SETTINGS = {
    "ddpm": {"clip_sample": False, "thresholding": False, "timestep_spacing": "trailing"},
    # the last step lands on the clean latent (alpha = 1), not on the first training timestep
    "ddim": {"clip_sample": False, "thresholding": False, "set_alpha_to_one": True, "timestep_spacing": "trailing"},
    "dpm": {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": False, "timestep_spacing": "trailing",
            "final_sigmas_type": "zero", "lower_order_final": True},
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
# diffusers' documented clip for DPM-Solver on the cosine schedule: near t=T the cosine schedule's
# alpha is ~5e-5, and an epsilon model's x0 = (x - sigma * eps) / alpha blows its error up 2e4-fold.
# v- and x0-prediction never divide by alpha, so they keep the full range (the first step is t=T-1).
COSINE_LAMBDA_MIN_CLIPPED = -5.1


def training_scheduler(prediction_type: str, beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000,
                       noise_shift: float = 1.0) -> DDPMScheduler:
    """The DDPM training schedule. `beta_schedule`: any diffusers name, or "sqrt" (Diffusion-LM:
    alpha_bar(t) = 1 - sqrt(t/T + 1e-4)); `noise_shift` s > 1 divides the SNR at every t by s^2
    (simple diffusion's shifted schedule: more of training and sampling at high noise)."""
    if prediction_type not in PREDICTION_TYPES:
        raise LatentDLMError(f"unknown prediction type '{prediction_type}'; choose one of {', '.join(PREDICTION_TYPES)}")
    if noise_shift <= 0:
        raise LatentDLMError(f"objective.noise_shift must be positive, got {noise_shift}")
    trained_betas = None
    if beta_schedule == "sqrt" or noise_shift != 1.0:
        trained_betas = _betas(beta_schedule, num_train_timesteps, noise_shift).tolist()
    try:
        return DDPMScheduler(
            num_train_timesteps=num_train_timesteps, beta_schedule="linear" if beta_schedule == "sqrt" else beta_schedule,
            trained_betas=trained_betas, prediction_type=prediction_type, **_SETTINGS["ddpm"],
        )
    except NotImplementedError:
        raise LatentDLMError(f"unknown beta schedule '{beta_schedule}'") from None


def _betas(beta_schedule: str, steps: int, shift: float) -> torch.Tensor:
    if beta_schedule == "sqrt":
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        alpha_bar = 1 - torch.sqrt(t + 1e-4)
        betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    else:
        betas = DDPMScheduler(num_train_timesteps=steps, beta_schedule=beta_schedule).betas.double()
    alpha_bar = torch.cumprod(1 - betas.clamp(max=0.999), dim=0)
    snr = alpha_bar / (1 - alpha_bar) / shift**2
    alpha_bar = snr / (1 + snr)
    previous = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
    return (1 - alpha_bar / previous).clamp(max=0.999)


def make_scheduler(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A sampler by name that keeps `base`'s noise schedule and prediction type, with trailing spacing."""
    if name not in SCHEDULERS:
        raise LatentDLMError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    settings = dict(_SETTINGS[name])
    if name == "dpm":
        # the clip matters wherever the schedule ends near alpha = 0 (cosine, shifted or sqrt schedules)
        cosine_epsilon = base.alphas_cumprod[-1] < 1e-4 and base.config.prediction_type == "epsilon"
        if cosine_epsilon:  # linspace over the clipped range: the same first step, and exactly the steps asked for
            settings.update(lambda_min_clipped=COSINE_LAMBDA_MIN_CLIPPED, timestep_spacing="linspace")
    return SCHEDULERS[name].from_config(base.config, **settings)


def scheduler_name(scheduler: SchedulerMixin) -> str:
    return next((name for name, cls in SCHEDULERS.items() if isinstance(scheduler, cls)), type(scheduler).__name__)


# ---- the schedule's maths, in one place ------------------------------------------------------------
# Every sampler here keeps the training schedule's alphas_cumprod, so DDPM's forward process holds for all
# of them: its add_noise and get_velocity serve any of them (DPM-Solver's own add_noise indexes its step
# sigmas instead, and it has no get_velocity). Timesteps are training-schedule indices: one, or one per row.
def add_noise(scheduler: SchedulerMixin, clean: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
    """`clean` (B, L, d) at the timesteps' noise level: sqrt(a_t) x0 + sqrt(1 - a_t) noise."""
    return DDPMScheduler.add_noise(scheduler, clean, noise, _indices(timesteps))


def x0_and_noise(scheduler: SchedulerMixin, output: torch.Tensor, noisy: torch.Tensor, timesteps,
                 kind: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The clean-latent and noise estimates a model output on `noisy` implies; `kind`: the output's
    prediction type (default: the scheduler's). Exact for epsilon and v; an x0-prediction's noise
    divides by sigma, an epsilon-prediction's x0 by alpha (large near pure noise)."""
    alpha_bar = scheduler.alphas_cumprod.to(noisy.device, noisy.dtype)[_indices(timesteps)].reshape(-1, 1, 1)
    alpha, sigma = alpha_bar.sqrt(), (1 - alpha_bar).sqrt()
    kind = kind or scheduler.config.prediction_type
    if kind == "epsilon":
        return (noisy - sigma * output) / alpha, output
    if kind == "v_prediction":
        return alpha * noisy - sigma * output, alpha * output + sigma * noisy
    return output, (noisy - alpha * output) / sigma.clamp_min(1e-4)


def model_target(scheduler: SchedulerMixin, x0: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
    """What a model of the scheduler's prediction type outputs for (x0, noise): the training target, and
    the inverse of `x0_and_noise`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return DDPMScheduler.get_velocity(scheduler, x0, noise, _indices(timesteps))
    return x0


def _indices(timesteps) -> torch.Tensor:
    return torch.as_tensor(timesteps).long().reshape(-1)
