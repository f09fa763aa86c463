"""The bad-input matrix: every command given a missing, empty, unreadable, non-UTF-8 or wrong-shaped
file, a directory for a file, a file for a folder, a corrupt model, or a number out of range. Shared by
tests/test_bad_input.py and benchmarks/reliability.py; each case must end with one message and exit 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from helpers import tiny_diffusion_overrides, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]
AE_PRESET = str(ROOT / "configs/autoencoder/tiny.yaml")
DM_PRESET = str(ROOT / "configs/diffusion/tiny.yaml")


def make_files(tmp: Path, pipeline: Path) -> dict[str, Path]:
    """The bad files and folders the cases point at."""
    tmp.mkdir(parents=True, exist_ok=True)
    files = {
        "missing": tmp / "missing.jsonl",
        "empty": tmp / "empty.jsonl",
        "blank": tmp / "blank.txt",
        "binary": tmp / "latin1.txt",
        "wrong_column": tmp / "wrong_column.jsonl",
        "directory": tmp / "a_folder",
        "dangling": tmp / "dangling.jsonl",
        "under_a_file": tmp / "empty.jsonl" / "inner.jsonl",
        "bad_yaml": tmp / "bad.yaml",
        "unknown_key": tmp / "unknown_key.yaml",
        "not_a_pipeline": tmp / "not_a_pipeline",
        "corrupt_pipeline": tmp / "corrupt_pipeline",
        "truncated_index": tmp / "truncated_index",  # model_index.json cut short
        "num_layers_six": tmp / "num_layers_six",  # denoiser/config.json: "num_layers": "six"
        "truncated_ae_config": tmp / "truncated_ae_config",  # an autoencoder's config.json cut short
        "wrong_typed_ae_config": tmp / "wrong_typed_ae_config",  # its config.json: "num_latents": "four"
    }
    files["empty"].write_text("")
    files["blank"].write_text("\n  \n\n")
    files["binary"].write_bytes("Caf\xe9 cr\xe8me, na\xefve.\n".encode("latin-1") + b"\xff\xfe\x00\x81\n")
    files["wrong_column"].write_text('{"body": "One text. Two sentences."}\n')
    files["directory"].mkdir(exist_ok=True)
    if not files["dangling"].is_symlink():
        files["dangling"].symlink_to(tmp / "nowhere.jsonl")
    files["bad_yaml"].write_text("training: [unclosed\n  max_steps: 3\n")
    files["unknown_key"].write_text("training:\n  max_stepz: 3\n")
    files["not_a_pipeline"].mkdir(exist_ok=True)
    (files["not_a_pipeline"] / "notes.txt").write_text("hello")
    corrupt = files["corrupt_pipeline"]
    if not corrupt.exists():
        shutil.copytree(pipeline, corrupt)
        weights = corrupt / "denoiser" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    # (the folder copied, the file edited, None: cut in half, else the keys to the value and the wrong-typed value)
    edits = {"truncated_index": (pipeline, "model_index.json", None),
             "num_layers_six": (pipeline, "denoiser/config.json", (["num_layers"], "six")),
             "truncated_ae_config": (pipeline / "autoencoder", "config.json", None),
             "wrong_typed_ae_config": (pipeline / "autoencoder", "config.json", (["autoencoder", "num_latents"], "four"))}
    for kind, (source, name, change) in edits.items():
        if not files[kind].exists():
            shutil.copytree(source, files[kind])
            target = files[kind] / name
            text = target.read_text()
            if change is None:
                target.write_text(text[: len(text) // 2])
                continue
            config = inner = json.loads(text)
            (*keys, last), value = change
            for key in keys:
                inner = inner[key]
            inner[last] = value
            target.write_text(json.dumps(config))
    return files


# what the message of a case must say (besides "error: ", alone on one line): the file, and the key
MESSAGES = {
    "generate --model truncated_index": ["truncated_index/model_index.json is not valid JSON, truncated or corrupt"],
    "generate --model num_layers_six": ["num_layers_six/denoiser/config.json", "'num_layers' must be int, got 'six'"],
    "reconstruct --autoencoder truncated_ae_config": ["truncated_ae_config/config.json is not valid JSON, truncated or corrupt"],
    "reconstruct --autoencoder wrong_typed_ae_config": ["wrong_typed_ae_config/config.json", "'num_latents'", "'four'"],
}


def bad_input_cases(autoencoder: Path, pipeline: Path, tmp: Path) -> dict[str, list[str]]:
    """name -> the command line (without `latentdlm`) that must end with one message and exit 2."""
    f = make_files(tmp, pipeline)
    out = str(tmp / "out")
    ae, pipe = str(autoencoder), str(pipeline)
    train_ae = ["train-autoencoder", "--config", AE_PRESET, *tiny_overrides(out)]
    train_dm = ["train-diffusion", "--config", DM_PRESET, *tiny_diffusion_overrides(autoencoder, out)]
    cases: dict[str, list[str]] = {}
    for kind in ("missing", "empty", "blank", "binary", "wrong_column", "directory", "dangling", "under_a_file"):
        path = str(f[kind])
        column = ["--column", "text"] if kind == "wrong_column" else []  # the file has "body" alone
        cases[f"reconstruct --input {kind}"] = ["reconstruct", "--autoencoder", ae, "--input", path, *column]
        cases[f"summarize --input {kind}"] = ["summarize", "--model", pipe, "--input", path,
                                              *(["--text-column", "text"] if column else [])]
        data_column = ["data.column=text"] if column else []
        cases[f"train-autoencoder data.source={kind}"] = [*train_ae, f"data.source={path}", *data_column]
        cases[f"train-diffusion data.source={kind}"] = [*train_dm, f"data.source={path}", *data_column]
    for kind in ("missing", "binary", "wrong_column", "directory"):
        cases[f"interpolate --map-input {kind}"] = ["interpolate", "--model", pipe, "--source", "A dog ran.", "--target",
                                                    "A cat sat.", "--plot", str(tmp / "map.png"), "--map-input", str(f[kind]),
                                                    *(["--map-column", "text"] if kind == "wrong_column" else [])]
    for kind in ("missing", "directory", "binary", "bad_yaml", "unknown_key", "empty"):
        cases[f"train-autoencoder --config {kind}"] = ["train-autoencoder", "--config", str(f[kind])]
        cases[f"train-diffusion --config {kind}"] = ["train-diffusion", "--config", str(f[kind])]
    for kind in ("missing", "empty", "not_a_pipeline", "corrupt_pipeline", "truncated_index", "num_layers_six"):
        model = str(f[kind])
        cases[f"generate --model {kind}"] = ["generate", "--model", model]
        cases[f"interpolate --model {kind}"] = ["interpolate", "--model", model, "--source", "A dog ran.", "--target", "A cat sat."]
        cases[f"vary --model {kind}"] = ["vary", "--model", model, "--text", "A dog ran."]
        cases[f"infill --model {kind}"] = ["infill", "--model", model, "--text", "A dog ran. ___"]
        cases[f"app --model {kind}"] = ["app", "--model", model, "--port", "7861"]
    for kind in ("missing", "not_a_pipeline", "empty", "truncated_ae_config", "wrong_typed_ae_config"):
        cases[f"reconstruct --autoencoder {kind}"] = ["reconstruct", "--autoencoder", str(f[kind]), "--text", "A dog ran."]
    cases["train-diffusion autoencoder=pipeline folder"] = [*train_dm, f"autoencoder={pipe}"]
    ranges = {
        "generate --num-samples 0": ["generate", "--model", pipe, "--num-samples", "0"],
        "generate --steps 0": ["generate", "--model", pipe, "--steps", "0"],
        "generate --steps 100000": ["generate", "--model", pipe, "--steps", "100000"],
        "generate --batch-size -1": ["generate", "--model", pipe, "--batch-size", "-1"],
        "generate --top-p 2": ["generate", "--model", pipe, "--top-p", "2"],
        "generate --num-segments 999": ["generate", "--model", pipe, "--num-segments", "999"],
        "generate --guidance-rescale 3": ["generate", "--model", pipe, "--guidance-rescale", "3"],
        "generate --num-samples abc": ["generate", "--model", pipe, "--num-samples", "abc"],
        "app --port 70000": ["app", "--model", pipe, "--port", "70000"],
        "vary --strength 1.5": ["vary", "--model", pipe, "--text", "A dog ran.", "--strength", "1.5"],
        "vary --text empty": ["vary", "--model", pipe, "--text", "  "],
        "interpolate --num-points 1": ["interpolate", "--model", pipe, "--source", "A dog ran.", "--target", "A cat sat.",
                                       "--num-points", "1"],
        "interpolate --through-noise 2": ["interpolate", "--model", pipe, "--source", "A dog ran.", "--target", "A cat sat.",
                                          "--through-noise", "2"],
        "interpolate same texts": ["interpolate", "--model", pipe, "--source", "A dog ran.", "--target", "A dog ran."],
        "infill nothing known": ["infill", "--model", pipe, "--text", "___ ___"],
        "infill --keep 7": ["infill", "--model", pipe, "--text", "A dog ran. A cat sat.", "--keep", "7"],
        "reconstruct --text empty": ["reconstruct", "--autoencoder", ae, "--text", ""],
        "reconstruct --batch-size 0": ["reconstruct", "--autoencoder", ae, "--text", "A dog ran.", "--batch-size", "0"],
        "train-autoencoder training.max_steps=0": [*train_ae, "training.max_steps=0"],
        "train-autoencoder training.batch_size=-4": [*train_ae, "training.batch_size=-4"],
        "train-diffusion training.learning_rate=abc": [*train_dm, "training.learning_rate=abc"],
        "demo --diffusion-minutes -1": ["demo", "--preset", "tiny", "--diffusion-minutes", "-1", "--output-dir", out],
        "demo --num-samples 0": ["demo", "--preset", "tiny", "--num-samples", "0", "--output-dir", out],
    }
    cases.update(ranges)
    return cases
