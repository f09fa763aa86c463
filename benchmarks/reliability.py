"""Reliability measured: kill-and-resume trials on both training stages, injected faults, the bad-input
matrix, and memory over long generation.

    python benchmarks/reliability.py --only PART [--only PART ...]   # parts, each merged into one JSON

Parts (all on test-sized models built from configs, trained once under --work-dir, default runs/reliability):
  kill      KILL_TRIALS per stage: SIGKILL at a random moment of the run (within an uninterrupted run's
            measured length; a run that ends before its kill is listed but not counted), or inside a checkpoint write,
            then --resume (or a fresh start when no checkpoint was complete), final weights compared
            bit for bit with an uninterrupted run (tests/faults.py)
  faults    NaN loss at step k (stop, then resume; and skip mode), a truncated and a bit-flipped
            checkpoint (resume falls back), a write error during a checkpoint and during the final save,
            a corrupt safetensors file in a saved pipeline, a truncated latent cache
  bad       every command with bad files, folders and numbers (tests/bad_inputs.py): exit 2, one message
  rss       resident memory while generating 10k samples in batches (after 1k and after 10k)
Results: benchmarks/results/reliability.json.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import sys
import time
from pathlib import Path
from unittest import mock

import torch
from runner import ROOT, load_pipeline, run_benchmark, torch_threads
from safetensors.torch import load_file

sys.path.insert(0, str(ROOT / "tests"))
from bad_inputs import bad_input_cases  # noqa: E402
from faults import FINAL, kill_trial, reference, stage_arguments, timed_reference  # noqa: E402
from helpers import tiny_diffusion_overrides, tiny_overrides  # noqa: E402

from latentdlm.cli import main  # noqa: E402

KILL_TRIALS = 10  # per stage; every other one inside a checkpoint write
RSS_BATCH, RSS_COUNTS = 250, (1000, 10000)


def cli(argv: list[str]) -> tuple[int, str]:
    """The command in this process: exit code and what it printed to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        except Exception as exc:  # noqa: BLE001 - a crash is a result here, not the end of the benchmark
            code = f"{type(exc).__name__}: {exc}"
    return code, err.getvalue()


def base_models(work: Path) -> tuple[Path, Path]:
    """A test-sized autoencoder and pipeline (trained once)."""
    ae_out, dm_out = work / "base-ae", work / "base-dm"
    if not (ae_out / "autoencoder").exists():
        assert cli(["train-autoencoder", "--config", str(ROOT / "configs/autoencoder/tiny.yaml"), *tiny_overrides(ae_out),
                    "training.overwrite_output_dir=true"])[0] == 0
    if not (dm_out / "pipeline").exists():
        assert cli(["train-diffusion", "--config", str(ROOT / "configs/diffusion/tiny.yaml"),
                    *tiny_diffusion_overrides(ae_out / "autoencoder", dm_out), "training.overwrite_output_dir=true"])[0] == 0
    return ae_out / "autoencoder", dm_out / "pipeline"


