"""`latentdlm app`: a Gradio page on a trained pipeline (pip install -e '.[app]').

Tabs: generate, interpolate (two texts, a slider along the path with the decoded text at each point and
the path on a 2-D PCA map of the latent space), vary, infill (segment-mode models) and summarize
(text-conditioned models). Each tab shows only what the loaded model supports; a bad input shows as a
message in the page, never as a stack trace; sampling shows its progress bar. Over 300 lines because
the page is one Blocks layout with its callbacks; what they call is the pipeline's API.
"""

from __future__ import annotations

import inspect
import itertools
import json
import os
import socket
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from latentdlm.errors import LatentDLMError
from latentdlm.model_card import pipeline_summary

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from an offline machine

MAX_STEPS = 200
BACKGROUND_TEXTS = 64  # bundled passages encoded once as the map's background
POSITION = "position on the path (0 = text A)"
DECODING_KEYS = ["decode_beams", "no_repeat_ngram_size", "repetition_penalty", "top_p", "temperature"]  # the decoder controls' order


@dataclass
class Capabilities:
    """What the loaded model can do: each tab and control appears only when it applies."""

    class_names: list[str]
    text_conditioned: bool
    guidance: bool  # trained with a null condition (condition dropout): guidance scales above 1 work
    segments: bool  # segment mode: a number of segments, and infilling
    max_segments: int
    max_steps: int
    source_name: str = "document"  # text-conditioned models: what they read and what they write, as their training
    target_name: str = "summary"  # data's columns name them ("title" -> "story"), for the Summarize tab's labels

    @classmethod
    def of(cls, pipe) -> "Capabilities":
        dn = pipe.denoiser.config
        conditional = bool(dn.class_names or dn.condition_dim)
        data = ((pipe.training_record or {}).get("config") or {}).get("data") or {}
        return cls(list(dn.class_names or []), pipe.condition_encoder is not None, conditional and dn.condition_dropout > 0,
                   pipe.autoencoder.config.segmentation.mode != "none", dn.max_segments,
                   min(MAX_STEPS, pipe.scheduler.config.num_train_timesteps),
                   column_name(data.get("condition_column"), "document"), column_name(data.get("column"), "text"))


GENERIC_COLUMNS = {"text", "src", "source", "trg", "tgt", "target", "input", "output"}


def column_name(column: Optional[str], fallback: str) -> str:
    """A data column's name as a label ("synopsis", "title"), or `fallback` where the name says nothing ("trg")."""
    name = str(column or "").strip().lower().replace("_", " ")
    return fallback if not name or name in GENERIC_COLUMNS else name


def check_port(host: str, port: int) -> None:
    """A clear message now, rather than Gradio's after the model has loaded."""
    if not 1 <= port <= 65535:
        raise LatentDLMError(f"--port must be within 1..65535, got {port}")
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            raise LatentDLMError(f"port {port} on {host} is in use: choose another with --port") from None


def numbered(texts: list[str]) -> str:
    return "\n\n".join(f"{i + 1}. {text}" for i, text in enumerate(texts))


def _gradio():
    try:
        import gradio
    except ImportError:
        raise LatentDLMError("the app needs Gradio: pip install -e '.[app]'") from None
    return gradio


