"""Experiments in a pipeline's latent space: interpolation, variations (SDEdit), infilling and editing.

The pipeline's methods (`pipe.encode`, `pipe.interpolate`, `pipe.vary`, `pipe.infill`) call these.
Latents: `ParagraphAutoencoder.encode` gives (B, S, k, d) per text with a (B, S) segment mask (posterior
means); the denoiser works on them normalised and flattened to (B, S*k, d).

Interpolation with different segment counts: the point at t in [0, 1] has round((1 - t) S_A + t S_B)
segments; the first min(S_A, S_B) are interpolated position by position, the others are the longer
text's own, so sentences appear (or disappear) one at a time along the path.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from diffusers import DDIMInverseScheduler

from latentdlm.autoencoder.decoding import DecodingConfig, decode_with_settings
from latentdlm.autoencoder.model import EncodedText
from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter
from latentdlm.diffusion.sampling import RESAMPLING_SAMPLERS, Held, sample_latents
from latentdlm.diffusion.schedulers import add_noise, make_scheduler
from latentdlm.errors import LatentDLMError

METHODS = ("slerp", "lerp")
BLANK = "___"


@dataclass
class InterpolationOutput:
    texts: list[str]  # one per point, source first, target last
    segments: list[list[str]]  # each point's decoded segments
    positions: list[float]  # t of each point
    latents: torch.Tensor  # (P, S, k, d) the autoencoder latents decoded at each point
    segment_mask: torch.Tensor  # (P, S)


@dataclass
class InfillOutput:
    texts: list[str]  # one per sample: the known segments verbatim, the generated ones in the blanks
    segments: list[list[str]]  # per sample, every segment in order
    generated: list[int]  # the positions that were generated


# ---- interpolation ---------------------------------------------------------------------------------
def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation of each vector of the last dimension (lerp where a and b are parallel);
    t = 0 and t = 1 give a and b exactly."""
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    a_unit, b_unit = a / a.norm(dim=-1, keepdim=True).clamp_min(1e-12), b / b.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    omega = torch.arccos((a_unit * b_unit).sum(dim=-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7))
    sin = torch.sin(omega)
    mixed = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / sin
    return torch.where(sin.abs() < 1e-6, lerp(a, b, t), mixed)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    if t == 0.0:
        return a.clone()
    if t == 1.0:
        return b.clone()
    return (1 - t) * a + t * b


def interpolation_path(a: torch.Tensor, b: torch.Tensor, positions: Sequence[float], method: str = "slerp") -> tuple[torch.Tensor, torch.Tensor]:
    """a (S_A, k, d), b (S_B, k, d) -> latents (P, max S, k, d) and segment mask (P, max S) at `positions`.
    Each segment's k x d latent is one vector for slerp (the rule for different counts: module doc)."""
    if method not in METHODS:
        raise LatentDLMError(f"unknown interpolation method '{method}'; choose one of {', '.join(METHODS)}")
    mix = slerp if method == "slerp" else lerp
    shared, longer = min(len(a), len(b)), (a if len(a) >= len(b) else b)
    k, d = a.shape[1:]
    out = torch.zeros(len(positions), len(longer), k, d, dtype=a.dtype, device=a.device)
    mask = torch.zeros(len(positions), len(longer), dtype=torch.bool, device=a.device)
    for row, t in enumerate(positions):
        count = len(a) if t == 0.0 else len(b) if t == 1.0 else int(math.floor((1 - t) * len(a) + t * len(b) + 0.5))
        out[row, :shared] = mix(a[:shared].reshape(shared, -1), b[:shared].reshape(shared, -1), t).reshape(shared, k, d)
        out[row, shared:] = longer[shared:]
        mask[row, :count] = True
    return out, mask


