"""Guidance through diffusers guiders chosen by name (cfg, apg): the combination, the rescale over real
latents only, APG's momentum per run, and APG end to end on the saved tiny conditional pipelines."""

import json
from pathlib import Path

import pytest
import torch
from diffusers.guiders.guider_utils import rescale_noise_cfg

from latentdlm.cli import main
from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.sampling import GUIDANCE_METHODS, ClassifierGuidance, Held, RowGuidance, StepHook, make_guider, sample_latents
from latentdlm.diffusion.schedulers import make_scheduler, training_scheduler
from latentdlm.errors import LatentDLMError
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden"
D = 8


def guided(method, scale, rescale, cond, null, mask, steps=1):
    """The guidance of `steps` sampler steps on the same predictions (one run: one RowGuidance)."""
    guidance = RowGuidance(make_guider(method, scale, rescale), mask)
    return [guidance(cond, null, step, steps, torch.tensor(999 - step)) for step in range(steps)]


def predictions(rows=3, length=12):
    torch.manual_seed(0)
    mask = torch.zeros(rows, length, dtype=torch.bool)
    for row, count in enumerate([length, 8, 4][:rows]):
        mask[row, :count] = True
    return torch.randn(rows, length, D), torch.randn(rows, length, D), mask


def test_cfg_through_the_guider_is_null_plus_scale_times_the_difference():
    cond, null, mask = predictions()
    for scale in (0.0, 2.0, 7.5):
        (out,) = guided("cfg", scale, 0.0, cond, null, mask)
        torch.testing.assert_close(out, null + scale * (cond - null), rtol=0, atol=1e-6)  # padded positions too
    cond, null = torch.tensor([[[1.0, 2.0]]]), torch.tensor([[[0.5, -1.0]]])
    (out,) = guided("cfg", 3.0, 0.0, cond, null, torch.ones(1, 1, dtype=torch.bool))
    assert out.tolist() == [[[2.0, 8.0]]]  # 0.5 + 3 * 0.5, -1 + 3 * 3


def test_the_rescale_measures_each_rows_std_over_its_real_latents_only():
    cond, null, mask = predictions()
    (out,) = guided("cfg", 3.0, 0.7, cond, null, mask)
    # wild values at the padded positions change nothing at the real ones
    wild_cond, wild_null = cond.masked_fill(~mask[..., None], 100.0), null.masked_fill(~mask[..., None], -100.0)
    (wild,) = guided("cfg", 3.0, 0.7, wild_cond, wild_null, mask)
    torch.testing.assert_close(wild[mask], out[mask], rtol=0, atol=1e-5)
    # each row is diffusers' rescale of that row's real latents alone ...
    plain = null + 3.0 * (cond - null)
    for row, count in enumerate(mask.sum(dim=1).tolist()):
        alone = rescale_noise_cfg(plain[row : row + 1, :count], cond[row : row + 1, :count], 0.7)
        torch.testing.assert_close(out[row : row + 1, :count], alone, rtol=0, atol=1e-6)
        # ... and its padded positions are scaled with it, as before the guiders
        std_cond, std_plain = cond[row, :count].std(), plain[row, :count].std()
        gain = 0.7 * std_cond / std_plain + 0.3
        torch.testing.assert_close(out[row, count:], plain[row, count:] * gain, rtol=0, atol=1e-5)
    # fully rescaled, the real latents have the conditional prediction's std
    (full,) = guided("cfg", 3.0, 1.0, cond, null, mask)
    for row, count in enumerate(mask.sum(dim=1).tolist()):
        torch.testing.assert_close(full[row, :count].std(), cond[row, :count].std(), rtol=0, atol=1e-5)


def test_apg_differs_from_cfg_keeps_momentum_within_a_run_and_starts_afresh_each_run():
    cond, null, mask = predictions()
    (cfg,) = guided("cfg", 3.0, 0.0, cond, null, mask)
    first, second = guided("apg", 3.0, 0.0, cond, null, mask, steps=2)
    assert not torch.allclose(first[mask], cfg[mask], atol=1e-3)
    assert not torch.allclose(second[mask], first[mask], atol=1e-3)  # momentum: the same inputs guide differently
    assert torch.equal(guided("apg", 3.0, 0.0, cond, null, mask, steps=2)[1], second)  # a fresh state per run
    # a row's guidance ignores padding and the batch it is in
    (alone,) = guided("apg", 3.0, 0.0, cond[1:2, :8], null[1:2, :8], mask[1:2, :8])
    torch.testing.assert_close(first[1:2, :8], alone, rtol=0, atol=1e-6)


