"""Latent-space experiments: interpolation, variations, infilling, classifier guidance, the latent map."""

import json

import pytest
import torch

from latentdlm.cli import main
from latentdlm.diffusion.classifier import LatentClassifier, check_classifier
from latentdlm.diffusion.sampling import ClassifierGuidance
from latentdlm.diffusion.schedulers import training_scheduler, x0_and_noise
from latentdlm.errors import LatentDLMError
from latentdlm.pipelines.latent_edits import interpolation_path, lerp, slerp
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
from latentdlm.training.classifier import train_latent_classifier

A = "The fox saw some grapes. He could not reach them. He said they were sour."
B = "A crow held a piece of cheese in her beak. The fox praised her voice."
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pipe(pipeline_dir):
    return LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)


@pytest.mark.parametrize("mix", [slerp, lerp])
def test_interpolation_endpoints_are_the_endpoints_latents_exactly(mix):
    a, b = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    assert torch.equal(mix(a, b, 0.0), a) and torch.equal(mix(a, b, 1.0), b)
    middle = mix(a, b, 0.5)
    assert not torch.allclose(middle, a) and not torch.allclose(middle, b)


def test_slerp_keeps_the_norm_between_vectors_of_equal_norm():
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    b = b / b.norm(dim=-1, keepdim=True) * a.norm(dim=-1, keepdim=True)
    assert torch.allclose(slerp(a, b, 0.3).norm(dim=-1), a.norm(dim=-1), atol=1e-4)
    assert torch.allclose(slerp(a, a, 0.3), a, atol=1e-5)  # parallel vectors: no division by sin(0)


def test_path_changes_the_number_of_segments_one_at_a_time():
    a, b = torch.randn(2, 1, 4), torch.randn(4, 1, 4)
    latents, mask = interpolation_path(a, b, [0.0, 0.25, 0.5, 0.75, 1.0])
    assert mask.sum(dim=1).tolist() == [2, 3, 3, 4, 4]
    assert torch.equal(latents[0, :2], a) and torch.equal(latents[-1], b)
    assert torch.equal(latents[1, 2:], b[2:])  # the longer text's own segments beyond the shared ones


def test_pipeline_interpolation_decodes_every_point_from_exact_endpoints(pipe):
    out = pipe.interpolate(A, B, num_points=4, method="slerp")
    encoded = pipe.encode([A, B])
    assert len(out.texts) == 4 and out.positions == [0.0, 1 / 3, 2 / 3, 1.0]
    for row, end in ((0, 0), (-1, 1)):
        count = int(encoded.segment_mask[end].sum())
        assert torch.equal(out.latents[row, :count], encoded.latents[end, :count])
        assert int(out.segment_mask[row].sum()) == count
    noisy = pipe.interpolate(A, B, num_points=3, through_noise=0.5, num_inference_steps=4)
    assert len(noisy.texts) == 3 and torch.isfinite(noisy.latents).all()


@pytest.mark.parametrize("source, target, message", [(A, A, "identical"), (A, "  ", "non-empty")])
def test_interpolation_refuses_bad_pairs(pipe, source, target, message):
    with pytest.raises(LatentDLMError, match=message):
        pipe.interpolate(source, target)


def test_variations_return_one_text_per_sample_and_check_strength(pipe):
    texts = pipe.vary(A, strength=0.4, num_samples=3, num_inference_steps=5, seed=0)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    assert texts == pipe.vary(A, strength=0.4, num_samples=3, num_inference_steps=5, seed=0)
    for strength in (0.0, 1.5):
        with pytest.raises(LatentDLMError, match="within"):
            pipe.vary(A, strength=strength)


def test_infilling_keeps_the_known_segments_verbatim(pipe):
    out = pipe.infill("The fox saw some grapes. ___ He said they were sour.", num_samples=2, num_inference_steps=5, seed=0)
    assert out.generated == [1]
    for segments, text in zip(out.segments, out.texts):
        assert segments[0] == "The fox saw some grapes." and segments[2] == "He said they were sour."
        assert text.startswith("The fox saw some grapes.") and text.endswith("He said they were sour.")
    edited = pipe.infill(A, keep=[0, 2], num_segments=4, num_inference_steps=4, seed=0, resample=2, scheduler="ddim")
    assert edited.generated == [1, 3]
    assert edited.segments[0][0] == "The fox saw some grapes." and edited.segments[0][2] == "He said they were sour."


