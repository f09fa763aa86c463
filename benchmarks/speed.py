"""Speed (issue 25): latentdlm against the autoregressive peer, side by side in one run, by the same decoding rule.

    python benchmarks/speed.py --only PART [--only PART ...]   # parts, each merged into one JSON

Every system runs as it would for a user: LoRA merged into the frozen base (peft's merge), bf16 base weights (the
peer too: it trained on an fp32 base under bf16 autocast), 2 threads, the quality ladder's shared decoding rule.
The models are the quality ladder's (--work-dir, default runs/ladder): designs (c), (d) and (e) (one DiT serves
them all) and the peer's story adapter. (e) decodes every sentence of a story in one parallel pass, each reading the
whole story's latents (decoder_plan).

Parts:
  limit     SmolLM2-135M's seconds per decoding step (one new token per row after a 48-token context, KV cache) at
            batch 1 and 32, LoRA merged and not: the floor under both systems' time (at batch 1 reading the
            weights bounds a step, at batch 32 arithmetic does: compare the seconds per row)
  steps     the DiT's sampler chosen on validation: DPM-Solver++ 10 / 15 / 20 steps beside the ladder's DDPM 250,
            each --validation stories (default 500) of design (d) (the best design) against the validation stories;
            the fewest steps whose MAUVE (mpnet) is within 0.02 of the best of the three DPM arms
  frontier  stories per second at batch 1 and 32 of every design and the peer, interleaved rounds; the DiT's share of
            latentdlm's time (its forward passes, timed by hooks); sequential decoder steps per story (decoder forward
            passes per story at batch 1) and the ideal seconds per story they make at part limit's seconds per step;
            MAUVE (mpnet) + coherence of NUM_EVAL test stories of (d) and (e) with the chosen sampler (design (c) and the
            peer: their quality ladder rows, the same rule and test set). Every system decodes with `generate_tokens`
            (finished rows stop costing); the peer also with transformers' `generate` (every row until the longest ends)

Results: benchmarks/results/speed.json + speed.png (stories per second against MAUVE, batch 1 and 32).
"""

from __future__ import annotations

import statistics
import time

import plots
from flagship import load_adapter, peer_path, peer_tokenizer, pipeline_dir, shared_rule, latentdlm_generate, peer_generate
from quality_ladder import PLAN_SAMPLERS, plan_sampler
from runner import RESULTS_DIR, Results, load_pipeline, log, run_benchmark, timed, torch_threads
from scoring import NUM_EVAL, Scorer, rocstories

SUMMARY_KEYS = (
    "speedup_batch1_vs_peer", "throughput_ratio_batch32_vs_peer", "fast_design_mauve_mpnet", "best_design_mauve_mpnet",
    "decoder_steps_per_story_latentdlm", "decoder_steps_per_story_peer", "dit_share_of_time", "seconds_per_decoder_step_batch1",
)
DESIGNS = ("c", "d", "e")
SCORED = ("d", "e")  # designs whose quality this run measures with the chosen sampler; the others: their ladder rows
PEERS = ("peer", "peer_transformers_generate")
SAMPLER_STEPS = (10, 15, 20)
CONTEXT, TIMED_STEPS = 48, 24
MAUVE_SLACK = 0.05  # the "fast design": MAUVE within this of the best design's
EXAMPLES = 30  # stories of each scored design kept in the JSON, to read together


def ladder() -> dict:
    return Results(RESULTS_DIR / "quality_ladder.json")


def inference_peer(work):
    """The peer's story adapter on a bf16 base, merged: as fast as it can decode."""
    from latentdlm.hf_parts import merge_lora

    model = load_adapter(peer_path(work), dtype="bfloat16")
    merge_lora(model)
    return model


# ---- limit ------------------------------------------------------------------------------------------
def decoding_step_seconds(model, batch: int) -> float:
    """The median seconds of one decoding step (one new token per row) after a CONTEXT-token prefill, KV cached."""
    import torch

    with torch.no_grad():
        ids = torch.randint(100, 10000, (batch, CONTEXT))
        cache = model(input_ids=ids, use_cache=True).past_key_values
        token, seconds = ids[:, -1:], []
        for _ in range(TIMED_STEPS):
            start = time.perf_counter()
            out = model(input_ids=token, past_key_values=cache, use_cache=True)
            seconds.append(time.perf_counter() - start)
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
    return statistics.median(seconds[2:])


def part_limit(args, results: dict) -> None:
    torch_threads(2)
    rows = {}
    for merged in (False, True):
        model = inference_peer(args.work_dir) if merged else load_adapter(peer_path(args.work_dir), dtype="bfloat16")
        for batch in (1, 32):
            name = f"{'merged' if merged else 'adapters'}_batch_{batch}"
            step = decoding_step_seconds(model, batch)
            rows[name] = {"seconds_per_step": step, "seconds_per_row_step": step / batch}
            log(rows[name], name)
    for batch in (1, 32):
        rows[f"merge_speedup_batch_{batch}"] = rows[f"adapters_batch_{batch}"]["seconds_per_step"] / rows[f"merged_batch_{batch}"]["seconds_per_step"]
    rows["setup"] = (f"SmolLM2-135M (bf16 base) + the peer's LoRA r16, one new token per row after a {CONTEXT}-token context "
                     f"under a KV cache, median of {TIMED_STEPS - 2} steps, 2 threads")
    results["limit"] = rows


