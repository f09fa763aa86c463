"""`LatentDiffusionTextPipeline`: autoencoder + latent DiT + scheduler (+ the condition encoder of a
text-conditioned model), saved and loaded as one folder.

    pipe = LatentDiffusionTextPipeline.from_pretrained("runs/tiny-diffusion/pipeline")
    out = pipe(num_samples=4, num_inference_steps=20, scheduler="dpm", seed=0)
    out.texts
    summaries = pipe(conditions=["a long document ..."], guidance_scale=2.0).texts  # text -> text models
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from tqdm.auto import tqdm

from latentdlm import __version__
from latentdlm.autoencoder.model import EncodedText, ParagraphAutoencoder
from latentdlm.diffusion.condition import ConditionEncoder
from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.sampling import sample_latents
from latentdlm.diffusion.schedulers import SCHEDULERS, make_scheduler, scheduler_name
from latentdlm.errors import LatentDLMError
from latentdlm.io import atomic_directory

INDEX_NAME = "model_index.json"
PARTS = ("autoencoder", "denoiser", "scheduler")


@dataclass
class LatentTextOutput(BaseOutput):
    texts: list[str]
    latents: Optional[torch.Tensor] = None  # (N, S, k, d) with `segment_mask` (N, S)
    segment_mask: Optional[torch.Tensor] = None


class LatentDiffusionTextPipeline(DiffusionPipeline):
    def __init__(self, autoencoder: ParagraphAutoencoder, denoiser: LatentDiT, scheduler,
                 condition_encoder: Optional[ConditionEncoder] = None):
        super().__init__()
        check_compatible(autoencoder, denoiser, condition_encoder)
        self.register_modules(autoencoder=autoencoder, denoiser=denoiser, scheduler=scheduler, condition_encoder=condition_encoder)

    @torch.no_grad()
    def __call__(
        self,
        num_samples: int = 1,
        num_inference_steps: int = 50,
        scheduler: Optional[str] = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
        class_labels: Optional[Sequence[str | int] | str | int] = None,
        conditions: Optional[Sequence[str] | str] = None,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        num_segments: Optional[int] = None,
        batch_size: int = 32,
        return_latents: bool = False,
        show_progress: bool = True,
    ) -> LatentTextOutput:
        """Sample `num_samples` texts. `scheduler` swaps the sampler by name (ddpm, ddim, dpm);
        `class_labels` is one label for all samples or one per sample (names or indices); `conditions`
        is one source text for all samples or one per sample (text-conditioned models; without them a
        conditional model samples from its null condition); `num_segments` fixes the number of sentence
        segments (segment-mode models; default: drawn from the training distribution)."""
        conditions = self._check_conditions(conditions, num_samples)
        labels = self._check_call(num_samples, num_inference_steps, batch_size, class_labels, conditions, guidance_scale, num_segments)
        sampler = make_scheduler(scheduler, self.scheduler) if scheduler else self.scheduler
        if generator is None:
            generator = torch.Generator(device=self.device).manual_seed(seed if seed is not None else torch.seed() % 2**63)
        k = self.denoiser.config.num_latents
        texts, all_latents, masks = [], [], []
        chunks = range(0, num_samples, batch_size)
        with tqdm(total=len(chunks) * num_inference_steps, desc="sampling", disable=not show_progress) as bar:
            def progress(steps):
                for t in steps:
                    yield t
                    bar.update(1)

            for start in chunks:
                size = min(batch_size, num_samples - start)
                counts = self._segment_counts(size, num_segments, generator)
                segment_mask = torch.arange(int(counts.max()), device=self.device)[None] < counts[:, None]
                condition_kwargs = {}
                if labels is not None:
                    condition_kwargs["class_labels"] = labels[start : start + size]
                if conditions is not None:
                    condition_kwargs.update(self.condition_encoder.encode(conditions[start : start + size], warn=False))
                latents = sample_latents(
                    self.denoiser, sampler, segment_mask.repeat_interleave(k, dim=1), num_inference_steps, generator,
                    condition_kwargs, guidance_scale, guidance_rescale, progress,
                )
                latents = self.denoiser.denormalize(latents).reshape(size, -1, k, self.denoiser.config.latent_dim)
                # every segment of the chunk in one decoder batch: one generate loop, not several
                texts += self.autoencoder.decode(EncodedText(latents, segment_mask), batch_size=int(counts.sum()))
                if return_latents:
                    all_latents.append(latents.cpu())
                    masks.append(segment_mask.cpu())
        if not return_latents:
            return LatentTextOutput(texts)
        width = max(m.shape[1] for m in masks)
        return LatentTextOutput(
            texts,
            torch.cat([torch.nn.functional.pad(x, (0, 0, 0, 0, 0, width - x.shape[1])) for x in all_latents]),
            torch.cat([torch.nn.functional.pad(m, (0, width - m.shape[1])) for m in masks]),
        )

    def _check_call(self, num_samples, steps, batch_size, class_labels, conditions, guidance_scale, num_segments) -> Optional[torch.Tensor]:
        for name, value in (("number of samples", num_samples), ("number of inference steps", steps), ("batch size", batch_size)):
            if value < 1:
                raise LatentDLMError(f"the {name} must be at least 1, got {value}")
        denoiser = self.denoiser
        if guidance_scale != 1.0 and not (denoiser.config.class_names or denoiser.config.condition_dim):
            raise LatentDLMError("guidance needs a conditional model; this one is unconditional (use guidance scale 1)")
        if guidance_scale != 1.0 and denoiser.config.condition_dropout == 0:
            raise LatentDLMError("guidance needs a trained null condition, but this model was trained without condition "
                                 "dropout (objective.condition_dropout=0): use guidance scale 1")
        if guidance_scale != 1.0 and class_labels is None and conditions is None:
            raise LatentDLMError(f"guidance needs a {'source text' if denoiser.config.condition_dim else 'class label'} to guide towards")
        if num_segments is not None and not 1 <= num_segments <= denoiser.config.max_segments:
            raise LatentDLMError(f"number of segments must be within 1..{denoiser.config.max_segments}, got {num_segments}")
        if class_labels is None:
            return None
        if isinstance(class_labels, (str, int)):
            class_labels = [class_labels] * num_samples
        if len(class_labels) != num_samples:
            raise LatentDLMError(f"{len(class_labels)} class labels for {num_samples} samples")
        return torch.tensor([denoiser.class_index(label) for label in class_labels], device=self.device)

    def _check_conditions(self, conditions: Optional[Sequence[str] | str], num_samples: int) -> Optional[list[str]]:
        if conditions is None:
            return None
        if self.condition_encoder is None:
            raise LatentDLMError("this model was trained without a source text condition; drop --condition")
        conditions = [conditions] * num_samples if isinstance(conditions, str) else list(conditions)
        if len(conditions) != num_samples:
            raise LatentDLMError(f"{len(conditions)} condition texts for {num_samples} samples")
        self.condition_encoder.tokenize(conditions)  # empty sources fail, long ones warn once, before sampling
        return conditions

    def _segment_counts(self, size: int, fixed: Optional[int], generator: torch.Generator) -> torch.Tensor:
        if fixed is not None:
            return torch.full((size,), fixed, device=self.device)
        freq = self.denoiser.segment_count_freq.to(self.device)
        return torch.multinomial(freq, size, replacement=True, generator=generator) + 1

    # ---- one folder --------------------------------------------------------------------------
    def save_pretrained(self, save_directory: str | Path, **_) -> None:
        """autoencoder/, denoiser/, scheduler/ (condition_encoder/) and model_index.json in one folder,
        written atomically."""
        with atomic_directory(save_directory) as tmp:
            self.autoencoder.save_pretrained(tmp / "autoencoder")
            self.denoiser.save_pretrained(tmp / "denoiser")
            self.scheduler.save_pretrained(tmp / "scheduler")
            index = {
                "_class_name": type(self).__name__, "latentdlm_version": __version__,
                "autoencoder": ["latentdlm", "ParagraphAutoencoder"], "denoiser": ["latentdlm", "LatentDiT"],
                "scheduler": ["diffusers", type(self.scheduler).__name__],
            }
            if self.condition_encoder is not None:
                self.condition_encoder.save_pretrained(tmp / "condition_encoder")
                index["condition_encoder"] = ["latentdlm", "ConditionEncoder"]
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, **_) -> "LatentDiffusionTextPipeline":
        path = Path(path)
        if not (path / INDEX_NAME).is_file():
            raise LatentDLMError(f"{path} is not a latentdlm pipeline folder (no {INDEX_NAME})")
        index = json.loads((path / INDEX_NAME).read_text())
        parts = PARTS + (("condition_encoder",) if "condition_encoder" in index else ())
        missing = [part for part in parts if not (path / part).is_dir()]
        if missing:
            raise LatentDLMError(f"the pipeline folder {path} misses its {', '.join(missing)} part(s)")
        try:
            denoiser = LatentDiT.from_pretrained(path / "denoiser").eval()
        except (OSError, ValueError, EnvironmentError) as exc:
            raise LatentDLMError(f"could not load the denoiser in {path / 'denoiser'}: {str(exc).splitlines()[0]}") from None
        scheduler_cls = {cls_.__name__: cls_ for cls_ in SCHEDULERS.values()}
        scheduler_config = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
        scheduler = scheduler_cls[scheduler_config["_class_name"]].from_pretrained(path / "scheduler")
        condition_encoder = ConditionEncoder.from_pretrained(path / "condition_encoder") if "condition_encoder" in index else None
        return cls(ParagraphAutoencoder.from_pretrained(path / "autoencoder"), denoiser, scheduler, condition_encoder)

    @property
    def sampler_name(self) -> str:
        return scheduler_name(self.scheduler)


def check_compatible(autoencoder: ParagraphAutoencoder, denoiser: LatentDiT, condition_encoder: Optional[ConditionEncoder] = None) -> None:
    """The denoiser must work in the autoencoder's latent space, on its condition encoder's states."""
    wanted = denoiser.config.condition_dim
    given = condition_encoder.hidden_size if condition_encoder is not None else None
    if wanted != given:
        raise LatentDLMError(f"the denoiser expects {f'{wanted}-d condition states' if wanted else 'no condition encoder'} "
                             f"but the pipeline has {f'a {given}-d condition encoder' if given else 'none'}")
    ae, dn = autoencoder.config, denoiser.config
    segments = 1 if ae.segmentation.mode == "none" else ae.segmentation.max_segments  # None: no cap
    if (ae.num_latents, ae.latent_dim) != (dn.num_latents, dn.latent_dim) or segments not in (None, dn.max_segments):
        raise LatentDLMError(
            f"the autoencoder's latents ({segments} segment(s) x {ae.num_latents} x {ae.latent_dim}) do not match "
            f"the denoiser's ({dn.max_segments} x {dn.num_latents} x {dn.latent_dim}): they were not trained together"
        )
