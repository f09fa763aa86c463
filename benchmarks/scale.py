"""Scale (issue 26): corpora encoded by every process into shards, training memory independent of corpus size, the
app under concurrent load, sampling memory over long runs.

    python benchmarks/scale.py --only PART [--only PART ...]   # parts, each merged into one JSON

The encoder is the flagship's (frozen all-MiniLM-L6-v2 sentence latents, design (e) of the quality ladder, under
--ladder-dir), the units ROCStories training sentences.
Parts:
  encode       ENCODE_UNITS units encoded by `latentdlm encode` with 1 process x 2 threads and with 2 processes x 1 thread
               (`accelerate launch`, the same total threads), each into a fresh cache, interleaved rounds: units per second
               and each process's share of the shards
  kill_resume  an encoding killed (SIGKILL) once KILL_AFTER shards are written, run again: it encodes the missing shards
               only, and the cache must equal the uninterrupted one of part encode bit for bit
  train        the concept DiT (configs/diffusion/flagship/concept_roc_uncond.yaml) trained TRAIN_STEPS steps on 10k units
               (2,000 real stories, encoded by the run itself) and on 1M units (the 10k latents replicated 100x into
               shards: the run reads them through the cache as a real 1M corpus; say so): peak resident memory and seconds
               per step (after TRAIN_WARMUP steps)
  app          the app (`latentdlm app`, design (e)'s pipeline) under APP_CLIENTS simultaneous gradio_client clients on
               127.0.0.1, APP_REQUESTS generate requests each (one story), all at once: errors and latency (p50, p95),
               each request alone (the default) and with --max-batch APP_MAX_BATCH (waiting requests in one sampler call)
  ae_stream    the autoencoder stage (tiny preset) on a streamed corpus of 10k and ~1M units (ROCStories' stories
               replicated AE_REPLICAS x: said so) and the 1M corpus read as a list: peak resident memory and step time
  sampling     resident memory after 1k and 10k samples of a test-sized pipeline (benchmarks/reliability.py's part rss)

Results: benchmarks/results/scale.json.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from flagship import pipeline_dir
from runner import ROOT, log, run_benchmark
from scoring import rocstories

SUMMARY_KEYS = (
    "encode_units_per_s_1proc", "encode_units_per_s_2proc", "rss_mb_train_10k", "rss_mb_train_1m", "step_seconds_10k",
    "step_seconds_1m", "encode_kill_resume_exact", "app_clients", "app_requests", "app_errors", "app_p95_seconds",
    "rss_mb_after_1k_samples", "rss_mb_after_10k_samples",
)
ENCODE_UNITS, SHARD_UNITS, ENCODE_ROUNDS, KILL_AFTER = 10000, 1250, 2, 3
TRAIN_STORIES, REPLICAS, TRAIN_STEPS, TRAIN_WARMUP = 2000, 100, 60, 20
AE_STORIES, AE_REPLICAS, AE_SMALL, AE_STEPS, AE_WARMUP = 5000, 40, 2000, 150, 20  # 150 steps: each run meets its long batches
APP_CLIENTS, APP_REQUESTS = 16, 10
APP_MAX_BATCH = 8  # the batched run: up to this many waiting requests in one sampler call
DESIGN = "e"


def autoencoder(args) -> Path:
    return pipeline_dir(args.ladder_dir, DESIGN) / "autoencoder"


def corpus(args) -> Path:
    """ENCODE_UNITS training sentences, one per line (a txt corpus: each line one text of one sentence)."""
    path = args.work_dir / "sentences.txt"
    if not path.exists():
        from latentdlm.data.segmentation import SegmentationConfig, SentenceSegmenter

        sentences = [s for units in SentenceSegmenter(SegmentationConfig(mode="sentences")).split_batch(rocstories().train) for s in units]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(sentences[:ENCODE_UNITS]) + "\n")
    return path


def encode_command(args, processes: int, threads: int) -> list[str]:
    encode = ["--autoencoder", str(autoencoder(args)), "--source", str(corpus(args)), "--shard-units", str(SHARD_UNITS),
              "--threads", str(threads)]
    if processes == 1:
        return [sys.executable, "-m", "latentdlm.cli", "encode", *encode]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
            str(ROOT / "scripts" / "encode_corpus.py"), *encode]


def encode_env(cache: Path, threads: int) -> dict:
    return {**os.environ, "LATENTDLM_CACHE": str(cache.resolve()), "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": str(threads),
            "PYTHONPATH": str(ROOT)}


def run_encode(args, processes: int, threads: int, cache: Path) -> dict:
    proc = subprocess.run(encode_command(args, processes, threads), env=encode_env(cache, threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"encoding failed:\n{proc.stderr[-3000:]}")
    return json.loads([line for line in proc.stdout.splitlines() if line.startswith("{")][-1])


def part_encode(args, results: dict) -> None:
    import shutil

    arms = {"1proc_2threads": (1, 2), "2proc_1thread": (2, 1)}
    rows = {name: [] for name in arms}
    for round_ in range(ENCODE_ROUNDS):  # interleaved: the machine's drift hits both alike
        for name, (processes, threads) in arms.items():
            cache = args.work_dir / "encode" / f"{name}-{round_}"
            shutil.rmtree(cache, ignore_errors=True)
            row = run_encode(args, processes, threads, cache)
            rows[name].append(row)
            log(row, name)
    out = {name: {"units_per_s": statistics.mean(r["units_per_s"] for r in runs), "runs": runs,
                  "shards_per_process": runs[-1]["shards_per_process"]} for name, runs in rows.items()}
    out["ratio_2proc_vs_1proc"] = out["2proc_1thread"]["units_per_s"] / out["1proc_2threads"]["units_per_s"]
    out["setup"] = (f"{ENCODE_UNITS} ROCStories training sentences, shards of {SHARD_UNITS}, MiniLM (design {DESIGN}'s frozen "
                    f"encoder), batch 128; seconds from the encoding's start to the manifest (model loading excluded)")
    results["encode"] = out


def part_kill_resume(args, results: dict) -> None:
    import shutil

    import torch

    from latentdlm.autoencoder.latent_cache import LatentShards
    from latentdlm.shards import MANIFEST

    reference = next((args.work_dir / "encode" / "1proc_2threads-0" / "embeddings").glob("*/" + MANIFEST), None)
    if reference is None:
        raise SystemExit("run part encode first: its uninterrupted 1-process cache is the reference")
    cache = args.work_dir / "kill_resume"
    shutil.rmtree(cache, ignore_errors=True)
    proc = subprocess.Popen(encode_command(args, 1, 2), env=encode_env(cache, 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    written = []
    while proc.poll() is None:
        written = list(cache.glob("embeddings/*/shard-*.safetensors"))
        if len(written) >= KILL_AFTER:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.2)
    proc.wait()
    killed = len(written) >= KILL_AFTER
    row = run_encode(args, 1, 2, cache)
    resumed, whole = LatentShards(Path(row["cache"])), LatentShards(reference.parent)
    results["kill_resume"] = {"killed_after_shards": len(written), "killed": killed, "resumed": row,
                              "shards_encoded_on_resume": row["shards_encoded"],
                              "exact": bool(killed and torch.equal(resumed[:], whole[:]))}
    log(results["kill_resume"], "kill/resume")


def training_overrides(args, out: Path, stories: int) -> list[str]:
    return [f"autoencoder={autoencoder(args)}", f"data.source={rocstories_file()}", f"data.limit={stories}",
            f"training.output_dir={out}", f"training.max_steps={TRAIN_STEPS}", "training.max_minutes=null", "training.eval_every=0",
            "training.save_every=100000", "training.log_every=1", "training.overwrite_output_dir=true", "heldout_texts=0"]


def rocstories_file() -> Path:
    from latentdlm.data.sources import data_root

    return data_root() / "rocstories" / "train.jsonl"


def replicate_cache(args, source_run: Path, out: Path, config) -> None:
    """A 1M-unit run folder: the 10k run's latents written REPLICAS times into shards, its counts repeated, and the cache
    record (latents.json) the training run checks, so the run reads them as its corpus's."""
    import torch
    from safetensors.torch import load_file, save_file

    from latentdlm.autoencoder.latent_cache import LatentShards
    from latentdlm.io import file_sha256
    from latentdlm.shards import SHARD_UNITS as SHARD, shard_name, write_manifest, write_tensors
    from latentdlm.training.latent_data import CACHE_NAME, _cache_key

    source = LatentShards(json.loads((source_run / "latents.json").read_text())["units_file"])
    counts = load_file(str(source_run / CACHE_NAME))["counts"]
    folder = args.work_dir / "replicated" / "units"
    folder.mkdir(parents=True, exist_ok=True)
    total = len(source) * REPLICAS
    whole = source[:]
    buffer, shard = [], 0
    for _ in range(REPLICAS):
        buffer.append(whole)
        while sum(len(b) for b in buffer) >= SHARD:
            joined = torch.cat(buffer)
            write_tensors(folder / shard_name(shard), {"latents": joined[:SHARD]})
            buffer, shard = [joined[SHARD:]], shard + 1
    rest = torch.cat(buffer)
    if len(rest):
        write_tensors(folder / shard_name(shard), {"latents": rest})
        shard += 1
    write_manifest(folder, total, shard, SHARD, latent_shape=list(whole.shape[1:]))
    out.mkdir(parents=True, exist_ok=True)
    save_file({"counts": counts.repeat(REPLICAS)}, str(out / CACHE_NAME))
    key = _cache_key(config)
    (out / "latents.json").write_text(json.dumps({"key": key, "sha256": file_sha256(out / CACHE_NAME), "class_names": None,
                                                  "texts": len(counts) * REPLICAS, "sources": None, "units_file": str(folder.resolve())}))


