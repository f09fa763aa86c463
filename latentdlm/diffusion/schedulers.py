"""Noise schedules and samplers: diffusers schedulers chosen by name."""

from __future__ import annotations

from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from latentdlm.errors import LatentDLMError

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler}
# latents are not images: never clip or threshold them
_SETTINGS = {
    "ddpm": {"clip_sample": False, "thresholding": False},
    "ddim": {"clip_sample": False, "thresholding": False, "set_alpha_to_one": False},
    "dpm": {"algorithm_type": "dpmsolver++", "solver_order": 2, "thresholding": False},
}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def training_scheduler(prediction_type: str, beta_schedule: str = "squaredcos_cap_v2", num_train_timesteps: int = 1000) -> DDPMScheduler:
    if prediction_type not in PREDICTION_TYPES:
        raise LatentDLMError(f"unknown prediction type '{prediction_type}'; choose one of {', '.join(PREDICTION_TYPES)}")
    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps, beta_schedule=beta_schedule, prediction_type=prediction_type,
        **_SETTINGS["ddpm"],
    )


def make_scheduler(name: str, base: SchedulerMixin) -> SchedulerMixin:
    """A sampler by name that keeps `base`'s noise schedule and prediction type."""
    if name not in SCHEDULERS:
        raise LatentDLMError(f"unknown scheduler '{name}'; choose one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name].from_config(base.config, **_SETTINGS[name])


def scheduler_name(scheduler: SchedulerMixin) -> str:
    return next((name for name, cls in SCHEDULERS.items() if isinstance(scheduler, cls)), type(scheduler).__name__)
