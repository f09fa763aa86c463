"""The latent-space commands of `latentdlm`: interpolate, vary, infill (Python: pipe.interpolate / vary / infill)."""

from __future__ import annotations

import argparse
from pathlib import Path

from latentdlm.errors import LatentDLMError


def cmd_interpolate(args: argparse.Namespace, check_output, write_jsonl, decoding) -> None:
    from latentdlm.evaluation.plots import paragraph_vectors, plot_latent_map
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    check_output(args.output)
    check_output(args.plot)
    pipe = LatentDiffusionTextPipeline.from_pretrained(args.model)
    out = pipe.interpolate(args.source, args.target, args.num_points, args.method, args.through_noise, args.steps, decoding=decoding(args))
    for t, text in zip(out.positions, out.texts):
        print(f"t={t:.2f}  {text}")
    if args.output:
        write_jsonl(args.output, [{"t": t, "text": text} for t, text in zip(out.positions, out.texts)], "points")
    if args.plot:
        background = labels = None
        if args.map_input:
            background, labels = _map_points(pipe, args)
        plot_latent_map(args.plot, background, labels, paragraph_vectors(out.latents, out.segment_mask),
                        [f"{t:.2f}" for t in out.positions], title=f"interpolation ({args.method}) on a PCA map of the latents")
        print(f"wrote the latent map to {args.plot}")


def _map_points(pipe, args):
    """The --map-input texts (and their --map-label-column) as paragraph vectors for the map's background."""
    from latentdlm.data.sources import load_columns, load_texts
    from latentdlm.evaluation.plots import paragraph_vectors

    if args.map_label_column:
        rows = load_columns(args.map_input, [args.map_column or "text", args.map_label_column], limit=args.map_limit)
        texts, labels = [r[0] for r in rows], [r[1] for r in rows]
    else:
        texts = load_texts(args.map_input, args.map_column, limit=args.map_limit)
        labels = [Path(args.map_input).name] * len(texts)
    encoded = pipe.encode(texts)
    return paragraph_vectors(encoded.latents, encoded.segment_mask), labels


def cmd_vary(args: argparse.Namespace, check_output, write_jsonl, decoding) -> None:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    check_output(args.output)
    pipe = LatentDiffusionTextPipeline.from_pretrained(args.model)
    texts = pipe.vary(args.text, args.strength, args.num_samples, args.steps, args.seed, args.class_label, args.condition,
                      args.guidance_scale, args.guidance_method, decoding=decoding(args))
    _emit(texts, args, write_jsonl, lambda text: {"input": args.text, "strength": args.strength, "text": text})


def cmd_infill(args: argparse.Namespace, check_output, write_jsonl, decoding) -> None:
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    check_output(args.output)
    keep = _indices(args.keep) if args.keep is not None else None
    if keep is None and args.num_segments is not None:
        raise LatentDLMError("--num-segments sets the length of an edit: use it with --keep (with ___ blanks, each blank is one segment)")
    pipe = LatentDiffusionTextPipeline.from_pretrained(args.model)
    out = pipe.infill(args.text, keep, args.num_segments, args.num_samples, args.steps, args.seed, args.resample, args.scheduler,
                      args.class_label, args.condition, args.guidance_scale, args.guidance_method, decoding=decoding(args))
    _emit(out.texts, args, write_jsonl, lambda text: {"input": args.text, "generated_segments": out.generated, "text": text})


def _emit(texts: list[str], args, write_jsonl, record) -> None:
    if args.output:
        write_jsonl(args.output, [record(text) for text in texts], "texts")
    else:
        for text in texts:
            print(text + "\n")


def _indices(value: str) -> list[int]:
    try:
        return [int(part) for part in value.split(",") if part.strip()]
    except ValueError:
        raise LatentDLMError(f"--keep takes segment indices separated by commas (e.g. 0,2,4), got {value!r}") from None


def add_guidance_flags(p: argparse.ArgumentParser, rescale: bool = True) -> None:
    p.add_argument("--guidance-scale", type=float, default=1.0, help="classifier-free guidance (1 = none)")
    if rescale:
        p.add_argument("--guidance-rescale", type=float, default=0.0, help="0..1, with guidance only (Lin et al.; 0 = none)")
    p.add_argument("--guidance-method", default="cfg", help="the guidance of --guidance-scale: cfg (classifier-free) "
                   "or apg (adaptive projected guidance, Sadat et al. 2024)")


def add_latent_commands(sub, add_decoding_flags, check_output, write_jsonl, decoding) -> None:
    def command(name: str, help: str, func):
        p = sub.add_parser(name, help=help)
        p.add_argument("--model", required=True, help="a pipeline folder saved by train-diffusion (<output_dir>/pipeline)")
        p.add_argument("--steps", type=int, default=20, help="number of sampling steps")
        p.add_argument("--output", help="write the results as jsonl lines to this file instead of printing")
        p.set_defaults(func=lambda args: func(args, check_output, write_jsonl, decoding))
        return p

    def conditions(p):
        p.add_argument("--seed", type=int, help="for repeatable samples")
        p.add_argument("--num-samples", type=int, default=4)
        p.add_argument("--class-label", help="class-conditional models: the class to steer towards (name or index)")
        p.add_argument("--condition", help="text-conditioned models: the source text to steer towards")
        add_guidance_flags(p, rescale=False)
        add_decoding_flags(p)

    p = command("interpolate", "decode the path between two texts' latents", cmd_interpolate)
    p.add_argument("--source", required=True, help="text A (the path's start)")
    p.add_argument("--target", required=True, help="text B (the path's end)")
    p.add_argument("--num-points", type=int, default=5, help="points on the path, endpoints included")
    p.add_argument("--method", choices=["slerp", "lerp"], default="slerp")
    p.add_argument("--through-noise", type=float, help="0..1: interpolate the DDIM-inverted latents at this noise level "
                   "and denoise each point back (stays on the data manifold)")
    p.add_argument("--plot", help="write a PCA map of the path's latents to this PNG")
    p.add_argument("--map-input", help="texts (jsonl/csv/...) drawn behind the path on the --plot map")
    p.add_argument("--map-column", help="the text column of --map-input")
    p.add_argument("--map-label-column", help="colour the --map-input points by this column (class, source)")
    p.add_argument("--map-limit", type=int, default=500, help="only the first N rows of --map-input")
    add_decoding_flags(p)

    p = command("vary", "variations of a text (SDEdit): noise its latents partway and denoise back", cmd_vary)
    p.add_argument("--text", required=True)
    p.add_argument("--strength", type=float, default=0.3, help="0..1: how far into the noise (small: paraphrase, 1: anew)")
    conditions(p)

    p = command("infill", "write the missing segments of a text (\"S1 ___ S3\") or rewrite the segments not kept", cmd_infill)
    p.add_argument("--text", required=True, help="a text with ___ for each segment to write, or (with --keep) a paragraph to edit")
    p.add_argument("--keep", help="editing: the indices of the segments to keep, e.g. 0,2,4 (the others are rewritten)")
    p.add_argument("--num-segments", type=int, help="with --keep: the edited text's number of segments")
    p.add_argument("--resample", type=int, default=1, help="RePaint resampling: repeat each step this many times (ddpm/ddim)")
    p.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm"], help="swap the sampler (default: the pipeline's)")
    conditions(p)
    p.set_defaults(num_samples=1)