class Handlers:
    """The page's callbacks: each checks its input and turns any failure into a message in the page."""

    def __init__(self, pipe, caps: Capabilities):
        self.pipe, self.caps = pipe, caps
        self._background = None
        self._maps = Path(tempfile.mkdtemp(prefix="latentdlm-app-"))

    def run(self, fn, *args, **kwargs):
        import gradio as gr

        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except LatentDLMError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # never a stack trace in the page: the type and first line
            first = (str(exc).strip().splitlines() or [""])[0]
            raise gr.Error(f"{type(exc).__name__}: {first}") from None

    @staticmethod
    def _text(text: Optional[str], what: str) -> str:
        if not text or not text.strip():
            raise LatentDLMError(f"{what} is empty: type some text first")
        return text.strip()

    def _conditions(self, class_label, condition, guidance, guidance_method="cfg") -> dict:
        kwargs = {}
        if self.caps.class_names and class_label:
            kwargs["class_labels"] = class_label
        if self.caps.text_conditioned and condition and condition.strip():
            kwargs["conditions"] = condition.strip()
        if self.caps.guidance:
            kwargs["guidance_scale"], kwargs["guidance_method"] = float(guidance), guidance_method
        return kwargs

    @staticmethod
    def _decoding(settings: dict):
        """The page's decoder controls as a DecodingConfig (top-p 0: no sampling); None (the pipeline's
        saved settings) without them."""
        from latentdlm.autoencoder.decoding import DecodingConfig

        if not settings:
            return None
        return DecodingConfig(int(settings["decode_beams"]), int(settings["no_repeat_ngram_size"]),
                              float(settings["repetition_penalty"]), float(settings["top_p"]) or None, float(settings["temperature"]))

    def generate(self, num_samples, num_segments, steps, sampler, seed, class_label=None, condition=None, guidance=1.0,
                 guidance_method="cfg", **decoding) -> str:
        request = dict(num_samples=num_samples, num_segments=num_segments, steps=steps, sampler=sampler, seed=seed,
                       class_label=class_label, condition=condition, guidance=guidance, guidance_method=guidance_method, **decoding)
        return self.generate_together([request])[0]

    def generate_together(self, requests: list[dict]) -> list[str]:
        """Generate requests (`generate`'s arguments) that share every setting but their sample count, seed, class
        and source text, as one sampler call: each request's samples drawn with its own seed's generators."""
        first, counts = requests[0], [int(r["num_samples"]) for r in requests]
        generators = [g for r, n in zip(requests, counts) for g in self.pipe.sample_generators(n, int(r["seed"]))]
        kwargs = {}
        for r, n in zip(requests, counts):
            for key, value in self._conditions(r["class_label"], r["condition"], r["guidance"], r["guidance_method"]).items():
                if key in ("class_labels", "conditions"):  # one per sample
                    kwargs.setdefault(key, []).extend([value] * n)
                else:
                    kwargs[key] = value
        segments = int(first["num_segments"]) if self.caps.segments and first["num_segments"] else None
        texts = self.pipe(num_samples=sum(counts), num_inference_steps=int(first["steps"]), scheduler=first["sampler"],
                          generator=generators, num_segments=segments,
                          decoding=self._decoding({k: first[k] for k in DECODING_KEYS if k in first}), **kwargs).texts
        starts = [0, *itertools.accumulate(counts)]
        return [numbered(texts[a:b]) for a, b in zip(starts, starts[1:])]

    def generate_batch(self, requests: list[dict]) -> list[str]:
        """Gradio's batch of waiting generate requests (`--max-batch`): grouped by their shared settings, each group one
        sampler call (`generate_together`). A group that fails is run request by request, so one bad request does not
        fail the others; its answer is its error message (every request failing: one error for all)."""
        groups = defaultdict(list)
        for i, r in enumerate(requests):
            shared = {k: v for k, v in r.items() if k not in ("num_samples", "seed", "class_label", "condition")}
            groups[json.dumps({**shared, "class": bool(r["class_label"]), "condition": bool((r["condition"] or "").strip())},
                              sort_keys=True, default=str)].append(i)
        answers, errors = [None] * len(requests), []
        for members in groups.values():
            try:
                for i, text in zip(members, self.run(self.generate_together, [requests[i] for i in members])):
                    answers[i] = text
            except Exception:
                for i in members:
                    try:
                        answers[i] = self.run(self.generate_together, [requests[i]])[0]
                    except Exception as exc:
                        errors.append(exc)
                        answers[i] = f"error: {getattr(exc, 'message', exc)}"
        if len(errors) == len(requests):
            raise errors[0]
        return answers

    def interpolate(self, source, target, num_points, method):
        import gradio as gr

        source, target = self._text(source, "Text A"), self._text(target, "Text B")
        out = self.pipe.interpolate(source, target, num_points=int(num_points), method=method)
        path = {"texts": out.texts, "positions": out.positions, "vectors": self._vectors(out.latents, out.segment_mask)}
        listing = "\n".join(f"t={t:.2f}  {' '.join(text.split())}" for t, text in zip(out.positions, out.texts))  # a line each
        slider = gr.Slider(0, len(out.texts) - 1, value=0, step=1, label=POSITION)  # back to text A, over this path
        return listing, *self.show_point(0, path), path, slider

    def show_point(self, index, path):
        if not path:
            raise LatentDLMError("interpolate two texts first")
        index = min(max(int(index), 0), len(path["texts"]) - 1)
        return f"t={path['positions'][index]:.2f}: {path['texts'][index]}", self._map(path, index)

    def vary(self, text, strength, num_samples, steps, seed, **decoding) -> str:
        texts = self.pipe.vary(self._text(text, "The text"), strength=float(strength), num_samples=int(num_samples),
                               num_inference_steps=int(steps), seed=int(seed), decoding=self._decoding(decoding))
        return numbered(texts)

    def infill(self, text, steps, seed, class_label=None, condition=None, guidance=1.0, guidance_method="cfg", **decoding) -> str:
        out = self.pipe.infill(self._text(text, "The text"), num_inference_steps=int(steps), seed=int(seed),
                               decoding=self._decoding(decoding), **self._conditions(class_label, condition, guidance, guidance_method))
        return out.texts[0]

    def summarize(self, document, guidance, guidance_method, num_candidates, steps, seed, **decoding) -> str:
        from latentdlm.summarize import summarize

        return summarize(self.pipe, [self._text(document, "The document")], num_candidates=int(num_candidates),
                         num_inference_steps=int(steps), guidance_scale=float(guidance) if self.caps.guidance else 1.0,
                         seed=int(seed), guidance_method=guidance_method, decoding=self._decoding(decoding))[0]

    # ---- the latent map ----------------------------------------------------------------------
    def _vectors(self, latents, segment_mask):
        from latentdlm.evaluation.plots import paragraph_vectors

        return paragraph_vectors(latents.float().cpu(), segment_mask.cpu())

    def _map(self, path: dict, index: int) -> str:
        from latentdlm.evaluation.plots import plot_latent_map

        if self._background is None:  # the bundled public-domain passages, encoded once, as landmarks
            from latentdlm.data.sources import load_texts

            encoded = self.pipe.encode(load_texts("bundled", limit=BACKGROUND_TEXTS))
            self._background = self._vectors(encoded.latents, encoded.segment_mask)
        png = self._maps / f"map-{os.getpid()}-{id(path)}-{index}.png"
        labels = [f"{t:.2f}" for t in path["positions"]]
        return str(plot_latent_map(png, self._background, ["bundled passages"] * len(self._background), path["vectors"],
                                   labels, title="latent space (PCA): the interpolation path", highlight=index))


