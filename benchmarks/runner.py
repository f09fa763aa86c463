"""The benchmarks' one runner, and the plumbing they share.

A benchmark is a dict of named parts, `part(args, results)`, each writing what it measures into `results`:
the benchmark's JSON file under benchmarks/results/, loaded as it stands (parts not run this time are kept).
`run_benchmark` parses the common arguments (the parts, --work-dir) and the benchmark's own, runs the
chosen parts in the order given and saves after each (a part may also `results.save()` mid-way): the file
is written atomically with its `summary` recomputed and its plot redrawn, so a killed run loses nothing saved.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))  # this checkout's latentdlm before an installed one
sys.path.insert(0, str(ROOT / "benchmarks"))  # the benchmarks import each other, also when imported from elsewhere


class Results(dict):
    def __init__(self, path: Path, summary=None, plot=None):
        super().__init__(json.loads(path.read_text()) if path.exists() else {})
        self.path, self.summarize, self.plot = path, summary, plot

    def save(self) -> None:
        """Written atomically (a temporary file renamed over it), with a fresh `summary` and then the plot
        beside it (.png) where the benchmark has them."""
        if self.summarize:
            self["summary"] = self.summarize(self)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self, indent=2))
        os.replace(partial, self.path)
        if self.plot:
            self.plot(self, self.path.with_suffix(".png"))


def run_benchmark(doc: str, name: str, parts: dict, *, work_dir: str, summary=None, plot=None, arguments=None,
                  setup=None, report=None, select: str = "--only", required: bool = True) -> Results:
    """Benchmark `name`'s command line: parts chosen with `--only PART` (repeatable; all when not `required`)
    or, with another `select` flag, as one list (`--modes a b`, default all); `arguments(parser)` adds its own
    options, `setup(args, results)` runs before the first part; at the end `report(results)` (default: the
    summary) is printed, and where the results went."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = list(parts)
    if select == "--only":
        parser.add_argument("--only", action="append", choices=names, required=required,
                            help="run this part (repeatable)" + ("" if required else "; default: all, in order"))
    else:
        parser.add_argument(select, nargs="+", default=names, choices=names, help="default: all, in order")
    parser.add_argument("--work-dir", type=Path, default=work_dir, help="where the runs and models go (default: %(default)s)")
    if arguments:
        arguments(parser)
    args = parser.parse_args()
    dest = select.lstrip("-").replace("-", "_")
    setattr(args, dest, getattr(args, dest) or names)
    results = Results(RESULTS_DIR / f"{name}.json", summary, plot)
    if setup:
        setup(args, results)
    for part in getattr(args, dest):
        print(f"==== part {part}", flush=True)
        parts[part](args, results)
        results.save()
    if report:
        report(results)
    elif "summary" in results:
        print(json.dumps(results["summary"], indent=2))
    print(f"results: {results.path}", flush=True)
    return results


def torch_threads(count: int, flush_denormal: bool = True) -> None:
    import torch

    torch.set_num_threads(count)
    if flush_denormal:
        torch.set_flush_denormal(True)


# ---- plumbing ----------------------------------------------------------------------------------------
def run_cli(args: list[str], log: Path) -> None:
    """`latentdlm ARGS` in its own process (one torch job on the cores at a time), its output in `log`."""
    proc = subprocess.run([sys.executable, "-m", "latentdlm.cli", *args], capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"`latentdlm {args[0]}` failed, see {log}:\n{proc.stderr[-2000:]}")


def last_record(run: Path) -> dict:
    """Steps, final loss and training minutes of a run, summed over its resumed parts (each restarts the clock)."""
    from latentdlm.training.loop import logged_minutes, read_metrics

    records = [r for r in read_metrics(run) if "loss" in r]
    return {"train_minutes": logged_minutes(records), "steps": records[-1]["step"], "final_loss": records[-1]["loss"]}


def load_pipeline(folder: Path):
    """A saved latentdlm pipeline (imported when first needed: --help stays quick)."""
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    return LatentDiffusionTextPipeline.from_pretrained(folder)


def timed(fn):
    """(fn(), its wall seconds)."""
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def log(row: dict, name: str | None = None) -> None:
    """One measured row on stdout as JSON, without its examples (under `name` when given)."""
    row = {k: v for k, v in row.items() if k != "examples"}
    print(json.dumps({name: row} if name is not None else row), flush=True)
