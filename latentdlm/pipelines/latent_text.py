"""`LatentDiffusionTextPipeline`: autoencoder + latent DiT + scheduler (+ the condition encoder of a
text-conditioned model), saved and loaded as one folder.

    pipe = LatentDiffusionTextPipeline.from_pretrained("runs/tiny-diffusion/pipeline")
    out = pipe(num_samples=4, num_inference_steps=20, scheduler="dpm", seed=0)
    out.texts
    summaries = pipe(conditions=["a long document ..."], guidance_scale=2.0).texts  # text -> text models

Over 300 lines because it is the one place that checks a call's arguments against what the loaded
model can do (before any sampling) and the one reader of the pipeline folder; the sampling loop, the
guiders and the latent-space experiments it orchestrates live in diffusion/sampling.py and latent_edits.py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from safetensors import safe_open
from tqdm.auto import tqdm

from latentdlm import __version__
from latentdlm.autoencoder.decoding import DecodingConfig, decode_with_settings
from latentdlm.autoencoder.model import EncodedText, ParagraphAutoencoder
from latentdlm.diffusion.condition import ConditionEncoder
from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.classifier import LatentClassifier, check_classifier, classifier_labels
from latentdlm.diffusion.sampling import ClassifierGuidance, make_guider, sample_latents
from latentdlm.diffusion.schedulers import SCHEDULERS, make_scheduler, scheduler_name
from latentdlm.errors import LatentDLMError
from latentdlm.hub import HubMixin, load_config_model
from latentdlm.io import INDEX_NAME, SCHEDULER_CONFIG_NAME, read_json
from latentdlm.memory import release_freed_memory
from latentdlm.model_card import pipeline_card
from latentdlm.pipelines import latent_edits
from latentdlm.pipelines.latent_edits import InfillOutput, InterpolationOutput

PARTS = ("autoencoder", "denoiser", "scheduler")
@dataclass
class LatentTextOutput(BaseOutput):
    texts: list[str]
    latents: Optional[torch.Tensor] = None  # (N, S, k, d) with `segment_mask` (N, S)
    segment_mask: Optional[torch.Tensor] = None


class LatentDiffusionTextPipeline(HubMixin, DiffusionPipeline):
    def __init__(self, autoencoder: ParagraphAutoencoder, denoiser: LatentDiT, scheduler,
                 condition_encoder: Optional[ConditionEncoder] = None, decoding: Optional[DecodingConfig | dict] = None):
        super().__init__()
        check_compatible(autoencoder, denoiser, condition_encoder)
        self.register_modules(autoencoder=autoencoder, denoiser=denoiser, scheduler=scheduler, condition_encoder=condition_encoder)
        # the decoder's default settings: saved in model_index.json; a call's `decoding` overrides them
        self.decoding = DecodingConfig().merged(decoding)
        self.training_record: Optional[dict] = None  # data, length and scores of the DiT's training (the model card's)

    @torch.no_grad()
    def __call__(
        self,
        num_samples: int = 1,
        num_inference_steps: int = 20,
        scheduler: Optional[str] = None,
        seed: Optional[int] = None,
        generator: Optional[torch.Generator | list[torch.Generator]] = None,
        class_labels: Optional[Sequence[str | int] | str | int] = None,
        conditions: Optional[Sequence[str] | str] = None,
        guidance_scale: float = 1.0,
        guidance_rescale: float = 0.0,
        guidance_method: str = "cfg",  # the guidance of guidance_scale: cfg (classifier-free) or apg (adaptive projected)
        num_segments: Optional[int] = None,
        batch_size: int = 32,
        return_latents: bool = False,
        show_progress: bool = True,
        decoding: Optional[DecodingConfig | dict] = None,
        classifier: Optional[LatentClassifier] = None,
        classifier_scale: float = 1.0,
        output_type: str = "text",
    ) -> LatentTextOutput:
        """Sample `num_samples` texts. `scheduler` swaps the sampler by name (ddpm, ddim, dpm);
        `class_labels` is one label for all samples or one per sample (names or indices); `conditions`
        is one source text for all samples or one per sample (text-conditioned models; without them a
        conditional model samples from its null condition); `num_segments` fixes the number of sentence
        segments (segment-mode models; default: drawn from the training distribution). `decoding`: the
        decoder's settings (a DecodingConfig, or a dict of some of its fields over `self.decoding`, the
        pipeline's saved defaults; top-p sampling is repeatable through `seed`/`generator`; `generator` may be a list, one
        per sample, as in diffusers). With a `classifier` (a
        `LatentClassifier` trained on this pipeline's latents) the `class_labels` are its classes and its
        gradient steers sampling, scaled by `classifier_scale` (classifier guidance). `output_type`
        "latent" returns the sampled latents undecoded (no texts), as diffusers pipelines do."""
        if output_type not in ("text", "latent"):
            raise LatentDLMError(f"output_type must be 'text' or 'latent', got {output_type!r}")
        return_latents = return_latents or output_type == "latent"
        guider = make_guider(guidance_method, guidance_scale, guidance_rescale)  # an unknown method's name fails here
        steering = None
        if classifier is not None:
            check_classifier(classifier, self.denoiser)
            steering, class_labels = classifier_labels(classifier, class_labels, num_samples), None
        conditions = self._check_conditions(conditions, num_samples)
        decoding = self.decoding.merged(decoding)
        labels = self._check_call(num_samples, num_inference_steps, batch_size, class_labels, conditions, guidance_scale, num_segments,
                                  guidance_rescale=guidance_rescale)
        # the pipeline's sampler, or another by name, always with this library's settings (trailing spacing)
        sampler = make_scheduler(scheduler or self.sampler_name, self.scheduler)
        generators = self.sample_generators(num_samples, seed, generator)
        k = self.denoiser.config.num_latents
        chunks = range(0, num_samples, batch_size)
        # conditions and segment counts first: every chunk samples at the width of the longest text of
        # the whole request, so a sample's random draws never depend on the chunk it falls in
        chunk_conditions, counts = [], []
        for start in chunks:
            kwargs = {}
            if labels is not None:
                kwargs["class_labels"] = labels[start : start + batch_size]
            if conditions is not None:
                kwargs.update(self.condition_encoder.encode(conditions[start : start + batch_size], warn=False))
            chunk_conditions.append(kwargs)
            counts.append(self._segment_counts(generators[start : start + batch_size], num_segments, kwargs))
        counts = torch.cat(counts)
        width = int(counts.max())
        texts, all_latents = [], []
        with tqdm(total=len(chunks) * num_inference_steps, desc="sampling", disable=not show_progress) as bar:
            def progress(steps):
                for t in steps:
                    yield t
                    bar.update(1)

            for start, condition_kwargs in zip(chunks, chunk_conditions):
                size = min(batch_size, num_samples - start)
                chunk_counts = counts[start : start + size]
                segment_mask = torch.arange(width, device=self.device)[None] < chunk_counts[:, None]
                hooks = [] if steering is None else [ClassifierGuidance(classifier, steering[start : start + size], classifier_scale)]
                latents = sample_latents(self.denoiser, sampler, segment_mask.repeat_interleave(k, dim=1), num_inference_steps,
                                         generators[start : start + size], condition_kwargs, guider, hooks, progress=progress)
                latents = self.autoencoder.latent_space.denormalize(latents).reshape(size, -1, k, self.denoiser.config.latent_dim)
                # every segment of the chunk in one decoder batch: one generate loop, not several
                if output_type == "text":  # a source-aware decoder (source_context) reads the sources the denoiser read
                    sources = conditions[start : start + size] if self.autoencoder.config.source_context else None
                    texts += decode_with_settings(self.autoencoder, EncodedText(latents, segment_mask), decoding, generators[start],
                                                  int(chunk_counts.sum()), sources=sources)
                if return_latents:
                    all_latents.append(latents.cpu())
                release_freed_memory()  # a long run's freed batches back to the system, not kept by malloc
        if not return_latents:
            return LatentTextOutput(texts)
        return LatentTextOutput(texts, torch.cat(all_latents), torch.arange(width)[None] < counts.cpu()[:, None])

    def _check_call(self, num_samples, steps, batch_size, class_labels, conditions, guidance_scale, num_segments,
                    guidance_rescale: float = 0.0) -> Optional[torch.Tensor]:
        for name, value in (("number of samples", num_samples), ("number of inference steps", steps), ("batch size", batch_size)):
            if value < 1:
                raise LatentDLMError(f"the {name} must be at least 1, got {value}")
        trained_steps = self.scheduler.config.num_train_timesteps  # every sampler keeps the training schedule
        if steps > trained_steps:
            raise LatentDLMError(f"the number of inference steps must be at most {trained_steps} (the model's training "
                                 f"timesteps), got {steps}")
        denoiser = self.denoiser
        conditional = bool(denoiser.config.class_names or denoiser.config.condition_dim)
        if not 0.0 <= guidance_rescale <= 1.0:
            raise LatentDLMError(f"guidance rescale must be within 0..1, got {guidance_rescale}")
        if guidance_rescale and not conditional:
            raise LatentDLMError("guidance rescale needs a conditional model; this one is unconditional (use guidance rescale 0)")
        if guidance_rescale and guidance_scale == 1.0:
            raise LatentDLMError("guidance rescale only applies with guidance: set a guidance scale other than 1, "
                                 "or leave guidance rescale at 0")
        if guidance_scale != 1.0 and not conditional:
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
            raise LatentDLMError("this model was trained without a source text condition: it takes no conditions")
        conditions = [conditions] * num_samples if isinstance(conditions, str) else list(conditions)
        if len(conditions) != num_samples:
            raise LatentDLMError(f"{len(conditions)} condition texts for {num_samples} samples")
        self.condition_encoder.tokenize(conditions)  # empty sources fail, long ones warn once, before sampling
        return conditions

    def sample_generators(self, num_samples: int, seed: Optional[int] = None,
                          generator: Optional[torch.Generator | list[torch.Generator]] = None) -> list[torch.Generator]:
        """One generator per sample, seeded from `seed` (or drawn from `generator`, or `generator` itself when it is
        a list of one per sample): sample i of a seed is the same whatever the batch size."""
        if isinstance(generator, (list, tuple)):
            if len(generator) != num_samples:
                raise LatentDLMError(f"{len(generator)} generators for {num_samples} samples: give one per sample, or one in all")
            return list(generator)
        if generator is None:
            generator = torch.Generator().manual_seed(seed if seed is not None else torch.seed() % 2**63)
        seeds = torch.randint(0, 2**62, (num_samples,), generator=generator, device=generator.device)
        return [torch.Generator(device=self.device).manual_seed(int(s)) for s in seeds]

    def _segment_counts(self, generators: list[torch.Generator], fixed: Optional[int], conditions: dict) -> torch.Tensor:
        """Segments per sample: `fixed`, else drawn from the length distribution given the sample's class
        or source text (the denoiser's per-class frequencies or length head)."""
        if fixed is not None:
            return torch.full((len(generators),), fixed, device=self.device)
        probs = self.denoiser.segment_count_probs(
            conditions.get("class_labels"), conditions.get("condition_states"), conditions.get("condition_mask"), len(generators),
        ).to(self.device)
        return torch.stack([torch.multinomial(p, 1, generator=g)[0] for p, g in zip(probs, generators)]) + 1

    # ---- latent-space experiments (latentdlm.pipelines.latent_edits) -------------------------
    def encode(self, texts: Sequence[str] | str) -> EncodedText:
        """Texts -> their autoencoder latents (B, S, k, d) (posterior means) with a (B, S) segment mask."""
        return self.autoencoder.encode([texts] if isinstance(texts, str) else list(texts))

    def interpolate(self, source: str, target: str, num_points: int = 5, method: str = "slerp",
                    through_noise: Optional[float] = None, num_inference_steps: int = 20,
                    decoding: Optional[DecodingConfig | dict] = None) -> InterpolationOutput:
        """Texts decoded along the path from `source`'s latents to `target`'s (`method` slerp or lerp);
        `through_noise` (0..1] walks between their DDIM inversions at that noise level and denoises each
        point back. `decoding`: the decoder's settings over the pipeline's (as in `__call__`)."""
        self._check_steps(num_inference_steps)
        return latent_edits.interpolate(self, source, target, num_points, method, through_noise, num_inference_steps,
                                        self.decoding.merged(decoding))

    def vary(self, text: str, strength: float = 0.3, num_samples: int = 4, num_inference_steps: int = 20, seed: Optional[int] = None,
             class_labels=None, conditions=None, guidance_scale: float = 1.0, guidance_method: str = "cfg",
             decoding: Optional[DecodingConfig | dict] = None) -> list[str]:
        """Variations of `text` (SDEdit): noised to `strength` (0..1] of the schedule and denoised back,
        optionally towards a class or source text with guidance."""
        self._check_steps(num_inference_steps)
        kwargs = self._condition_kwargs(num_samples, class_labels, conditions, guidance_scale)
        guider = make_guider(guidance_method, guidance_scale)
        return latent_edits.vary(self, text, strength, num_samples, num_inference_steps, seed, kwargs, guider,
                                 self.decoding.merged(decoding))

    def infill(self, text: str | Sequence[Optional[str]], keep: Optional[Sequence[int]] = None, num_segments: Optional[int] = None,
               num_samples: int = 1, num_inference_steps: int = 50, seed: Optional[int] = None, resample: int = 1,
               scheduler: Optional[str] = None, class_labels=None, conditions=None, guidance_scale: float = 1.0,
               guidance_method: str = "cfg", decoding: Optional[DecodingConfig | dict] = None) -> InfillOutput:
        """Fill blanks: `text` with `___` for each segment to write ("S1 ___ S3"), or a list of segments with
        None for the blanks, or (editing) a paragraph with `keep` = the indices of the segments to keep and
        `num_segments` its new length. The known segments come back verbatim."""
        self._check_steps(num_inference_steps)
        if num_samples < 1:
            raise LatentDLMError(f"the number of samples must be at least 1, got {num_samples}")
        if isinstance(text, str):
            if not text.strip():
                raise LatentDLMError("the text to fill is empty")
            parts = latent_edits.keep_segments(self, text, keep, num_segments) if keep is not None else latent_edits.parse_blanks(self, text)
        else:
            parts = list(text)
        kwargs = self._condition_kwargs(num_samples, class_labels, conditions, guidance_scale)
        guider = make_guider(guidance_method, guidance_scale)
        return latent_edits.infill(self, parts, num_samples, num_inference_steps, seed, resample, scheduler, kwargs, guider,
                                   self.decoding.merged(decoding))

    def _check_steps(self, steps: int) -> None:
        self._check_call(1, steps, 1, None, None, 1.0, None)

    def _condition_kwargs(self, count: int, class_labels, conditions, guidance_scale: float) -> dict:
        """The denoiser's condition kwargs for `count` samples of one class / source text (checked)."""
        conditions = self._check_conditions(conditions, count)
        labels = self._check_call(count, 1, 1, class_labels, conditions, guidance_scale, None)
        kwargs = {} if labels is None else {"class_labels": labels}
        if conditions is not None:
            kwargs.update(self.condition_encoder.encode(conditions, warn=False))
        return kwargs

    # ---- one folder: save_pretrained / from_pretrained / push_to_hub come from latentdlm.hub.HubMixin --------
    folder_kind, folder_files = "pipeline", (INDEX_NAME,)

    def _save_folder(self, folder: Path) -> None:
        """autoencoder/, denoiser/, scheduler/ (condition_encoder/) and model_index.json."""
        self.autoencoder.save_pretrained(folder / "autoencoder")
        self.denoiser.save_pretrained(folder / "denoiser")
        self.scheduler.save_pretrained(folder / "scheduler")
        index = {
            "_class_name": type(self).__name__, "latentdlm_version": __version__,
            "autoencoder": ["latentdlm", "ParagraphAutoencoder"], "denoiser": ["latentdlm", "LatentDiT"],
            "scheduler": ["diffusers", type(self.scheduler).__name__],
            "decoding": self.decoding.to_dict(), "training": self.training_record,
        }
        if self.condition_encoder is not None:
            self.condition_encoder.save_pretrained(folder / "condition_encoder")
            index["condition_encoder"] = ["latentdlm", "ConditionEncoder"]
        (folder / INDEX_NAME).write_text(json.dumps(index, indent=2))

    def model_card(self):
        return pipeline_card(self)

    @classmethod
    def _load_folder(cls, path: Path) -> "LatentDiffusionTextPipeline":
        index = read_json(path / INDEX_NAME, {"decoding": Optional[dict], "training": Optional[dict]})
        parts = PARTS + (("condition_encoder",) if "condition_encoder" in index else ())
        missing = [part for part in parts if not (path / part).is_dir()]
        if missing:
            raise LatentDLMError(f"the pipeline folder {path} misses its {', '.join(missing)} part(s)")
        denoiser = load_config_model(LatentDiT, path / "denoiser", "denoiser")
        scheduler_cls = {cls_.__name__: cls_ for cls_ in SCHEDULERS.values()}
        scheduler_config = read_json(path / "scheduler" / SCHEDULER_CONFIG_NAME)
        if scheduler_config.get("_class_name") not in scheduler_cls:
            raise LatentDLMError(f"{path / 'scheduler'}: unknown scheduler {scheduler_config.get('_class_name')!r} "
                                 f"(known: {', '.join(sorted(scheduler_cls))})")
        scheduler = scheduler_cls[scheduler_config["_class_name"]].from_config(scheduler_config)
        condition_encoder = ConditionEncoder.from_pretrained(path / "condition_encoder") if "condition_encoder" in index else None
        try:
            decoding = DecodingConfig.from_dict(index.get("decoding"))  # older folders have none: the defaults
        except LatentDLMError as exc:
            raise LatentDLMError(f"{path / INDEX_NAME}: {exc}") from None
        autoencoder = ParagraphAutoencoder.from_pretrained(path / "autoencoder").merge_lora()  # loaded for inference
        _legacy_latent_statistics(autoencoder, path / "denoiser")
        pipe = cls(autoencoder, denoiser, scheduler, condition_encoder, decoding)
        pipe.training_record = index.get("training")
        return pipe

    @property
    def sampler_name(self) -> str:
        return scheduler_name(self.scheduler)


def _legacy_latent_statistics(autoencoder: ParagraphAutoencoder, denoiser_folder: Path) -> None:
    """Folders saved before the latent space's statistics moved to the autoencoder keep them in the denoiser's weights."""
    with safe_open(str(denoiser_folder / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        if "latent_mean" in weights.keys():
            autoencoder.latent_space.mean.copy_(weights.get_tensor("latent_mean"))
            autoencoder.latent_space.std.copy_(weights.get_tensor("latent_std"))


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
