"""Interpolation experiments over many text pairs: per-position curves, the rates, a PNG and a JSON.

    python scripts/interpolate.py --model runs/roc-diffusion/pipeline --pairs pairs.jsonl \
        [--source-column source --target-column target] [--num-points 7] [--method slerp|lerp] \
        [--through-noise 0.5] [--output interpolation.json] [--plot interpolation.png]

--pairs is a jsonl/csv file with a source and a target text per row (or --from-texts FILE: consecutive
texts of one column paired up: rows 0-1, 2-3, ...). Measures per path position: MiniLM cosine and BLEU to
A and to B, the decoder's per-token loss on what it wrote, the share of new texts; per path: monotonic
(similarity to B never drops by more than 0.02). One line per setting compared (--method and
--through-noise take several values).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentdlm.errors import LatentDLMError, exit_code


def load_pairs_arg(args) -> list[tuple[str, str]]:
    from latentdlm.data.sources import load_pairs, load_texts

    if args.pairs:
        pairs = load_pairs(args.pairs, args.source_column, args.target_column, limit=args.limit)
    else:
        texts = load_texts(args.from_texts, args.column, limit=2 * args.limit if args.limit else None)
        pairs = list(zip(texts[::2], texts[1::2]))
    pairs = [(a, b) for a, b in pairs if a.strip() and b.strip() and a.strip() != b.strip()]
    if not pairs:
        raise LatentDLMError("no usable pairs (two different, non-empty texts each)")
    return pairs


def run(args) -> None:
    from latentdlm.evaluation.interpolation import interpolation_experiment, plot_interpolation_curves
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = LatentDiffusionTextPipeline.from_pretrained(args.model)
    pairs = load_pairs_arg(args)
    results = {}
    for method in args.method:
        for noise in args.through_noise or [None]:
            label = method + ("" if noise is None else f", through noise {noise:g}")
            results[label] = interpolation_experiment(pipe, pairs, args.num_points, method, noise, args.steps)
            r = results[label]
            print(f"{label}: new-text rate {r['new_text_rate']:.3f}, monotonic rate {r['monotonic_rate']:.3f} over {len(pairs)} pairs")
    Path(args.output).write_text(json.dumps({"model": str(args.model), "results": results}, indent=2))
    plot_interpolation_curves(results, args.plot)
    print(f"wrote {args.output} and {args.plot}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a pipeline folder")
    given = parser.add_mutually_exclusive_group(required=True)
    given.add_argument("--pairs", help="a file with a source and a target text per row")
    given.add_argument("--from-texts", help="a file of texts paired up in order (rows 0-1, 2-3, ...)")
    parser.add_argument("--source-column", default="source")
    parser.add_argument("--target-column", default="target")
    parser.add_argument("--column", help="--from-texts: the text column")
    parser.add_argument("--limit", type=int, default=100, help="at most this many pairs")
    parser.add_argument("--num-points", type=int, default=7)
    parser.add_argument("--method", nargs="+", choices=["slerp", "lerp"], default=["slerp"])
    parser.add_argument("--through-noise", nargs="+", type=float, help="noise levels (0..1] to interpolate at (default: none)")
    parser.add_argument("--steps", type=int, default=20, help="sampling steps (through noise)")
    parser.add_argument("--output", default="interpolation.json")
    parser.add_argument("--plot", default="interpolation.png")
    args = parser.parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