# ---- steps ------------------------------------------------------------------------------------------
def part_steps(args, results: dict) -> None:
    torch_threads(2)
    score = Scorer(rocstories().validation, rocstories().train)
    pipe = load_pipeline(pipeline_dir(args.work_dir, "d"))
    rule = shared_rule(ladder())
    samplers = {f"dpm_{n}": {"scheduler": "dpm", "num_inference_steps": n} for n in SAMPLER_STEPS} | {"ddpm_250": PLAN_SAMPLERS["ddpm_250"]}
    rows = results.get("steps")
    if not rows or rows["stories"] != args.validation:  # arms of another size are not compared with these
        rows = results["steps"] = {"design": "d", "stories": args.validation, "arms": {}}
    for name, sampler in samplers.items():
        if name in rows["arms"]:
            continue
        texts, seconds = timed(lambda: latentdlm_generate(pipe, args.validation, 64, 1, rule, sampler))
        row = score(texts)
        rows["arms"][name] = {**{k: row[k] for k in ("mauve_mpnet", "mauve_mpnet_std", "coherence_ratio", "diversity_set")},
                              "seconds_per_story": seconds / args.validation, "examples": texts[:3]}
        log(rows["arms"][name], name)
        results.save()
    dpm = {n: rows["arms"][f"dpm_{n}"]["mauve_mpnet"] for n in SAMPLER_STEPS}
    chosen = min(n for n in SAMPLER_STEPS if dpm[n] >= max(dpm.values()) - 0.02)
    rows["chosen"] = f"dpm_{chosen}"
    rows["quality_cost_vs_ddpm_250"] = rows["arms"]["ddpm_250"]["mauve_mpnet"] - dpm[chosen]


def chosen_sampler(results: dict) -> dict:
    name = results.get("steps", {}).get("chosen")
    return {"scheduler": "dpm", "num_inference_steps": int(name.split("_")[1])} if name else plan_sampler(ladder())


# ---- frontier ---------------------------------------------------------------------------------------
class Meter:
    """Forward passes of a module counted, and their seconds summed (hooks): the decoder's steps, the DiT's time."""

    def __init__(self, module):
        self.calls, self.seconds, self._start = 0, 0.0, None
        module.register_forward_pre_hook(self._begin)
        module.register_forward_hook(self._end)

    def _begin(self, *_):
        self._start = time.perf_counter()

    def _end(self, *_):
        self.calls += 1
        self.seconds += time.perf_counter() - self._start

    def reset(self) -> None:
        self.calls, self.seconds = 0, 0.0


