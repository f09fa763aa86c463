"""`latentdlm train-diffusion` / `generate` / `demo` end to end on tiny models: the one-folder
pipeline, class-conditional runs, resume, 2-process DDP, bad input, and the generation metrics."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import launch_two_cpu_processes, tiny_diffusion_overrides, tiny_overrides
from safetensors.torch import load_file

import latentdlm.demo
from latentdlm.cli import main
from latentdlm.config import load_config, save_config
from latentdlm.data.sources import load_labeled_texts, load_texts
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.generation import distinct_n, diversity, mauve_score, memorization, repetition
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
from latentdlm.training.autoencoder import AutoencoderTrainConfig
from latentdlm.training.diffusion import DiffusionTrainConfig

ROOT = Path(__file__).resolve().parents[1]
AE_TINY = str(ROOT / "configs/autoencoder/tiny.yaml")
DM_TINY = str(ROOT / "configs/diffusion/tiny.yaml")


def train(autoencoder, out, *extra, resume=False):
    args = ["train-diffusion", "--config", DM_TINY, *(["--resume"] if resume else [])]
    return main(args + tiny_diffusion_overrides(autoencoder, out) + list(extra))


def records(out, name="metrics.jsonl"):
    return [json.loads(line) for line in (Path(out) / name).read_text().splitlines()]


def test_training_saves_one_pipeline_folder_with_samples_and_curves(pipeline_dir):
    out = pipeline_dir.parent
    assert sorted(p.name for p in pipeline_dir.iterdir()) == ["autoencoder", "denoiser", "model_index.json", "scheduler"]
    assert [r["step"] for r in records(out) if "loss" in r] == [1, 2, 3, 4]
    assert any("eval/distinct_2" in r for r in records(out))
    assert {r["step"] for r in records(out, "samples.jsonl")} == {2, 4}  # periodic + final samples
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "latents.json").read_text())["texts"] == 64
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    assert pipe.denoiser.latent_std.abs().sum() > 0  # statistics of the training latents travel with the model


def test_pipeline_round_trip_is_exact(pipeline_dir, tmp_path):
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    pipe.save_pretrained(tmp_path / "copy")
    again = LatentDiffusionTextPipeline.from_pretrained(tmp_path / "copy")
    for name, tensor in pipe.denoiser.state_dict().items():
        assert torch.equal(tensor, again.denoiser.state_dict()[name]), name
    for name, tensor in pipe.autoencoder.state_dict().items():
        assert torch.equal(tensor, again.autoencoder.state_dict()[name]), name
    assert again.sampler_name == pipe.sampler_name
    a = pipe(num_samples=3, num_inference_steps=3, seed=5, return_latents=True, show_progress=False)
    b = again(num_samples=3, num_inference_steps=3, seed=5, return_latents=True, show_progress=False)
    assert a.texts == b.texts and torch.equal(a.latents, b.latents) and torch.equal(a.segment_mask, b.segment_mask)
    assert a.latents.shape[0] == 3 and torch.isfinite(a.latents).all()


def test_saved_pipeline_holds_the_ema_weights(pipeline_dir):
    """The final pipeline is the EMA of the trained weights (kept in every checkpoint), not the raw weights."""
    checkpoint = pipeline_dir.parent / "checkpoints" / "step-4"
    ema = torch.load(checkpoint / "custom_checkpoint_0.pkl", weights_only=False)["shadow_params"]
    raw = load_file(checkpoint / "model.safetensors")
    denoiser = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir).denoiser
    names = [name for name, _ in denoiser.named_parameters()]
    for name, param, shadow in zip(names, denoiser.parameters(), ema):
        assert torch.equal(param, shadow), name
    assert any(not torch.equal(raw[name], param) for name, param in zip(names, denoiser.parameters()))


@pytest.mark.parametrize("scheduler", ["ddpm", "ddim", "dpm"])
def test_generate_command_prints_and_writes(pipeline_dir, tmp_path, capsys, scheduler):
    args = ["generate", "--model", str(pipeline_dir), "--num-samples", "3", "--steps", "3", "--seed", "1",
            "--scheduler", scheduler]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert main(args + ["--output", str(tmp_path / "out.jsonl")]) == 0
    rows = records(tmp_path, "out.jsonl")
    assert len(rows) == 3 and all(isinstance(r["text"], str) for r in rows)
    assert all(r["text"] in printed for r in rows if r["text"])  # same seed, same texts


def test_length_control_fixes_the_number_of_segments(pipeline_dir):
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    out = pipe(num_samples=4, num_inference_steps=2, seed=0, num_segments=2, return_latents=True, show_progress=False)
    assert out.segment_mask.sum(dim=1).tolist() == [2, 2, 2, 2]
    batched = pipe(num_samples=4, num_inference_steps=2, seed=0, num_segments=2, batch_size=4, show_progress=False)
    in_twos = pipe(num_samples=4, num_inference_steps=2, seed=0, num_segments=2, batch_size=2, show_progress=False)
    assert len(batched.texts) == len(in_twos.texts) == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-samples", "0"], "number of samples must be at least 1"),
        (["--steps", "-1"], "number of inference steps must be at least 1"),
        (["--guidance-scale", "3"], "guidance needs a conditional model"),
        (["--class-label", "World"], "trained without class labels"),
        (["--num-segments", "99"], "number of segments must be within"),
    ],
)
def test_generate_bad_input(pipeline_dir, capsys, args, message):
    assert main(["generate", "--model", str(pipeline_dir), "--steps", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_pipeline_folder_with_a_missing_part(pipeline_dir, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(pipeline_dir, broken)
    shutil.rmtree(broken / "denoiser")
    assert main(["generate", "--model", str(broken)]) == 2
    assert "misses its denoiser part" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nothing")]) == 2
    assert "is not a latentdlm pipeline folder" in capsys.readouterr().err


def test_an_autoencoder_and_denoiser_whose_shapes_disagree(pipeline_dir, autoencoder, tmp_path):
    from latentdlm.autoencoder.model import ParagraphAutoencoder

    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    other = tmp_path / "other-ae"
    assert main(["train-autoencoder", "--config", AE_TINY,
                 *tiny_overrides(other, **{"model.latent_dim": 6, "training.max_steps": 1})]) == 0
    with pytest.raises(LatentDLMError, match="latent"):
        LatentDiffusionTextPipeline(ParagraphAutoencoder.from_pretrained(other / "autoencoder"), pipe.denoiser, pipe.scheduler)


def test_an_existing_run_is_never_overwritten(autoencoder, pipeline_dir, capsys):
    before = (pipeline_dir / "denoiser" / "diffusion_pytorch_model.safetensors").read_bytes()
    assert train(autoencoder, pipeline_dir.parent) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (pipeline_dir / "denoiser" / "diffusion_pytorch_model.safetensors").read_bytes() == before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["denoiser.hidden_sise=8"], "unknown config key 'denoiser.hidden_sise'"),
        (["data.label_column=topic"], "column 'topic' not found"),
        (["sampling.scheduler=euler"], "unknown scheduler 'euler'"),
        (["objective.prediction_type=score"], "unknown prediction type 'score'"),
        (["training.batch_size=1000"], "fewer than one batch"),
        (["denoiser.patch_size=3"], "patch_size 3 does not divide"),
    ],
)
def test_bad_training_input_is_one_clear_error(autoencoder, tmp_path, capsys, extra, message):
    assert train(autoencoder, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "pipeline").exists()


def test_a_folder_that_is_not_an_autoencoder(tmp_path, capsys):
    assert train(tmp_path / "nothing", tmp_path / "run") == 2
    assert "Traceback" not in capsys.readouterr().err


def test_resume_continues_from_the_saved_step_exactly(autoencoder, tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["training.lr_scheduler=constant"]
    assert train(autoencoder, straight, *common) == 0
    assert train(autoencoder, split, "training.max_steps=2", *common) == 0
    assert train(autoencoder, split, *common, resume=True) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in records(split) if "loss" in r] == [1, 2, 3, 4]
    # same data order, RNG, optimizer and EMA state: the resumed run ends with the same (EMA) weights
    name = "denoiser/diffusion_pytorch_model.safetensors"
    a, b = load_file(straight / "pipeline" / name), load_file(split / "pipeline" / name)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


def _labeled_csv(path: Path) -> Path:
    rows = [(t, "fable") for t in load_texts("bundled:aesop", limit=24)]
    rows += [(t, "novel") for t in load_texts("bundled:austen", limit=24)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["content", "topic"])
        writer.writerows(rows)
    return path


def test_class_conditional_training_and_guided_generation(autoencoder, tmp_path, capsys):
    data = _labeled_csv(tmp_path / "labeled.csv")
    out = tmp_path / "cond"
    assert train(autoencoder, out, f"data.source={data}", "data.column=content", "data.label_column=topic",
                 "data.limit=null", "sampling.guidance_scale=2", "training.eval_every=2") == 0
    pipe = LatentDiffusionTextPipeline.from_pretrained(out / "pipeline")
    assert pipe.denoiser.config.class_names == ["fable", "novel"]
    assert {r["class_label"] for r in records(out, "samples.jsonl")} == {"fable", "novel"}
    capsys.readouterr()
    target = tmp_path / "fables.jsonl"
    assert main(["generate", "--model", str(out / "pipeline"), "--num-samples", "2", "--steps", "2",
                 "--class-label", "fable", "--guidance-scale", "3", "--guidance-rescale", "0.7",
                 "--output", str(target)]) == 0
    assert [r["class_label"] for r in records(tmp_path, "fables.jsonl")] == ["fable", "fable"]
    assert main(["generate", "--model", str(out / "pipeline"), "--class-label", "poem", "--steps", "2"]) == 2
    err = capsys.readouterr().err
    assert "unknown class label 'poem'" in err and "fable, novel" in err


def test_two_process_cpu_ddp_through_accelerate_launch(autoencoder, tmp_path):
    out = tmp_path / "ddp"
    overrides = tiny_diffusion_overrides(autoencoder, out, **{"training.batch_size": 4, "training.max_steps": 3})
    info = launch_two_cpu_processes("train_diffusion.py", DM_TINY, overrides, out)
    assert info["world_size"] == 2
    model_0, model_1, ema_0, ema_1 = info["rank_weight_checksums"]
    assert model_0 == model_1 and ema_0 == ema_1  # all-reduced gradients, EMA stepped alike on every rank
    assert LatentDiffusionTextPipeline.from_pretrained(out / "pipeline").denoiser.config.num_latents == 4


def test_labels_from_a_column_or_the_first_word(tmp_path):
    data = _labeled_csv(tmp_path / "labeled.csv")
    pairs = load_labeled_texts(str(data), "content", "topic")
    assert len(pairs) == 48 and pairs[0][1] == "fable" and pairs[-1][1] == "novel"
    sst = tmp_path / "sst.txt"
    sst.write_text("1 a gripping , funny film .\n0 dull .\n")
    assert load_labeled_texts(str(sst), None, "first_word") == [("a gripping , funny film .", "1"), ("dull .", "0")]
    sst.write_text("1 fine .\n0\n")
    with pytest.raises(LatentDLMError, match="has a label but no text"):
        load_labeled_texts(str(sst), None, "first_word")


def test_demo_runs_end_to_end_and_writes_a_report(autoencoder, tmp_path, monkeypatch, capsys):
    presets = {}
    for name, cls, path, overrides in [
        ("autoencoder", AutoencoderTrainConfig, AE_TINY, tiny_overrides("unused")),
        ("diffusion", DiffusionTrainConfig, DM_TINY, tiny_diffusion_overrides("unused", "unused")),
    ]:
        presets[name] = tmp_path / f"{name}.yaml"
        save_config(load_config(cls, path, overrides), presets[name])
    monkeypatch.setattr(latentdlm.demo, "PRESETS", presets)
    out = tmp_path / "demo"
    args = ["demo", "--output-dir", str(out), "--autoencoder-minutes", "1", "--diffusion-minutes", "1", "--num-samples", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "## 1. Paragraph autoencoder" in report and "Diversity" in report
    assert all(f"\n{i}. " in report for i in (1, 2, 3))  # the three samples
    for image in ("autoencoder-run/training_curves.png", "diffusion-run/training_curves.png"):
        assert image in report and (out / image).exists()
    assert "latentdlm generate --model" in printed
    assert LatentDiffusionTextPipeline.from_pretrained(out / "diffusion-run" / "pipeline")
    before = (out / "report.md").read_text()
    assert main(args) == 2  # never replaces a finished demo without --overwrite
    assert "--overwrite" in capsys.readouterr().err and (out / "report.md").read_text() == before


def test_generation_metrics_on_hand_computed_cases():
    texts = ["a b a b", "c d e f"]
    assert distinct_n(texts, 1) == pytest.approx(6 / 8)
    assert distinct_n(texts, 2) == pytest.approx(5 / 6)  # (a b) repeats once among 6 bigrams
    assert repetition(texts, 2) == pytest.approx((1 / 3 + 0) / 2)
    assert diversity(["a b c d e"]) == 1.0 and diversity(["a b a b a b a b"]) < 0.1
    assert memorization(["the cat sat on the mat"], ["yes the cat sat on a mat"]) == pytest.approx(1 / 3)
    assert memorization([""], ["anything at all here"]) == 0.0


def test_mauve_tells_matching_from_shifted_features():
    rng = np.random.default_rng(0)
    human = rng.normal(size=(200, 16))
    same = rng.normal(size=(200, 16))
    shifted = rng.normal(size=(200, 16)) + 3.0
    assert mauve_score(human, same) > 0.9
    assert mauve_score(human, shifted) < 0.1
    with pytest.raises(LatentDLMError, match="at least 10"):
        mauve_score(human[:5], same)


def test_sentence_features_come_from_the_offline_minilm():
    from latentdlm.evaluation.generation import sentence_features

    features = sentence_features(["The fox ate the grapes.", "The fox ate the grapes.", "Stocks fell sharply today."])
    assert features.shape == (3, 384)
    same, other = features[0] @ features[1], features[0] @ features[2]
    assert same == pytest.approx(1.0, abs=1e-4) and other < 0.5