def part_kill(args, results: dict) -> None:
    work = args.work_dir
    autoencoder, _ = base_models(work)
    rows = results.setdefault("kill", {"trials": []})
    done = {(t["stage"], t["trial"]) for t in rows["trials"]}
    for stage in ("autoencoder", "diffusion"):
        straight = work / f"kill-{stage}-straight"
        if stage not in rows.setdefault("run_seconds", {}):  # random kills fall inside the uninterrupted run's length
            rows["run_seconds"][stage] = timed_reference(stage, straight, autoencoder)[1]
        expected = reference(stage, straight, autoencoder)
        for trial in range(KILL_TRIALS):
            if (stage, trial) in done:
                continue
            out = work / f"kill-{stage}-{trial}"
            shutil.rmtree(out, ignore_errors=True)
            row = kill_trial(stage, out, trial, expected, autoencoder, during_save=trial % 2 == 1,
                             seconds=rows["run_seconds"][stage])
            rows["trials"].append({"trial": trial, **row})
            print(json.dumps(rows["trials"][-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
            results.save()


# ---- faults: each returns (survived, what happened) ----------------------------------------------------
def weights(folder: Path, stage: str) -> dict[str, torch.Tensor]:
    return load_file(folder / FINAL[stage])


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def fault_nan(work: Path, autoencoder: Path, expected: dict) -> tuple[bool, str]:
    """NaN loss at step 7: stop naming it, no checkpoint from it, resume ends as if nothing happened."""
    from latentdlm.autoencoder.objective import AutoencoderObjective

    out = work / "fault-nan"
    shutil.rmtree(out, ignore_errors=True)
    forward = AutoencoderObjective.forward

    def poisoned(self, batch, step):
        terms = forward(self, batch, step)
        return {**terms, "loss": terms["loss"] * float("nan")} if step + 1 == 7 else terms

    with mock.patch.object(AutoencoderObjective, "forward", poisoned):
        code, err = cli(stage_arguments("autoencoder", out))
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    stopped = code == 2 and "at step 7" in err and max(steps) == 6 and not (out / "checkpoints" / "step-9").exists()
    resumed = cli(stage_arguments("autoencoder", out) + ["--resume"])[0] == 0 and same(weights(out, "autoencoder"), expected)
    message = next((line for line in err.splitlines() if "at step 7" in line), err.strip()[-200:])
    return stopped and resumed, f"exit {code}: {message.strip()}; resumed identical: {resumed}"


def fault_nan_skip(work: Path) -> tuple[bool, str]:
    from latentdlm.autoencoder.objective import AutoencoderObjective

    out = work / "fault-nan-skip"
    shutil.rmtree(out, ignore_errors=True)
    forward, calls = AutoencoderObjective.forward, []

    def poisoned(self, batch, step):
        calls.append(step)
        terms = forward(self, batch, step)
        return {**terms, "loss": terms["loss"] * float("nan")} if len(calls) == 5 else terms

    with mock.patch.object(AutoencoderObjective, "forward", poisoned):
        code, err = cli(stage_arguments("autoencoder", out) + ["training.on_nonfinite=skip"])
    finite = code == 0 and all(torch.isfinite(t).all() for t in weights(out, "autoencoder").values())
    return finite and "batch skipped" in err, f"exit {code}, final weights finite: {finite}"


def fault_bad_checkpoint(work: Path, stage: str, autoencoder: Path, expected: dict, how: str) -> tuple[bool, str]:
    """The newest checkpoint truncated or bit-flipped (the final model gone): resume falls back to the one
    before and ends with the uninterrupted weights."""
    out = work / f"fault-{how}-{stage}"
    shutil.rmtree(out, ignore_errors=True)
    assert cli(stage_arguments(stage, out, autoencoder))[0] == 0
    shutil.rmtree(out / FINAL[stage].split("/")[0])
    newest = max((out / "checkpoints").glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    target = next(newest.glob("*.safetensors"))
    data = bytearray(target.read_bytes())
    if how == "truncated":
        del data[len(data) // 2:]
    else:
        data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    code, err = cli(stage_arguments(stage, out, autoencoder) + ["--resume"])
    identical = code == 0 and same(weights(out, stage), expected)
    return identical and f"skipping checkpoint {newest}" in err, f"exit {code}; warned: {'skipping checkpoint' in err}; identical: {identical}"


def fault_write_error(work: Path, where: str) -> tuple[bool, str]:
    """ENOSPC inside the 2nd checkpoint write, or inside the final save over a finished model."""
    from accelerate import Accelerator

    from latentdlm.autoencoder import model as model_module

    out = work / f"fault-write-{where}"
    shutil.rmtree(out, ignore_errors=True)
    arguments = stage_arguments("autoencoder", out)
    disk_full = OSError(errno.ENOSPC, "No space left on device")
    if where == "checkpoint":
        original, calls = Accelerator.save_state, []

        def save_state(self, output_dir=None, **kwargs):
            calls.append(1)
            if len(calls) == 2:
                Path(output_dir).mkdir(parents=True, exist_ok=True)
                (Path(output_dir) / "half.bin").write_bytes(b"\0" * 100)
                raise disk_full
            return original(self, output_dir, **kwargs)

        with mock.patch.object(Accelerator, "save_state", save_state):
            code, err = cli(arguments)
        kept = [p.name for p in (out / "checkpoints").iterdir()] == ["step-3"]
        resumed = cli(arguments + ["--resume"])[0] == 0
        return code == 2 and "No space left" in err and kept and resumed, f"exit {code}; step-3 alone kept: {kept}; resumed: {resumed}"
    assert cli(arguments)[0] == 0
    before = (out / FINAL["autoencoder"]).read_bytes()
    save_model = model_module.save_model

    def failing(model, path, **kwargs):
        if ".autoencoder.tmp" in path:
            raise disk_full
        return save_model(model, path, **kwargs)

    with mock.patch.object(model_module, "save_model", failing):
        code, err = cli(arguments + ["training.overwrite_output_dir=true"])
    kept = (out / FINAL["autoencoder"]).read_bytes() == before
    return code == 2 and "could not write the trained autoencoder" in err and kept, f"exit {code}; finished model kept: {kept}"


def fault_corrupt_pipeline(work: Path, pipeline: Path) -> tuple[bool, str]:
    broken = work / "fault-corrupt-pipeline"
    shutil.rmtree(broken, ignore_errors=True)
    shutil.copytree(pipeline, broken)
    target = broken / "autoencoder" / "model.safetensors"
    target.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}" + target.read_bytes()[100:])
    code, err = cli(["generate", "--model", str(broken), "--num-samples", "1"])
    return code == 2 and "Traceback" not in err, f"exit {code}: {err.strip()[-200:]}"


def fault_truncated_cache(work: Path, autoencoder: Path, expected: dict) -> tuple[bool, str]:
    """The latent cache cut short (meta intact): detected, encoded again, the run ends as without the fault."""
    out = work / "fault-cache"
    shutil.rmtree(out, ignore_errors=True)
    assert cli(stage_arguments("diffusion", out, autoencoder))[0] == 0
    cache = out / "latents.safetensors"
    cache.write_bytes(cache.read_bytes()[:-64])
    code, err = cli(stage_arguments("diffusion", out, autoencoder) + ["training.overwrite_output_dir=true"])
    identical = code == 0 and same(weights(out, "diffusion"), expected)
    return identical, f"exit {code}; identical: {identical} {err.strip()[-200:] if code else ''}"


def part_faults(args, results: dict) -> None:
    work = args.work_dir
    autoencoder, pipeline = base_models(work)
    expected = {stage: reference(stage, work / f"kill-{stage}-straight", autoencoder) for stage in FINAL}
    faults = {
        "nan_loss_stop_then_resume": lambda: fault_nan(work, autoencoder, expected["autoencoder"]),
        "nan_loss_skip": lambda: fault_nan_skip(work),
        "truncated_checkpoint_autoencoder": lambda: fault_bad_checkpoint(work, "autoencoder", autoencoder, expected["autoencoder"], "truncated"),
        "truncated_checkpoint_diffusion": lambda: fault_bad_checkpoint(work, "diffusion", autoencoder, expected["diffusion"], "truncated"),
        "bitflip_checkpoint_diffusion": lambda: fault_bad_checkpoint(work, "diffusion", autoencoder, expected["diffusion"], "bitflip"),
        "write_error_in_checkpoint": lambda: fault_write_error(work, "checkpoint"),
        "write_error_in_final_save": lambda: fault_write_error(work, "final"),
        "corrupt_safetensors_in_pipeline": lambda: fault_corrupt_pipeline(work, pipeline),
        "truncated_latent_cache": lambda: fault_truncated_cache(work, autoencoder, expected["diffusion"]),
    }
    rows = results["faults"] = {}
    for name, fault in faults.items():
        survived, what = fault()
        rows[name] = {"survived": survived, "what_happened": what}
        print(json.dumps({name: rows[name]}), flush=True)
        results.save()


def part_bad(args, results: dict) -> None:
    work = args.work_dir
    autoencoder, pipeline = base_models(work)
    rows = results["bad_inputs"] = {}
    for name, argv in bad_input_cases(autoencoder, pipeline, work / "bad").items():
        code, err = cli(argv)
        messages = [line for line in err.splitlines() if "error:" in line]
        rows[name] = {"exit": code, "clean": code == 2 and "Traceback" not in err and bool(messages),
                      "message": messages[-1] if messages else err.strip()[-300:]}
    print(json.dumps({k: v for k, v in rows.items() if not v["clean"]}, indent=1), flush=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def part_rss(args, results: dict) -> None:
    _, pipeline = base_models(args.work_dir)
    pipe = load_pipeline(pipeline)
    marks, made, start = {}, 0, time.monotonic()
    pipe(num_samples=RSS_BATCH, batch_size=RSS_BATCH, seed=0, show_progress=False)  # warm-up: allocator pools, lazy imports
    marks["after_warmup"] = rss_mb()
    while made < RSS_COUNTS[-1]:
        texts = pipe(num_samples=RSS_BATCH, batch_size=RSS_BATCH, seed=made, show_progress=False).texts
        assert len(texts) == RSS_BATCH
        made += RSS_BATCH
        if made in RSS_COUNTS:
            marks[f"after_{made}"] = rss_mb()
            print(json.dumps({made: marks[f"after_{made}"]}), flush=True)
    results["rss"] = {"pipeline": "test-sized tiny pipeline", "batch_size": RSS_BATCH, "rss_mb": marks,
                      "growth_1k_to_10k": marks[f"after_{RSS_COUNTS[1]}"] / marks[f"after_{RSS_COUNTS[0]}"] - 1,
                      "minutes": (time.monotonic() - start) / 60}


def summary(results: dict) -> dict:
    trials = [t for t in results.get("kill", {}).get("trials", []) if t["killed"]]  # a run that ended first is no trial
    faults = results.get("faults", {})
    bad = results.get("bad_inputs", {})
    rss = results.get("rss", {}).get("rss_mb", {})
    return {
        "kill_resume_trials": len(trials), "kill_resume_exact": sum(t["exact"] for t in trials),
        "faults_injected": len(faults), "faults_survived": sum(f["survived"] for f in faults.values()),
        "bad_inputs_tried": len(bad), "bad_inputs_clean": sum(b["clean"] for b in bad.values()),
        "rss_mb_after_1k_samples": rss.get("after_1000"), "rss_mb_after_10k_samples": rss.get("after_10000"),
    }


PARTS = {"kill": part_kill, "faults": part_faults, "bad": part_bad, "rss": part_rss}


def setup(args, results: dict) -> None:
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    torch_threads(1, flush_denormal=False)


if __name__ == "__main__":
    run_benchmark(__doc__, "reliability", PARTS, work_dir="runs/reliability", summary=summary, setup=setup)
