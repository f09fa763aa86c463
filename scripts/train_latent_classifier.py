"""Train a classifier on a pipeline's noised latents, for classifier guidance.

    python scripts/train_latent_classifier.py --model runs/agnews-uncond/pipeline \
        --input ../shared/data/ag_news/train.csv --text-column content --label-column label \
        --label-names 1=World,2=Sports,3=Business,4=Sci/Tech --minutes 5 --output runs/agnews-classifier
    latentdlm generate --model runs/agnews-uncond/pipeline --classifier runs/agnews-classifier \
        --class-label Sports --classifier-scale 3

Writes the classifier folder (config.json + weights) and training.json (held-out accuracy per noise level).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from latentdlm.errors import LatentDLMError, exit_code


def parse_label_names(value: str | None) -> dict[str, str] | None:
    if not value:
        return None
    pairs = [part.split("=", 1) for part in value.split(",") if part.strip()]
    if any(len(pair) != 2 for pair in pairs):
        raise LatentDLMError(f"--label-names takes raw=name pairs separated by commas (1=World,2=Sports), got {value!r}")
    return {raw.strip(): name.strip() for raw, name in pairs}


def run(args: argparse.Namespace) -> None:
    import torch

    from latentdlm.data.sources import load_labeled_texts
    from latentdlm.training.classifier import train_latent_classifier
    from latentdlm.io import atomic_directory
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
    from latentdlm.training.latent_data import name_labels

    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise LatentDLMError(f"{output} exists: pass --overwrite to replace it")
    torch.set_num_threads(args.num_threads)
    pipe = LatentDiffusionTextPipeline.from_pretrained(args.model)
    pairs = load_labeled_texts(args.input, args.text_column, args.label_column, limit=args.limit)
    labels = name_labels([label for _, label in pairs], parse_label_names(args.label_names))
    model, record = train_latent_classifier(pipe, [text for text, _ in pairs], labels, args.minutes, args.batch_size,
                                            args.learning_rate, seed=args.seed)
    record.update(pipeline=str(args.model), input=str(args.input))
    with atomic_directory(output) as tmp:
        model.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=2))
    accuracy = ", ".join(f"t={t}: {a:.1%}" for t, a in record["validation_accuracy_by_timestep"].items())
    print(f"saved the classifier to {output} ({record['steps']} steps); held-out accuracy {accuracy}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the pipeline folder whose latent space the classifier reads")
    parser.add_argument("--input", required=True, help="labelled texts (jsonl/csv/tsv/txt)")
    parser.add_argument("--text-column", help="the text column (default: text, or the only string column)")
    parser.add_argument("--label-column", required=True, help="the label column ('first_word': SST-2 txt)")
    parser.add_argument("--label-names", help="raw=name pairs, e.g. 1=World,2=Sports (default: the raw labels)")
    parser.add_argument("--limit", type=int, help="only the first N rows")
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=2)
    parser.add_argument("--output", required=True, help="the classifier folder to write")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    return exit_code(lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