def interpolate(pipe, source: str, target: str, num_points: int = 5, method: str = "slerp", through_noise: Optional[float] = None,
                num_inference_steps: int = 20, decoding: Optional[DecodingConfig] = None) -> InterpolationOutput:
    """Decode `num_points` evenly spaced points between the latents of `source` and `target`. With
    `through_noise` (a strength in (0, 1]) both are first carried to that noise level by deterministic DDIM
    inversion, the noisy latents are interpolated, and DDIM denoises every point back: points stay on the
    model's data manifold (the endpoints become DDIM reconstructions)."""
    if not source.strip() or not target.strip():
        raise LatentDLMError("interpolation needs two non-empty texts (a source and a target)")
    if source.strip() == target.strip():
        raise LatentDLMError("the source and target texts are identical: there is nothing to interpolate between")
    if num_points < 2:
        raise LatentDLMError(f"the number of points must be at least 2 (the endpoints), got {num_points}")
    encoded = pipe.autoencoder.encode([source, target])
    a, b = (encoded.latents[i, encoded.segment_mask[i]] for i in range(2))
    positions = [i / (num_points - 1) for i in range(num_points)]
    if through_noise is None:
        latents, mask = interpolation_path(a, b, positions, method)
    else:
        first = first_step(through_noise, num_inference_steps, "through_noise")
        noisy = [invert(pipe, x[None], num_inference_steps, first)[0] for x in (a, b)]
        path, mask = interpolation_path(*noisy, positions, method)
        latents = denoise_from(pipe, path, mask, num_inference_steps, first, "ddim")
    segments = decode_with_settings(pipe.autoencoder, EncodedText(latents, mask), decoding or pipe.decoding,
                                    torch.Generator().manual_seed(0), int(mask.sum()), joined=False)
    return InterpolationOutput([" ".join(s for s in row if s) for row in segments], segments, positions, latents, mask)


# ---- the denoiser's space: strength -> steps, inversion, denoising from a step -----------------------
def first_step(strength: float, num_inference_steps: int, name: str = "strength") -> int:
    """The sampler step to start from for a noise `strength` in (0, 1] (1: from pure noise)."""
    if not 0.0 < strength <= 1.0:
        raise LatentDLMError(f"{name} must be within (0, 1] (the share of the noise schedule), got {strength}")
    return num_inference_steps - max(1, round(strength * num_inference_steps))


def flat(pipe, latents: torch.Tensor, segment_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, S, k, d) autoencoder latents -> the denoiser's normalised (B, S*k, d) and mask (B, S*k)."""
    size, segments, k, d = latents.shape
    return pipe.autoencoder.latent_space.normalize(latents.reshape(size, segments * k, d)), segment_mask.repeat_interleave(k, dim=1)


def unflat(pipe, latents: torch.Tensor) -> torch.Tensor:
    k, d = pipe.denoiser.config.num_latents, pipe.denoiser.config.latent_dim
    return pipe.autoencoder.latent_space.denormalize(latents).reshape(latents.shape[0], -1, k, d)


@torch.no_grad()
def invert(pipe, latents: torch.Tensor, num_inference_steps: int, first: int, conditions: Optional[dict] = None) -> torch.Tensor:
    """Deterministic DDIM inversion (diffusers' DDIMInverseScheduler, trailing spacing) of autoencoder
    latents (B, S, k, d), all segments real, up to the noise level of the sampler's step `first`; returns
    them at that level, normalised, in the autoencoder's shape. The model is evaluated at the level the
    latents are at (the scheduler's current one), not the next."""
    denoiser, inverse = pipe.denoiser, inverse_scheduler(pipe.scheduler)
    inverse.set_timesteps(num_inference_steps)
    ratio = inverse.config.num_train_timesteps // num_inference_steps
    x, keep = flat(pipe, latents, torch.ones(latents.shape[:2], dtype=torch.bool))
    self_condition = torch.zeros_like(x) if denoiser.config.self_conditioning else None
    for t in inverse.timesteps[: num_inference_steps - first]:
        current = torch.full((x.shape[0],), max(int(t) - ratio, 0))
        output = denoiser(x, current, keep, self_condition=self_condition, **(conditions or {}))
        step = inverse.step(output, t, x)
        x = step.prev_sample
        if self_condition is not None:
            self_condition = step.pred_original_sample
    k, d = denoiser.config.num_latents, denoiser.config.latent_dim
    return x.reshape(x.shape[0], -1, k, d)