def part_frontier(args, results: dict) -> None:
    from latentdlm.autoregressive import runner

    torch_threads(2)
    rule, sampler = shared_rule(ladder()), chosen_sampler(results)
    tokenizer, peer = peer_tokenizer(), inference_peer(args.work_dir)
    pipes = {design: load_pipeline(pipeline_dir(args.work_dir, design)) for design in DESIGNS}
    generate = {design: (lambda size, seed, p=pipe: latentdlm_generate(p, size, size, seed, rule, sampler)) for design, pipe in pipes.items()}
    for name, pruned in zip(PEERS, (True, False)):
        generate[name] = lambda size, seed, pruned=pruned: peer_generate(peer, tokenizer, [""] * size, size, seed, rule, finished_rows_stop=pruned)
    peer_meter = Meter(runner(peer))
    decoders = {design: Meter(runner(pipe.autoencoder.decoder.model)) for design, pipe in pipes.items()} | dict.fromkeys(PEERS, peer_meter)
    dits = {design: Meter(pipe.denoiser) for design, pipe in pipes.items()}
    step_seconds = results.get("limit", {}).get("merged_batch_1", {}).get("seconds_per_step")
    rows = {name: {} for name in generate}
    for batch, rounds in ((1, args.rounds_batch1), (32, args.rounds_batch32)):
        for fn in generate.values():
            fn(batch, 0)  # warm-up
        seconds = {name: [] for name in generate}
        steps = {name: [] for name in generate}
        dit_seconds = {name: 0.0 for name in dits}
        for round_ in range(1, rounds + 1):  # interleaved: the machine's drift hits every system alike
            for name, fn in generate.items():
                decoders[name].reset()
                if name in dits:
                    dits[name].reset()
                _, took = timed(lambda: fn(batch, round_))
                seconds[name].append(took)
                steps[name].append(decoders[name].calls)
                if name in dits:
                    dit_seconds[name] += dits[name].seconds
        for name in generate:
            row = {"stories_per_s": batch * rounds / sum(seconds[name]), "seconds_per_call": seconds[name],
                   "decoder_steps_per_call": statistics.mean(steps[name])}
            if name in dits:
                row["dit_share_of_time"] = dit_seconds[name] / sum(seconds[name])
            if batch == 1 and step_seconds:  # the floor: its sequential steps at one row's step time
                row["ideal_seconds_per_story"] = row["decoder_steps_per_call"] * step_seconds
            rows[name][f"batch_{batch}"] = row
            log(row, f"{name} batch {batch}")
    score = Scorer(rocstories().test, rocstories().train)
    uncond = ladder()["uncond"]["systems"]
    earlier = results.get("frontier", {}).get("systems", {})
    for name in rows:
        if args.timing_only and "quality" in earlier.get(name, {}):  # the same models and sampler: quality as measured before
            rows[name]["quality"] = earlier[name]["quality"]
        elif name in SCORED:
            texts = latentdlm_generate(pipes[name], NUM_EVAL, 64, 0, rule, sampler)
            row = score(texts)
            rows[name]["quality"] = {"mauve_mpnet": row["mauve_mpnet"], "mauve_mpnet_std": row["mauve_mpnet_std"],
                                     "mauve_minilm": row["mauve_minilm"], "coherence_ratio": row["coherence_ratio"],
                                     "diversity_set": row["diversity_set"], "from": f"this run, {sampler}", "examples": texts[:EXAMPLES]}
        else:
            ladder_row = uncond["peer" if name in PEERS else name]
            rows[name]["quality"] = {k: ladder_row[k] for k in ("mauve_mpnet", "mauve_mpnet_std", "coherence_ratio")} | {
                "from": "quality_ladder.json uncond (fp32 base, adapters unmerged; the same rule and test stories)"}
        log({k: v for k, v in rows[name]["quality"].items() if k != "examples"}, f"{name} quality")
    results["frontier"] = {"decoding": rule, "sampler": sampler, "systems": rows,
                           "setup": f"batch 1: {args.rounds_batch1} rounds, batch 32: {args.rounds_batch32} rounds, one call per "
                                    "system per round, interleaved, after one warm-up call each; 2 threads"}


def fast_and_best(results: dict) -> tuple[str, str] | None:
    """(the fast design: the fastest at batch 1 whose MAUVE is within MAUVE_SLACK of the best design's, the best design)."""
    systems = results.get("frontier", {}).get("systems", {})
    designs = {name: row for name, row in systems.items() if name not in PEERS}
    if not designs:
        return None
    best = max(designs, key=lambda n: designs[n]["quality"]["mauve_mpnet"])
    near = [n for n in designs if designs[n]["quality"]["mauve_mpnet"] >= designs[best]["quality"]["mauve_mpnet"] - MAUVE_SLACK]
    return max(near, key=lambda n: designs[n]["batch_1"]["stories_per_s"]), best


def summary(results: dict) -> dict:
    out = dict.fromkeys(SUMMARY_KEYS)
    if "limit" in results:
        out["seconds_per_decoder_step_batch1"] = results["limit"]["merged_batch_1"]["seconds_per_step"]
    chosen = fast_and_best(results)
    if chosen:
        systems, (fast, best) = results["frontier"]["systems"], chosen
        peer = systems["peer"]
        out.update(
            speedup_batch1_vs_peer=systems[fast]["batch_1"]["stories_per_s"] / peer["batch_1"]["stories_per_s"],
            throughput_ratio_batch32_vs_peer=systems[fast]["batch_32"]["stories_per_s"] / peer["batch_32"]["stories_per_s"],
            fast_design_mauve_mpnet=systems[fast]["quality"]["mauve_mpnet"], best_design_mauve_mpnet=systems[best]["quality"]["mauve_mpnet"],
            decoder_steps_per_story_latentdlm=systems[fast]["batch_1"]["decoder_steps_per_call"],
            decoder_steps_per_story_peer=peer["batch_1"]["decoder_steps_per_call"],
            dit_share_of_time=systems[fast]["batch_1"]["dit_share_of_time"],
        )
    return out


def arguments(parser) -> None:
    parser.add_argument("--validation", type=int, default=500, help="steps: stories per sampler arm (default %(default)s)")
    parser.add_argument("--rounds-batch1", type=int, default=8, help="frontier: timed calls per system at batch 1 (default %(default)s)")
    parser.add_argument("--rounds-batch32", type=int, default=2, help="frontier: timed calls per system at batch 32 (default %(default)s)")
    parser.add_argument("--timing-only", action="store_true", help="frontier: time again, keep the quality rows of the last run "
                        "(the same models and sampler: after a change of speed only)")


if __name__ == "__main__":
    run_benchmark(__doc__, "speed", {"limit": part_limit, "steps": part_steps, "frontier": part_frontier},
                  work_dir="runs/ladder", summary=summary, plot=plots.speed, arguments=arguments)