def test_an_unknown_guidance_method_names_the_known_ones(tmp_path, capsys):
    with pytest.raises(LatentDLMError, match="unknown guidance method 'pag'; choose one of cfg, apg"):
        make_guider("pag", 2.0)
    assert list(GUIDANCE_METHODS) == ["cfg", "apg"] and make_guider("apg", 1.0) is None  # scale 1: no guidance
    pipe = LatentDiffusionTextPipeline.from_pretrained(GOLDEN / "class")
    with pytest.raises(LatentDLMError, match="unknown guidance method 'pag'"):
        pipe(num_samples=1, num_inference_steps=2, class_labels="novel", guidance_scale=2.0, guidance_method="pag", show_progress=False)
    assert main(["generate", "--model", str(GOLDEN / "class"), "--class-label", "novel", "--guidance-scale", "2",
                 "--guidance-method", "pag", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "unknown guidance method 'pag'; choose one of cfg, apg" in err and "Traceback" not in err


def test_apg_samples_end_to_end_through_the_pipeline_and_the_cli(tmp_path):
    pipe = LatentDiffusionTextPipeline.from_pretrained(GOLDEN / "class")
    call = dict(num_samples=3, num_inference_steps=4, seed=0, class_labels="novel", guidance_scale=3.0, return_latents=True,
                show_progress=False)
    apg, cfg = pipe(**call, guidance_method="apg"), pipe(**call)
    assert torch.isfinite(apg.latents).all() and all(text.strip() for text in apg.texts)
    assert torch.equal(apg.segment_mask, cfg.segment_mask)  # the same lengths, drawn before sampling
    assert not torch.allclose(apg.latents[apg.segment_mask], cfg.latents[cfg.segment_mask], atol=1e-3)
    assert torch.equal(pipe(**call, guidance_method="apg").latents, apg.latents)  # repeatable: no state across calls
    assert len(pipe.vary(apg.texts[0], strength=0.5, num_samples=2, num_inference_steps=4, seed=0, class_labels="novel",
                         guidance_scale=3.0, guidance_method="apg")) == 2
    target = tmp_path / "apg.jsonl"
    assert main(["generate", "--model", str(GOLDEN / "class"), "--class-label", "novel", "--guidance-scale", "3",
                 "--guidance-method", "apg", "--steps", "4", "--num-samples", "3", "--seed", "0", "--output", str(target)]) == 0
    assert [json.loads(line)["text"] for line in target.read_text().splitlines()] == apg.texts
    summaries = tmp_path / "summaries.jsonl"
    assert main(["summarize", "--model", str(GOLDEN / "cond"), "--text", "The Lion and the Mouse", "--guidance-scale", "2",
                 "--guidance-method", "apg", "--steps", "3", "--output", str(summaries)]) == 0
    assert json.loads(summaries.read_text())["summary"].strip()


def test_hooks_compose_with_one_sampling_loop():
    """Classifier guidance adjusts each output, RePaint holds latents and repeats steps, a guider mixes
    the branches: all at once, in one loop."""
    torch.manual_seed(0)
    dit = LatentDiT(latent_dim=D, num_latents=2, max_segments=3, hidden_size=16, num_layers=1, num_heads=2, class_names=["a", "b"])
    torch.nn.init.normal_(dit.proj_out.weight, std=0.2)

    class Counter(StepHook):
        calls = 0

        def adjust_output(self, scheduler, output, latents, t, latent_mask):
            self.calls += 1
            return output

    mask = torch.ones(2, 6, dtype=torch.bool)
    held_mask = torch.zeros(2, 6, dtype=torch.bool)
    held_mask[:, :2] = True
    values = torch.randn(2, 6, D)
    toy = lambda x, t, m: torch.stack([x.sum(dim=(1, 2)), torch.zeros(len(x))], dim=1)  # noqa: E731
    counter = Counter()
    hooks = [ClassifierGuidance(toy, torch.tensor([0, 0]), 1.0), Held(values, held_mask, resample=2), counter]
    latents = sample_latents(dit, make_scheduler("ddim", training_scheduler("v_prediction")), mask, 3, torch.Generator().manual_seed(0),
                             {"class_labels": torch.tensor([0, 1])}, make_guider("apg", 2.0), hooks)
    assert counter.calls == 3 * 2  # every step, run twice
    assert torch.equal(latents[held_mask], values[held_mask]) and torch.isfinite(latents).all()