def inverse_scheduler(base) -> DDIMInverseScheduler:
    """The DDIM inverse of the pipeline's training schedule (its betas and prediction type)."""
    accepted = inspect.signature(DDIMInverseScheduler.__init__).parameters
    config = {key: value for key, value in base.config.items() if key in accepted}
    return DDIMInverseScheduler.from_config(config, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)


def denoise_from(pipe, noisy: torch.Tensor, segment_mask: torch.Tensor, num_inference_steps: int, first: int, sampler: str,
                 generators=None, conditions: Optional[dict] = None, guider=None) -> torch.Tensor:
    """Normalised latents (B, S, k, d) at step `first`'s noise level -> clean autoencoder latents
    (`guider`: sampling.make_guider's)."""
    size, segments, k, d = noisy.shape
    latent_mask = segment_mask.repeat_interleave(k, dim=1)
    clean = sample_latents(pipe.denoiser, make_scheduler(sampler, pipe.scheduler), latent_mask, num_inference_steps,
                           generators, conditions, guider, start=(noisy.reshape(size, segments * k, d), first))
    return unflat(pipe, clean)


# ---- variations -----------------------------------------------------------------------------------
def vary(pipe, text: str, strength: float = 0.3, num_samples: int = 4, num_inference_steps: int = 20, seed: Optional[int] = None,
         conditions: Optional[dict] = None, guider=None, decoding: Optional[DecodingConfig] = None) -> list[str]:
    """SDEdit: `text`'s latents noised to the level `strength` names, denoised back by the pipeline's
    sampler, decoded. Small strengths paraphrase, large ones rewrite; `conditions` (the denoiser's class or
    source-text kwargs for all samples) steer the rewrite (style or topic transfer)."""
    if not text.strip():
        raise LatentDLMError("the text to vary is empty")
    first = first_step(strength, num_inference_steps)
    encoded = pipe.autoencoder.encode([text])
    latents = encoded.latents.expand(num_samples, -1, -1, -1)
    mask = encoded.segment_mask.expand(num_samples, -1)
    clean, keep = flat(pipe, latents, mask)
    generators = pipe.sample_generators(num_samples, seed)
    noise = torch.stack([torch.randn(clean.shape[1:], generator=g) for g in generators])
    scheduler = make_scheduler(pipe.sampler_name, pipe.scheduler)
    scheduler.set_timesteps(num_inference_steps)
    start = add_noise(scheduler, clean, noise, scheduler.timesteps[first])
    k, d = pipe.denoiser.config.num_latents, pipe.denoiser.config.latent_dim
    out = denoise_from(pipe, start.reshape(num_samples, -1, k, d), mask, num_inference_steps, first, pipe.sampler_name, generators,
                       conditions, guider)
    return decode_with_settings(pipe.autoencoder, EncodedText(out, mask), decoding or pipe.decoding, generators[0], int(mask.sum()))


# ---- infilling and editing ------------------------------------------------------------------------
def parse_blanks(pipe, text: str) -> list[Optional[str]]:
    """"S1 ___ S3 ___ S5" -> ["S1", None, "S3", None, "S5"]: each `___` one segment to generate, the text
    between blanks cut into the model's segments."""
    segmenter = _segmenter(pipe)
    parts: list[Optional[str]] = []
    for i, piece in enumerate(text.split(BLANK)):
        if i:
            parts.append(None)
        parts += segmenter.split(piece)
    return parts