@pytest.mark.parametrize("kwargs, message", [
    (dict(text="___ ___"), "no known segment"),
    (dict(text=A), "nothing to fill"),
    (dict(text="A. ___ " + " ".join(f"S{i}." for i in range(20))), "at most"),
    (dict(text="A. ___ B.", resample=2, scheduler="dpm"), "resampling"),
    (dict(text=A, keep=[7]), "out of range"),
])
def test_infilling_refuses_bad_requests(pipe, kwargs, message):
    with pytest.raises(LatentDLMError, match=message):
        pipe.infill(**kwargs)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_classifier_gradient_moves_the_estimate_towards_the_class(prediction):
    """A toy classifier whose class 0 logit is the sum of the latents: guidance must raise x0 where a
    latent exists and leave padding alone, whatever the model predicts."""
    scheduler = training_scheduler(prediction)
    toy = lambda x, t, mask: torch.stack([(x * mask[..., None]).sum(dim=(1, 2)), torch.zeros(len(x))], dim=1)  # noqa: E731
    latents, output = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    t = torch.tensor(500)
    guided = ClassifierGuidance(toy, torch.tensor([0, 0]), 2.0).adjust_output(scheduler, output, latents, t, mask)
    assert guided.shape == output.shape
    x0 = lambda out: x0_and_noise(scheduler, out, latents, t)[0]  # noqa: E731
    shift = x0(guided) - x0(output)
    assert (shift[mask] > 0).all() and torch.allclose(shift[~mask], torch.zeros(1), atol=1e-5)
    against = ClassifierGuidance(toy, torch.tensor([1, 1]), 2.0).adjust_output(scheduler, output, latents, t, mask)
    assert ((x0(against) - x0(output))[mask] < 0).all()


def test_classifier_trains_saves_and_steers_the_pipeline(pipe, tmp_path):
    texts = [A, B, "The ant worked all summer.", "The grasshopper sang all day."] * 4
    labels = ["fox", "fox", "insect", "insect"] * 4
    model, record = train_latent_classifier(pipe, texts, labels, minutes=0.02, batch_size=8)
    assert record["classes"] == ["fox", "insect"] and record["steps"] >= 1
    assert set(record["validation_accuracy_by_timestep"]) == {"0", "250", "500", "750", "900"}
    model.save_pretrained(tmp_path / "clf")
    loaded = LatentClassifier.from_pretrained(tmp_path / "clf")
    out = pipe(num_samples=2, num_inference_steps=4, seed=0, classifier=loaded, class_labels="insect", classifier_scale=3.0)
    assert len(out.texts) == 2
    with pytest.raises(LatentDLMError, match="class to steer"):
        pipe(num_samples=1, num_inference_steps=2, classifier=loaded)
    wrong = LatentClassifier(pipe.denoiser.config.latent_dim + 1, 1, 8, ["a", "b"])
    with pytest.raises(LatentDLMError, match="train the classifier on this pipeline"):
        check_classifier(wrong, pipe.denoiser)
    with pytest.raises(LatentDLMError, match="not a latentdlm latent classifier folder"):
        LatentClassifier.from_pretrained(tmp_path)


def test_cli_interpolate_writes_points_and_a_valid_png_map(pipeline_dir, tmp_path, capsys):
    corpus = tmp_path / "map.jsonl"
    corpus.write_text("".join(json.dumps({"text": t, "label": l}) + "\n" for t, l in [(A, "x"), (B, "y"), ("The ant worked.", "y")]))
    code = main(["interpolate", "--model", str(pipeline_dir), "--source", A, "--target", B, "--num-points", "3",
                 "--output", str(tmp_path / "path.jsonl"), "--plot", str(tmp_path / "map.png"),
                 "--map-input", str(corpus), "--map-label-column", "label"])
    assert code == 0
    assert [json.loads(line)["t"] for line in (tmp_path / "path.jsonl").read_text().splitlines()] == [0.0, 0.5, 1.0]
    assert (tmp_path / "map.png").read_bytes().startswith(PNG)
    assert main(["interpolate", "--model", str(pipeline_dir), "--source", A, "--target", A]) == 2
    assert "identical" in capsys.readouterr().err