def build_app(pipe, title: str = "latentdlm", max_batch: int = 1):
    """The page's Blocks for a loaded pipeline (not launched); with `max_batch` > 1 up to that many waiting generate
    requests run together (`Handlers.generate_batch`)."""
    gr = _gradio()
    from latentdlm.diffusion.sampling import GUIDANCE_METHODS
    from latentdlm.diffusion.schedulers import SCHEDULERS

    caps = Capabilities.of(pipe)
    h = Handlers(pipe, caps)
    samplers = list(SCHEDULERS)

    def guidance_method(visible: bool = True):
        return gr.Dropdown(list(GUIDANCE_METHODS), value="cfg", label="guidance method (cfg: classifier-free, apg: adaptive projected)",
                           visible=visible)

    def condition_inputs():
        """The class / source text / guidance controls this model has (a list of components)."""
        shown = []
        if caps.class_names:
            shown.append(gr.Dropdown(caps.class_names, value=caps.class_names[0], label="class"))
        if caps.text_conditioned:
            shown.append(gr.Textbox(label="source text (condition)", lines=3))
        if caps.guidance:
            shown.append(gr.Slider(1.0, 8.0, value=1.0, step=0.5, label="guidance scale (1 = none)"))
            shown.append(guidance_method())
        return shown

    def decoding_inputs():
        """The decoder's settings (in DECODING_KEYS order), starting at the pipeline's saved ones."""
        d = pipe.decoding
        with gr.Accordion("decoding", open=False):
            return [gr.Slider(1, 8, value=d.decode_beams, step=1, label="beams (1: greedy)"),
                    gr.Slider(0, 6, value=d.no_repeat_ngram_size, step=1, label="no-repeat n-gram size (0: off)"),
                    gr.Slider(0.5, 2.0, value=d.repetition_penalty, step=0.05, label="repetition penalty (1: off)"),
                    gr.Slider(0.0, 1.0, value=d.top_p or 0.0, step=0.05, label="top-p (0: no sampling)"),
                    gr.Slider(0.1, 2.0, value=d.temperature, step=0.05, label="temperature (with top-p)")]

    condition_keys = (["class_label"] if caps.class_names else []) + (["condition"] if caps.text_conditioned else []) + \
        (["guidance", "guidance_method"] if caps.guidance else [])  # the handlers' names for condition_inputs(), in order

    def event(fn, fixed: int, conditions: list[str] = ()):
        """A Gradio callback for `fn`: `fixed` positional inputs, then the named condition inputs. The
        signature Gradio reads ends with a Progress parameter, so the sampler's tqdm bar shows in the page."""
        def handler(*values):
            *values, _progress = values
            return h.run(fn, *values[:fixed], **dict(zip(conditions, values[fixed:])))

        names = [f"input_{i}" for i in range(fixed)] + list(conditions) + ["progress"]
        defaults = [inspect.Parameter.empty] * (len(names) - 1) + [gr.Progress(track_tqdm=True)]
        handler.__signature__ = inspect.Signature(
            [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=d) for n, d in zip(names, defaults)])
        return handler

    with gr.Blocks(title=title) as demo:
        gr.Markdown(f"# {title}\n{pipeline_summary(pipe)}")
        with gr.Tab("Generate"):
            with gr.Row():
                num_samples = gr.Slider(1, 8, value=2, step=1, label="number of samples")
                num_segments = gr.Slider(0, caps.max_segments, value=0, step=1, label="segments (0: drawn)", visible=caps.segments)
                steps = gr.Slider(1, caps.max_steps, value=min(20, caps.max_steps), step=1, label="steps")
            with gr.Row():
                sampler = gr.Dropdown(samplers, value=pipe.sampler_name, label="sampler")
                seed = gr.Number(0, precision=0, label="seed")
            extra = condition_inputs() + decoding_inputs()
            button = gr.Button("Generate", variant="primary")
            output = gr.Textbox(label="samples", lines=8)
            inputs = [num_samples, num_segments, steps, sampler, seed, *extra]
            if max_batch > 1:  # Gradio hands the function one list per input, the waiting requests' values
                names = ["num_samples", "num_segments", "steps", "sampler", "seed", *condition_keys, *DECODING_KEYS]
                defaults = dict(class_label=None, condition=None, guidance=1.0, guidance_method="cfg")
                batched = lambda *columns: [h.generate_batch([{**defaults, **dict(zip(names, values))} for values in zip(*columns)])]  # noqa: E731
                button.click(batched, inputs, output, api_name="generate", batch=True, max_batch_size=max_batch)
            else:
                button.click(event(h.generate, 5, condition_keys + DECODING_KEYS), inputs, output, api_name="generate")
        with gr.Tab("Interpolate"):
            with gr.Row():
                text_a = gr.Textbox(label="text A", lines=3)
                text_b = gr.Textbox(label="text B", lines=3)
            with gr.Row():
                points = gr.Slider(3, 11, value=7, step=1, label="points on the path")
                method = gr.Radio(["slerp", "lerp"], value="slerp", label="path")
            button = gr.Button("Interpolate", variant="primary")
            path = gr.State(None)
            position = gr.Slider(0, 6, value=0, step=1, label=POSITION)
            point_text = gr.Textbox(label="decoded text at this point", lines=3)
            with gr.Row():
                listing = gr.Textbox(label="the whole path", lines=11)
                latent_map = gr.Image(label="the path on the latent map", type="filepath")
            button.click(event(h.interpolate, 4), [text_a, text_b, points, method],
                         [listing, point_text, latent_map, path, position], api_name="interpolate")
            position.change(lambda i, p: h.run(h.show_point, i, p), [position, path], [point_text, latent_map], api_name="show_point")
        with gr.Tab("Vary"):
            text = gr.Textbox(label="text", lines=3)
            with gr.Row():
                strength = gr.Slider(0.05, 1.0, value=0.3, step=0.05, label="strength (noise level: 0 keeps the text, 1 forgets it)")
                count = gr.Slider(1, 8, value=3, step=1, label="variations")
                vary_steps = gr.Slider(1, caps.max_steps, value=min(20, caps.max_steps), step=1, label="steps")
                vary_seed = gr.Number(0, precision=0, label="seed")
            extra = decoding_inputs()
            button = gr.Button("Vary", variant="primary")
            output = gr.Textbox(label="variations", lines=8)
            button.click(event(h.vary, 5, DECODING_KEYS), [text, strength, count, vary_steps, vary_seed, *extra], output, api_name="vary")
        if caps.segments:
            with gr.Tab("Infill"):
                text = gr.Textbox(label="text with ___ where a sentence should be written", lines=4,
                                  placeholder="The fox saw the grapes. ___ He walked away.")
                with gr.Row():
                    fill_steps = gr.Slider(1, caps.max_steps, value=min(50, caps.max_steps), step=1, label="steps")
                    fill_seed = gr.Number(0, precision=0, label="seed")
                extra = condition_inputs() + decoding_inputs()
                button = gr.Button("Fill the blanks", variant="primary")
                output = gr.Textbox(label="filled text", lines=5)
                button.click(event(h.infill, 3, condition_keys + DECODING_KEYS), [text, fill_steps, fill_seed, *extra], output,
                             api_name="infill")
        if caps.text_conditioned:
            with gr.Tab("Summarize"):
                document = gr.Textbox(label=caps.source_name, lines=8)
                with gr.Row():
                    guidance = gr.Slider(1.0, 8.0, value=1.0, step=0.5, label="guidance scale (1 = none)",
                                         visible=caps.guidance)
                    sum_method = guidance_method(caps.guidance)
                    candidates = gr.Slider(1, 8, value=1, step=1, label="candidates (3+: the minimum-Bayes-risk one)")
                    sum_steps = gr.Slider(1, caps.max_steps, value=min(20, caps.max_steps), step=1, label="steps")
                    sum_seed = gr.Number(0, precision=0, label="seed")
                extra = decoding_inputs()
                button = gr.Button("Summarize", variant="primary")
                output = gr.Textbox(label=f"{caps.target_name} (what this model writes)", lines=4)
                button.click(event(h.summarize, 6, DECODING_KEYS), [document, guidance, sum_method, candidates, sum_steps, sum_seed, *extra],
                             output, api_name="summarize")
    return demo


def launch(model: str, port: int = 7860, host: str = "127.0.0.1", share: bool = False, block: bool = True,
           concurrency: int = 1, max_queue: int = 64, max_batch: int = 1):
    """Load `model` (a pipeline folder or hub repo id) and serve its page; returns the launched Blocks. Requests
    wait in Gradio's queue: `concurrency` run at once (1: each sampler call has every CPU thread), at most `max_queue`
    wait; beyond that a request is refused at once with Gradio's "Queue is full, please try again" (HTTP 503) instead
    of waiting without bound. With `max_batch` > 1 up to that many waiting generate requests run as one sampler call
    (several times the throughput under load, without a progress bar in the page); a request's seed then fixes its
    texts together with the requests it ran beside, so 1 (the default) keeps seeded sampling repeatable."""
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    _gradio()
    check_port(host, port)
    pipe = LatentDiffusionTextPipeline.from_pretrained(model)
    demo = build_app(pipe, title=f"latentdlm: {model}", max_batch=max_batch)
    demo.queue(default_concurrency_limit=concurrency, max_size=max_queue)
    demo.launch(server_name=host, server_port=port, share=share, show_error=False, prevent_thread_lock=not block, quiet=not block)
    return demo