def keep_segments(pipe, text: str, keep: Sequence[int], num_segments: Optional[int] = None) -> list[Optional[str]]:
    """A paragraph's segments with those not in `keep` blanked (editing); `num_segments` sets the length
    (blanks added at the end, or trailing segments dropped)."""
    segments = _segmenter(pipe).split(text)
    if not segments:
        raise LatentDLMError("the text to edit is empty")
    bad = [i for i in keep if not 0 <= i < len(segments)]
    if bad:
        raise LatentDLMError(f"keep {bad[0]} is out of range: the text has {len(segments)} segments (0..{len(segments) - 1})")
    total = num_segments if num_segments is not None else len(segments)
    return [segments[i] if i < len(segments) and i in keep else None for i in range(total)]


def infill(pipe, parts: Sequence[Optional[str]], num_samples: int = 1, num_inference_steps: int = 50, seed: Optional[int] = None,
           resample: int = 1, sampler: Optional[str] = None, conditions: Optional[dict] = None, guider=None,
           decoding: Optional[DecodingConfig] = None) -> InfillOutput:
    """Generate the None segments of `parts` with the known ones held (their latents re-noised to every
    step's level, RePaint style; `resample` > 1 repeats each step, needs a ddpm or ddim sampler). The
    known segments are returned verbatim."""
    if pipe.autoencoder.config.segmentation.mode == "none":
        raise LatentDLMError("infilling needs a segment-mode model (this one encodes each text as one latent)")
    known = [i for i, part in enumerate(parts) if part is not None]
    blanks = [i for i, part in enumerate(parts) if part is None]
    if not blanks:
        raise LatentDLMError(f"nothing to fill: mark the segments to generate with {BLANK} (or leave them out of keep)")
    if not known:
        raise LatentDLMError("no known segment: infilling needs text around the blanks (use `latentdlm generate` to write from nothing)")
    limit = pipe.denoiser.config.max_segments
    if len(parts) > limit:
        raise LatentDLMError(f"{len(parts)} segments, but the model makes at most {limit} per text")
    sampler = sampler or pipe.sampler_name
    if resample > 1 and sampler not in RESAMPLING_SAMPLERS:
        raise LatentDLMError(f"resampling repeats sampler steps, which needs a {' or '.join(RESAMPLING_SAMPLERS)} sampler "
                             f"(scheduler), not {sampler}")
    if resample < 1:
        raise LatentDLMError(f"resample must be at least 1, got {resample}")
    k, d = pipe.denoiser.config.num_latents, pipe.denoiser.config.latent_dim
    units = pipe.autoencoder.unit_latents([parts[i] for i in known])
    latents = torch.zeros(num_samples, len(parts), k, d)
    latents[:, known] = units.cpu()
    segment_mask = torch.ones(num_samples, len(parts), dtype=torch.bool)
    held_mask = torch.zeros(num_samples, len(parts), dtype=torch.bool)
    held_mask[:, known] = True
    values, latent_mask = flat(pipe, latents, segment_mask)
    generators = pipe.sample_generators(num_samples, seed)
    clean = sample_latents(pipe.denoiser, make_scheduler(sampler, pipe.scheduler), latent_mask, num_inference_steps, generators,
                           conditions, guider, [Held(values, held_mask.repeat_interleave(k, dim=1), resample)])
    segments = decode_with_settings(pipe.autoencoder, EncodedText(unflat(pipe, clean), segment_mask), decoding or pipe.decoding,
                                    generators[0], num_samples * len(blanks), joined=False, fixed=[list(parts)] * num_samples)
    return InfillOutput([" ".join(s for s in row if s) for row in segments], segments, blanks)


def _segmenter(pipe) -> SentenceSegmenter:
    """The model's segmentation without its cap (a text over the cap is an error, not merged)."""
    return SentenceSegmenter(SegmentationConfig(mode=pipe.autoencoder.config.segmentation.mode, max_segments=None))