def test_cli_vary_and_infill(pipeline_dir, tmp_path, capsys):
    assert main(["vary", "--model", str(pipeline_dir), "--text", A, "--strength", "0.5", "--num-samples", "2", "--steps", "4",
                 "--seed", "1", "--output", str(tmp_path / "vary.jsonl")]) == 0
    assert len((tmp_path / "vary.jsonl").read_text().splitlines()) == 2
    capsys.readouterr()
    assert main(["infill", "--model", str(pipeline_dir), "--text", "The fox ran. ___ The end.", "--steps", "4", "--seed", "0"]) == 0
    out = capsys.readouterr().out.strip()
    assert out.startswith("The fox ran.") and out.endswith("The end.")
    assert main(["infill", "--model", str(pipeline_dir), "--text", A, "--keep", "0,x"]) == 2
    assert "indices" in capsys.readouterr().err


def test_interpolation_experiment_script_writes_curves_rates_and_png(pipeline_dir, tmp_path):
    import importlib.util
    from pathlib import Path

    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"source": a, "target": b}) + "\n" for a, b in [(A, B), (B, "The ant worked all summer.")]))
    script = Path(__file__).resolve().parents[1] / "scripts/interpolate.py"
    spec = importlib.util.spec_from_file_location("interpolate_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, png = tmp_path / "interp.json", tmp_path / "interp.png"
    assert module.main(["--model", str(pipeline_dir), "--pairs", str(pairs), "--num-points", "4", "--method", "slerp", "lerp",
                        "--output", str(out), "--plot", str(png)]) == 0
    results = json.loads(out.read_text())["results"]
    assert set(results) == {"slerp", "lerp"}
    slerped = results["slerp"]
    assert len(slerped["paths"]) == 2 and len(slerped["curves"]["cosine_to_b"]) == 4
    assert 0.0 <= slerped["new_text_rate"] <= 1.0 and 0.0 <= slerped["monotonic_rate"] <= 1.0
    path = slerped["paths"][0]
    assert len(path["texts"]) == 4 and all(-1.0 - 1e-6 <= c <= 1.0 + 1e-6 for c in path["cosine_to_a"] + path["cosine_to_b"])
    assert path["new_text"][0] is False and path["new_text"][-1] is False  # the decoded endpoints are never new
    assert all(nll > 0 for nll in path["decoder_nll"])
    assert png.read_bytes().startswith(PNG)
    assert module.main(["--model", str(pipeline_dir), "--from-texts", str(tmp_path / "missing.jsonl")]) == 2


def test_paragraph_mode_pipelines_interpolate_and_vary_but_refuse_infilling():
    from helpers import tiny_train_config

    from latentdlm.autoencoder.build import build_autoencoder
    from latentdlm.data.sources import load_texts
    from latentdlm.diffusion.denoiser import LatentDiT
    from latentdlm.diffusion.schedulers import make_scheduler

    cfg = tiny_train_config().model
    cfg.segmentation.mode = "none"
    torch.manual_seed(0)
    autoencoder = build_autoencoder(cfg, load_texts("bundled:aesop")[:40]).eval()
    denoiser = LatentDiT(latent_dim=cfg.latent_dim, num_latents=cfg.num_latents, hidden_size=32, num_layers=1, num_heads=2).eval()
    pipe = LatentDiffusionTextPipeline(autoencoder, denoiser, make_scheduler("dpm", training_scheduler("v_prediction")))
    out = pipe.interpolate(A, B, num_points=3)
    assert len(out.texts) == 3 and out.segment_mask.shape == (3, 1)
    assert len(pipe.vary(A, strength=0.5, num_samples=2, num_inference_steps=3, seed=0)) == 2
    with pytest.raises(LatentDLMError, match="segment-mode"):
        pipe.infill("The fox ran. ___ The end.")
