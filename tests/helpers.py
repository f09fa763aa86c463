"""Shared helpers for the tests: tiny model configs, a one-call autoencoder builder, tiny conditional
trainings and a 2-process CPU launch through `accelerate launch`."""

import contextlib
import csv
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import warnings
from pathlib import Path

import psutil

from latentdlm.cli import main
from latentdlm.config import load_config
from latentdlm.data.sources import load_texts
from latentdlm.training.autoencoder import AutoencoderTrainConfig

# A tiny autoencoder for tests: random BERT encoder and BART decoder, width 32, BPE trained on Aesop.
TINY_ENCODER = {
    "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 128, "hidden_dropout_prob": 0.0,
    "attention_probs_dropout_prob": 0.0,
}
TINY_DECODERS = {
    "bart": {"model_type": "bart", "d_model": 32, "decoder_layers": 1, "decoder_attention_heads": 2,
             "decoder_ffn_dim": 64, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64,
             "max_position_embeddings": 128, "dropout": 0.0, "attention_dropout": 0.0},
    "t5": {"model_type": "t5", "d_model": 32, "d_kv": 16, "d_ff": 64, "num_layers": 1, "num_heads": 2, "dropout_rate": 0.0},
    "gpt2": {"model_type": "gpt2", "n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 256,
             "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "llama": {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 256},
}


def _flow(mapping: dict) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in mapping.items()) + "}"


def tiny_overrides(output_dir, decoder: str = "bart", **extra) -> list[str]:
    """key=value overrides that turn any preset into a seconds-long test run."""
    kind = "causal" if decoder in ("gpt2", "llama") else "seq2seq"
    values = {
        "data.source": "bundled:aesop", "data.max_eval": 4, "data.eval_fraction": 0.05,
        "model.encoder.name_or_path": "null", "model.decoder.name_or_path": "null", "model.tokenizer.name_or_path": "null",
        "model.encoder.kind": "hf", "model.encoder.config": _flow(TINY_ENCODER),
        "model.decoder.kind": kind, "model.decoder.config": _flow(TINY_DECODERS[decoder]),
        "model.tokenizer.train_vocab_size": 600, "model.num_latents": 4, "model.latent_dim": 8,
        "model.compressor_dim": 32, "model.compressor_heads": 2, "model.memory_heads": 2, "model.memory_layers": 1,
        "model.max_length": 32, "model.segmentation.mode": "sentences",
        "training.output_dir": str(output_dir), "training.batch_size": 8, "training.max_steps": 4,
        "training.max_minutes": "null", "training.warmup_steps": 1, "training.log_every": 1,
        "training.eval_every": 0, "training.save_every": 2, "training.num_threads": "null",
        "show_examples": 0, "eval_batch_size": 16,
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


def tiny_train_config(output_dir="unused", decoder: str = "bart", **extra) -> AutoencoderTrainConfig:
    return load_config(AutoencoderTrainConfig, None, tiny_overrides(output_dir, decoder, **extra))


def tiny_diffusion_overrides(autoencoder, output_dir, **extra) -> list[str]:
    """key=value overrides that make the diffusion tiny preset a seconds-long test run."""
    values = {
        "autoencoder": str(autoencoder), "data.source": "bundled:aesop", "data.limit": 64,
        "denoiser.hidden_size": 32, "denoiser.num_layers": 2, "denoiser.num_heads": 2, "denoiser.patch_size": 2,
        "sampling.num_inference_steps": 3, "sampling.num_samples": 2,
        "training.output_dir": str(output_dir), "training.batch_size": 8, "training.max_steps": 4,
        "training.max_minutes": "null", "training.warmup_steps": 1, "training.log_every": 1,
        "training.eval_every": 0, "training.save_every": 2, "training.num_threads": "null",
    }
    values.update(extra)
    return [f"{k}={v}" for k, v in values.items()]


TINY_CONDITION_ENCODER = {"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                          "intermediate_size": 64, "max_position_embeddings": 64}


def tiny_condition_overrides(source_column: str = "title", target_column: str = "text") -> list[str]:
    """A text-conditioned run on the bundled fables (title -> fable) with a tiny trainable condition encoder."""
    return [
        "data.source=bundled:aesop", f"data.column={target_column}", f"data.condition_column={source_column}",
        "condition.kind=hf", "condition.name_or_path=null", f"condition.config={_flow(TINY_CONDITION_ENCODER)}",
        "condition.freeze=false", "condition.max_length=32",
    ]


def launch_two_cpu_processes(script: str, config: str, overrides: list[str], output_dir: Path) -> dict:
    """`accelerate launch` a training script on 2 CPU processes (gloo DDP); returns its run_info.json.

    A launch that hangs (once in CI, after the run had saved its pipeline; never reproduced here) is killed with
    SIGABRT, so every process prints its Python stack (faulthandler), and tried once more; the stacks of
    the hung try are reported as a warning, and a second hang fails the test with them."""
    for attempt in (1, 2):
        returncode, stdout, stderr = _launch(script, config, overrides)
        if returncode is not None:
            break
        stacks = f"launch of {script} hung (try {attempt}); its processes' stacks:\n{stderr[-6000:]}"
        assert attempt == 1, stacks
        warnings.warn(stacks)
        shutil.rmtree(output_dir, ignore_errors=True)  # the second try starts from nothing, as the first did
    assert returncode == 0, stderr[-3000:]
    return json.loads((Path(output_dir) / "run_info.json").read_text())


def _launch(script: str, config: str, overrides: list[str], timeout: int = 300) -> tuple:
    """(exit code or None when it hung, stdout, stderr) of one 2-process `accelerate launch`."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root), "PYTHONFAULTHANDLER": "1"}
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
        str(root / "scripts" / script), "--config", config, *overrides,
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
        return proc.returncode, stdout, stderr
    except subprocess.TimeoutExpired:
        launcher = psutil.Process(proc.pid)
        for process in [*launcher.children(recursive=True), launcher]:  # the workers run in sessions of their own
            with contextlib.suppress(psutil.NoSuchProcess):
                process.send_signal(signal.SIGABRT)
        stdout, stderr = proc.communicate()
        return None, stdout, stderr


ROOT = Path(__file__).resolve().parents[1]


def labeled_csv(path: Path) -> Path:
    """24 fables and 24 novel passages with a `topic` column (fable / novel): a class-conditional corpus."""
    rows = [(t, "fable") for t in load_texts("bundled:aesop", limit=24)]
    rows += [(t, "novel") for t in load_texts("bundled:austen", limit=24)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["content", "topic"])
        writer.writerows(rows)
    return path


def train_conditional(autoencoder, out, *extra) -> int:
    """A tiny text-conditioned DiT (fable title -> fable) on `autoencoder`; the command's exit code."""
    return main(["train-diffusion", "--config", str(ROOT / "configs/diffusion/tiny_cond.yaml"),
                 *tiny_diffusion_overrides(autoencoder, out), *tiny_condition_overrides(), *extra])
