"""The latent DiT's noise schedule on concept latents, chosen on validation: `objective.noise_shift`.

    python benchmarks/concept_schedule.py --only schedule --only shift_1 --only shift_2 --only shift_4

Two sentence latents become distinguishable only at high noise (logSNR between -6 and -3 for 384-d MiniLM
embeddings): with the plain cosine schedule that band gets a small share of the training draws and of the
sampler's steps, and it is where a paragraph's plan is made. A shift s divides the SNR by s^2 (simple
diffusion), which widens that share. Parts (each reuses what the earlier ones saved under --work-dir):
  schedule  the share of training timesteps and of the 20 DPM steps inside that band, for every shift
  shift_S   the demo's DiT (configs/diffusion/concept.yaml, the shipped decoder adapter, bundled corpus,
            --dit-minutes) trained with noise_shift S, scored on the validation half of its held-out
            paragraphs (the half demo_heldout chooses its decoding on; the other half stays for the test):
            the plan alone (each sampled sentence latent replaced by its nearest training sentence: MAUVE
            (mpnet), coherence ratio), the consecutive-latent cosine against the real paragraphs', and with
            --end-to-end the samples decoded by the pipeline's decoding; the held-out denoising loss beside it
            (not comparable across shifts: each weights the noise levels differently)
Results: benchmarks/results/concept_schedule.json; the summary names the shift with the best validation
MAUVE (mpnet) + coherence ratio (end to end where every shift was decoded, else on the plan alone).
"""

from __future__ import annotations

import json

from runner import ROOT, load_pipeline, log, run_benchmark, run_cli, torch_threads
from scoring import Scorer, consecutive_latent_cosine, heldout_halves, plan_retrieval, segment_bank

SHIFTS = (1, 2, 4)
BAND = (-6.0, -3.0)  # logSNR where two sentence latents become distinguishable
CONFIG = ROOT / "configs" / "diffusion" / "concept.yaml"


def part_schedule(args, results: dict) -> None:
    from latentdlm.diffusion.schedulers import make_scheduler, training_scheduler

    rows = results["schedule"] = {"band_logsnr": list(BAND), "shifts": {}}
    for shift in SHIFTS:
        train = training_scheduler("v_prediction", noise_shift=shift)
        log_snr = (train.alphas_cumprod / (1 - train.alphas_cumprod)).log()
        inside = (log_snr >= BAND[0]) & (log_snr <= BAND[1])
        sampler = make_scheduler("dpm", train)
        sampler.set_timesteps(20)
        rows["shifts"][str(shift)] = {"training_share": float(inside.double().mean()),
                                      "sampler_steps": int(inside[sampler.timesteps.long()].sum())}
    log(rows)


def shift_part(shift: int):
    def part(args, results: dict) -> None:
        from latentdlm.demo import ADAPTER

        run = args.work_dir / f"shift_{shift}"
        if not (run / "pipeline").exists():
            run_cli(["train-diffusion", "--config", str(CONFIG), f"autoencoder={ADAPTER}", f"objective.noise_shift={shift}",
                     f"training.output_dir={run}", f"training.max_minutes={args.dit_minutes}", "training.overwrite_output_dir=true"],
                    args.work_dir / f"shift_{shift}.log")
        validation, _, training = heldout_halves(run)
        score, pipe = Scorer(validation, training), load_pipeline(run / "pipeline")
        sampled = pipe(num_samples=len(validation), num_inference_steps=20, scheduler="dpm", seed=1, batch_size=64,
                       show_progress=False, output_type="latent")
        real = pipe.encode(validation)
        plan = plan_retrieval(*segment_bank(pipe, training), sampled)
        info = json.loads((run / "run_info.json").read_text())
        row = results.setdefault("shifts", {})[str(shift)] = {
            "steps": info["final_step"], "heldout_loss": info.get("heldout_loss"),
            "plan_retrieval": {**score(plan), "examples": plan[:3]},
            "consecutive_latent_cosine": {"samples": consecutive_latent_cosine(sampled.latents, sampled.segment_mask),
                                          "real_paragraphs": consecutive_latent_cosine(real.latents, real.segment_mask)},
        }
        log({k: row[k] for k in ("steps", "heldout_loss", "consecutive_latent_cosine")}, f"shift {shift}")
        log(row["plan_retrieval"], "plan retrieval")
        if args.end_to_end:
            texts = pipe(num_samples=len(validation), num_inference_steps=20, scheduler="dpm", seed=1, batch_size=32,
                         show_progress=False).texts
            row["end_to_end"] = {**score(texts), "decoding": pipe.decoding.to_dict(), "examples": texts[:2] + texts[-2:]}
            log(row["end_to_end"], "end to end")

    return part


def summary(results: dict) -> dict:
    """The shift with the best validation MAUVE (mpnet) + coherence ratio: end to end where every shift has
    been decoded, else on the plan alone (stated as `chosen_on`)."""
    shifts = results.get("shifts", {})
    if not shifts:
        return {"chosen_noise_shift": None}
    chosen_on = "end_to_end" if all("end_to_end" in r for r in shifts.values()) else "plan_retrieval"
    quality = {s: r[chosen_on]["mauve_mpnet"] + r[chosen_on]["coherence_ratio"] for s, r in shifts.items()}
    best = max(quality, key=quality.get)
    return {"chosen_noise_shift": float(best), "chosen_on": chosen_on, "validation_mauve_mpnet": shifts[best][chosen_on]["mauve_mpnet"],
            "validation_coherence_ratio": shifts[best][chosen_on]["coherence_ratio"], "shifts_measured": sorted(shifts)}


def arguments(parser) -> None:
    parser.add_argument("--dit-minutes", type=float, default=5.0, help="each DiT's training budget (the demo's 5 by default)")
    parser.add_argument("--end-to-end", action="store_true", help="also decode each shift's samples (about 12 CPU minutes each)")


if __name__ == "__main__":
    torch_threads(2)
    run_benchmark(__doc__, "concept_schedule", {"schedule": part_schedule, **{f"shift_{s}": shift_part(s) for s in SHIFTS}},
                  work_dir="runs/concept_schedule", summary=summary, arguments=arguments)
