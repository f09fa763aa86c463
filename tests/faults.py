"""Fault trials on tiny runs of both training stages, shared by tests/test_reliability.py and
benchmarks/reliability.py: SIGKILL at a random moment (or while a checkpoint is being written), then
resume, and compare the final weights with an uninterrupted run of the same settings."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from helpers import tiny_diffusion_overrides, tiny_overrides
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {"autoencoder": ROOT / "configs/autoencoder/tiny.yaml", "diffusion": ROOT / "configs/diffusion/tiny.yaml"}
FINAL = {"autoencoder": "autoencoder/model.safetensors", "diffusion": "pipeline/denoiser/diffusion_pytorch_model.safetensors"}
STEPS, SAVE_EVERY = 12, 3

# the child process: the CLI, with Accelerator.save_state killing the process while it writes the
# checkpoint numbered by LATENTDLM_KILL_AT_SAVE (after a random part of the files is written)
CHILD = """
import os, random, signal, sys, threading
from accelerate import Accelerator
kill_at = int(os.environ.get("LATENTDLM_KILL_AT_SAVE", "0"))
if kill_at:
    original, calls = Accelerator.save_state, []
    def save_state(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == kill_at:
            die = lambda: os.kill(os.getpid(), signal.SIGKILL)
            threading.Timer(random.Random(kill_at + int(os.environ["LATENTDLM_TRIAL"])).uniform(0, 0.05), die).start()
            original(self, *args, **kwargs)
            die()
        return original(self, *args, **kwargs)
    Accelerator.save_state = save_state
from latentdlm.cli import main
sys.exit(main(sys.argv[1:]))
"""


def stage_arguments(stage: str, out: Path, autoencoder: Path | None = None) -> list[str]:
    command = "train-autoencoder" if stage == "autoencoder" else "train-diffusion"
    common = {"training.max_steps": STEPS, "training.save_every": SAVE_EVERY, "training.checkpoints_total_limit": 2,
              "training.lr_scheduler": "constant", "training.num_threads": 1}
    if stage == "autoencoder":
        overrides = tiny_overrides(out, **common, **{"objective.word_dropout": 0.2})
    else:
        overrides = tiny_diffusion_overrides(autoencoder, out, **common, ema_decay=0.9)
    return [command, "--config", str(PRESETS[stage]), *overrides]


def run_child(arguments: list[str], kill_after: float | None = None, kill_at_save: int = 0, trial: int = 0) -> int:
    """The CLI in a fresh process; SIGKILLed `kill_after` seconds after its start, or inside its
    `kill_at_save`-th checkpoint write. Returns its exit code (-9 when killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "LATENTDLM_KILL_AT_SAVE": str(kill_at_save),
           "LATENTDLM_TRIAL": str(trial)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, *arguments], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        _, err = proc.communicate(timeout=kill_after)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        return -9
    if proc.returncode not in (0, -9):
        raise RuntimeError(f"training failed ({proc.returncode}): {err[-2000:]}")
    return proc.returncode


def finish(stage: str, out: Path, autoencoder: Path | None = None) -> None:
    """Bring a killed run to its end: --resume from its last complete checkpoint, or start over when it
    was killed before its first one (it keeps nothing then)."""
    arguments = stage_arguments(stage, out, autoencoder)
    has_checkpoint = any((p / "checkpoint_complete").exists() for p in (out / "checkpoints").glob("step-*"))
    if (out / FINAL[stage]).exists():
        return
    code = run_child(arguments + (["--resume"] if has_checkpoint else ["training.overwrite_output_dir=true"]))
    assert code == 0


def reference(stage: str, out: Path, autoencoder: Path | None = None) -> dict[str, torch.Tensor]:
    """The uninterrupted run's final weights (trained once per folder)."""
    if not (out / FINAL[stage]).exists():
        assert run_child(stage_arguments(stage, out, autoencoder)) == 0
    return load_file(out / FINAL[stage])


def timed_reference(stage: str, out: Path, autoencoder: Path | None = None) -> tuple[dict[str, torch.Tensor], float]:
    """The uninterrupted run trained anew into `out`: its final weights and its length in seconds (the
    window a random kill is drawn from)."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.monotonic()
    weights = reference(stage, out, autoencoder)
    return weights, time.monotonic() - start


def kill_trial(stage: str, out: Path, trial: int, expected: dict[str, torch.Tensor], autoencoder: Path | None = None,
               during_save: bool = False, seconds: float = 20.0) -> dict:
    """One trial: kill (at a random second of the first `seconds`, or inside checkpoint write 1-3),
    finish the run, compare. Returns {"killed", "where", "exact", "max_abs_diff"}."""
    rng = torch.Generator().manual_seed(trial)
    arguments = stage_arguments(stage, out, autoencoder)
    if during_save:
        save = 1 + trial % (STEPS // SAVE_EVERY - 1)
        code, where = run_child(arguments, kill_at_save=save, trial=trial), f"inside checkpoint write {save}"
    else:
        delay = float(torch.rand(1, generator=rng)) * seconds
        code, where = run_child(arguments, kill_after=delay), f"{delay:.1f} s after start"
    finish(stage, out, autoencoder)
    got = load_file(out / FINAL[stage])
    diff = max((got[k].double() - expected[k].double()).abs().max().item() for k in expected)
    return {"stage": stage, "killed": code == -9, "where": where, "exact": got.keys() == expected.keys() and diff == 0.0,
            "max_abs_diff": diff}