def train_run(args, out: Path, stories: int) -> dict:
    """One DiT training run in its own process (`measured_run`)."""
    preset = ROOT / "configs/diffusion/flagship/concept_roc_uncond.yaml"
    return measured_run(["train-diffusion", "--config", str(preset), *training_overrides(args, out, stories)], out, TRAIN_WARMUP)


def measured_run(command: list[str], out: Path, warmup: int) -> dict:
    """A `latentdlm` training command in its own process: its peak resident memory (polled), its wall seconds and its
    seconds per step after `warmup` steps (from the run's metrics.jsonl)."""
    import psutil

    cmd = [sys.executable, "-m", "latentdlm.cli", *command]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watched, peak = psutil.Process(proc.pid), 0
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr), daemon=True)
    reader.start()
    while proc.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.1)
    reader.join()
    if proc.returncode != 0:
        raise SystemExit(f"training failed:\n{''.join(stderr)[-3000:]}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = {r["step"]: r["train_minutes"] for r in records if "loss" in r}
    last = max(steps)
    return {"peak_rss_mb": peak / 2**20, "step_seconds": (steps[last] - steps[warmup]) * 60 / (last - warmup), "steps": last,
            "wall_seconds": time.monotonic() - started}


def part_ae_stream(args, results: dict) -> None:
    """The autoencoder stage on a streamed corpus of 10k and 1M units (ROCStories' training stories, replicated for 1M:
    said so), and the 1M corpus read as a list for contrast: peak memory and step time."""
    stories = [json.loads(line)["text"] for line in rocstories_file().read_text().splitlines()]
    large = args.work_dir / "ae-corpus-1m.jsonl"
    if not large.exists():  # 5 sentences a story: AE_STORIES x AE_REPLICAS stories ~ 1M units
        with large.open("w") as f:
            for _ in range(AE_REPLICAS):
                f.writelines(json.dumps({"text": text}) + "\n" for text in stories[:AE_STORIES])
    rows = {}
    for name, limit, streaming in (("stream_10k", AE_SMALL, True), ("stream_1m", None, True), ("list_1m", None, False)):
        out = args.work_dir / f"ae-{name}"
        overrides = [f"data.source={large}", f"data.limit={limit if limit else 'null'}", f"data.streaming={str(streaming).lower()}",
                     "data.max_eval=32", f"training.output_dir={out}", f"training.max_steps={AE_STEPS}", "training.max_minutes=null",
                     "training.eval_every=0", "training.save_every=100000", "training.log_every=1", "training.warmup_steps=1",
                     "training.overwrite_output_dir=true", "show_examples=0"]
        rows[name] = measured_run(["train-autoencoder", "--config", str(ROOT / "configs/autoencoder/tiny.yaml"), *overrides], out, AE_WARMUP)
        rows[name]["training_stories"] = json.loads((out / "autoencoder" / "config.json").read_text())["training"]["data"]["num_texts"]
        log(rows[name], name)
    rows["setup"] = (f"the tiny autoencoder preset (BPE trained on the corpus), {AE_STEPS} steps of batch 64 units; corpus: ROCStories' "
                     f"{AE_STORIES} training stories written {AE_REPLICAS}x into one jsonl (~1M sentence units; replicated text, not "
                     f"new), 10k: its first {AE_SMALL} stories (the first 32 of each held out)")
    results["ae_stream"] = rows


def part_train(args, results: dict) -> None:
    from latentdlm.config import load_config
    from latentdlm.training.diffusion import DiffusionTrainConfig

    preset = ROOT / "configs/diffusion/flagship/concept_roc_uncond.yaml"
    small, large = args.work_dir / "train-10k", args.work_dir / "train-1m"
    rows = {"10k": train_run(args, small, TRAIN_STORIES)}
    log(rows["10k"], "10k units")
    config = load_config(DiffusionTrainConfig, preset, training_overrides(args, large, TRAIN_STORIES * REPLICAS))
    replicate_cache(args, small, large, config)
    rows["1m"] = train_run(args, large, TRAIN_STORIES * REPLICAS)
    log(rows["1m"], "1M units")
    rows["setup"] = (f"{TRAIN_STEPS} steps of batch 64 stories (design {DESIGN}'s concept DiT preset), seconds per step over steps "
                     f"{TRAIN_WARMUP}..{TRAIN_STEPS}; 10k: {TRAIN_STORIES} real training stories encoded by the run; 1M: those "
                     f"latents replicated {REPLICAS}x into the cache (not new text), read by the run as its corpus")
    results["train"] = rows


def part_app(args, results: dict) -> None:
    """The app under APP_CLIENTS clients at once, each request alone (the default) and batched (--max-batch)."""
    results["app"] = serve_clients(args, 1)
    log({k: v for k, v in results["app"].items() if k != "answers"}, "app")
    batched = serve_clients(args, APP_MAX_BATCH)
    alone = results["app"]["answers"]
    batched["same_text_as_alone"] = sum(alone.get(seed) == text for seed, text in batched["answers"].items()) / len(alone)
    results["app_batched"] = batched
    log({k: v for k, v in batched.items() if k != "answers"}, "app_batched")


def serve_clients(args, max_batch: int) -> dict:
    from gradio_client import Client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "latentdlm.cli", "app", "--model", str(pipeline_dir(args.ladder_dir, DESIGN)),
                               "--port", str(port), "--max-batch", str(max_batch)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        deadline = time.monotonic() + 300
        while True:
            try:
                Client(url, verbose=False)
                break
            except Exception:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the app did not start:\n{server.stderr.read()[-3000:]}")
                time.sleep(2)
        latencies, errors, answers = [], [], {}
        lock = threading.Lock()

        def client(index: int) -> None:
            connection = Client(url, verbose=False)
            for request in range(APP_REQUESTS):
                start = time.monotonic()
                try:
                    seed = index * 100 + request
                    text = connection.predict(1, 0, 10, "dpm", seed, api_name="/generate")
                    assert text.strip() and not text.startswith("error:"), f"answered {text[:200]!r}"
                    with lock:
                        latencies.append(time.monotonic() - start)
                        answers[str(seed)] = text
                except Exception as exc:
                    with lock:
                        errors.append(f"{type(exc).__name__}: {str(exc)[:200]}")

        started = time.monotonic()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(APP_CLIENTS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic() - started
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    ordered = sorted(latencies)
    return {"clients": APP_CLIENTS, "requests": APP_CLIENTS * APP_REQUESTS, "errors": len(errors), "error_examples": errors[:5],
            "max_batch": max_batch, "p50_seconds": ordered[len(ordered) // 2] if ordered else None,
            "p95_seconds": ordered[int(0.95 * (len(ordered) - 1))] if ordered else None,
            "wall_seconds": wall, "requests_per_s": len(latencies) / wall, "answers": answers,
            "setup": f"design {DESIGN}'s pipeline, one story per request (DPM-10), all clients at once on 127.0.0.1, "
                     f"--max-batch {max_batch}"}


def part_sampling(args, results: dict) -> None:
    from argparse import Namespace

    from reliability import part_rss

    part_rss(Namespace(work_dir=args.reliability_dir), results)  # its work folder's test-sized pipeline
    results["sampling"] = results.pop("rss")


def summary(results: dict) -> dict:
    out = dict.fromkeys(SUMMARY_KEYS)
    encode, train, app, sampling = (results.get(k, {}) for k in ("encode", "train", "app", "sampling"))
    if encode:
        out.update(encode_units_per_s_1proc=encode["1proc_2threads"]["units_per_s"], encode_units_per_s_2proc=encode["2proc_1thread"]["units_per_s"])
    if "kill_resume" in results:
        out["encode_kill_resume_exact"] = int(results["kill_resume"]["exact"])
    if train:
        out.update(rss_mb_train_10k=train["10k"]["peak_rss_mb"], rss_mb_train_1m=train["1m"]["peak_rss_mb"],
                   step_seconds_10k=train["10k"]["step_seconds"], step_seconds_1m=train["1m"]["step_seconds"])
    if app:
        out.update(app_clients=app["clients"], app_requests=app["requests"], app_errors=app["errors"], app_p95_seconds=app["p95_seconds"])
    marks = sampling.get("rss_mb", {})
    out.update(rss_mb_after_1k_samples=marks.get("after_1000"), rss_mb_after_10k_samples=marks.get("after_10000"))
    return out


def arguments(parser) -> None:
    parser.add_argument("--ladder-dir", type=Path, default=ROOT / "runs/ladder", help="the quality ladder's work folder (design e)")
    parser.add_argument("--reliability-dir", type=Path, default=ROOT / "runs/reliability", help="reliability.py's work folder")


if __name__ == "__main__":
    run_benchmark(__doc__, "scale", {"encode": part_encode, "kill_resume": part_kill_resume, "train": part_train, "app": part_app,
                                     "ae_stream": part_ae_stream,
                                     "sampling": part_sampling}, work_dir="runs/scale", summary=summary, arguments=arguments)
