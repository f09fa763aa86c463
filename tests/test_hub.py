"""The Hugging Face surface: the public API, loading by hub repo id (from a hub cache, offline), bf16,
model cards written from the training record, and push_to_hub (only the upload itself is faked)."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard

import latentdlm
from latentdlm import ConditionEncoder, LatentDiffusionTextPipeline, LatentDiT, ParagraphAutoencoder, load_config
from latentdlm.errors import LatentDLMError
from latentdlm.model_card import hub_dataset

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def test_the_public_classes_come_from_the_package_root_without_importing_torch_early():
    from latentdlm.autoencoder.model import ParagraphAutoencoder as inner

    assert ParagraphAutoencoder is inner and LatentDiT.__name__ == "LatentDiT" and ConditionEncoder.__name__ == "ConditionEncoder"
    assert callable(load_config) and set(latentdlm.__all__) <= set(dir(latentdlm))
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        latentdlm.Nope  # noqa: B018
    probe = "import sys, latentdlm; assert 'torch' not in sys.modules; print(latentdlm.__version__)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).returncode == 0


def hub_cache(tmp_path: Path, folder: Path, repo_id: str) -> Path:
    """A Hugging Face hub cache holding `folder` as `repo_id` at COMMIT (main points at it), as
    snapshot_download leaves it: what an offline machine has after an earlier download."""
    cache = tmp_path / "hub-cache"
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / COMMIT)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def test_a_pipeline_loads_by_hub_repo_id_and_revision(pipeline_dir, tmp_path):
    cache = hub_cache(tmp_path, pipeline_dir, "someone/tiny-latentdlm")
    local = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    for revision in (None, "main", COMMIT):
        pipe = LatentDiffusionTextPipeline.from_pretrained("someone/tiny-latentdlm", revision=revision, cache_dir=cache)
        assert pipe(num_samples=2, num_inference_steps=2, seed=3, show_progress=False).texts == \
            local(num_samples=2, num_inference_steps=2, seed=3, show_progress=False).texts
    with pytest.raises(LatentDLMError, match="'someone/tiny-latentdlm' is not a local folder, and the Hugging Face hub could not give it"):
        LatentDiffusionTextPipeline.from_pretrained("someone/tiny-latentdlm", revision="v9", cache_dir=cache)
    with pytest.raises(LatentDLMError, match="hub could not give it"):
        LatentDiffusionTextPipeline.from_pretrained("nobody/nothing", cache_dir=cache)


def test_an_autoencoder_loads_by_hub_repo_id(autoencoder, tmp_path):
    cache = hub_cache(tmp_path, autoencoder, "someone/tiny-autoencoder")
    model = ParagraphAutoencoder.from_pretrained("someone/tiny-autoencoder", cache_dir=cache, local_files_only=True)
    assert model.reconstruct(["The fox ran."]) == ParagraphAutoencoder.from_pretrained(autoencoder).reconstruct(["The fox ran."])


def test_from_pretrained_refuses_what_it_does_not_take(pipeline_dir):
    with pytest.raises(TypeError, match="torch_dtpye"):  # a misspelt keyword is an error, never silently dropped
        LatentDiffusionTextPipeline.from_pretrained(pipeline_dir, torch_dtpye=torch.bfloat16)
    with pytest.raises(LatentDLMError, match="floating torch dtype"):
        LatentDiffusionTextPipeline.from_pretrained(pipeline_dir, torch_dtype="bf16")
    with pytest.raises(LatentDLMError, match="revision='main' applies to hub repos"):
        LatentDiffusionTextPipeline.from_pretrained(pipeline_dir, revision="main")


def test_bf16_inference_and_to_behave_as_in_diffusers(pipeline_dir, autoencoder):
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir, torch_dtype=torch.bfloat16)
    assert pipe.dtype == torch.bfloat16
    assert {p.dtype for part in (pipe.autoencoder, pipe.denoiser) for p in part.parameters()} == {torch.bfloat16}
    out = pipe(num_samples=2, num_inference_steps=2, seed=0, show_progress=False, return_latents=True)
    assert len(out.texts) == 2 and out.latents.dtype == torch.float32  # the sampler keeps float32 latents
    assert len(pipe.interpolate("The fox ran. It was late.", "A crow sang.", num_points=3, num_inference_steps=2).texts) == 3
    assert pipe.to("cpu") is pipe and pipe.device.type == "cpu"
    assert pipe.to(torch.float32).dtype == torch.float32
    model = ParagraphAutoencoder.from_pretrained(autoencoder, torch_dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and len(model.reconstruct(["The fox ran. It was late."])) == 1


def test_trained_folders_carry_a_hub_model_card_from_their_training(pipeline_dir, autoencoder):
    card = ModelCard.load(pipeline_dir / "README.md")
    assert card.data.library_name == "latentdlm" and card.data.pipeline_tag == "text-generation"
    assert {"latentdlm", "latent-diffusion", "text-generation"} <= set(card.data.tags)
    assert "sample_distinct_2" in card.data.metrics and "autoencoder_heldout_bleu" in card.data.metrics
    assert "bundled public-domain corpus (aesop)" in card.text and "4 optimizer steps" in card.text
    assert "LatentDiffusionTextPipeline.from_pretrained" in card.text and "```yaml" in card.text
    ae_card = ModelCard.load(autoencoder / "README.md")
    assert ae_card.data.library_name == "latentdlm" and "heldout_bleu" in ae_card.data.metrics
    assert "ParagraphAutoencoder.from_pretrained" in ae_card.text
    # the record comes back with the model, so a re-saved or pushed copy keeps its card
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    assert pipe.training_record["steps"] == 4 and pipe.autoencoder.training_record["metrics"]


def test_the_card_counts_the_minutes_of_every_resumed_part():
    from latentdlm.training.loop import logged_minutes

    # each resumed part restarts the clock: 0.2 min, then a resume that ran 0.15 more, then one of 0.3
    records = [{"step": 2, "train_minutes": 0.1}, {"step": 4, "train_minutes": 0.2}, {"step": 6, "train_minutes": 0.05},
               {"step": 8, "train_minutes": 0.15}, {"step": 8, "eval/bleu": 3.0}, {"step": 10, "train_minutes": 0.1},
               {"step": 12, "train_minutes": 0.3}]
    assert logged_minutes(records) == pytest.approx(0.65) and logged_minutes([]) == 0.0


def test_a_hub_dataset_goes_into_the_card_metadata_with_its_scores(pipeline_dir, tmp_path):
    assert hub_dataset("bundled:aesop") is None and hub_dataset("stories.jsonl") is None and hub_dataset("ag_news") == "ag_news"
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    pipe.training_record = {**pipe.training_record, "data": {**pipe.training_record["data"], "source": "ag_news"}}
    pipe.save_pretrained(tmp_path / "copy")
    card = ModelCard.load(tmp_path / "copy" / "README.md")
    assert card.data.datasets == ["ag_news"]
    assert {r.metric_type for r in card.data.eval_results} >= {"sample_distinct_2"}
    assert "`ag_news`" in card.text


def test_push_to_hub_uploads_the_saved_folder(pipeline_dir, tmp_path, monkeypatch):
    uploads = []

    class Repo:
        repo_id = "me/tiny-latentdlm"

    def upload_folder(self, *, repo_id, folder_path, **kwargs):  # the hub's side: keep a copy of what arrived
        uploads.append((repo_id, kwargs.get("commit_message")))
        shutil.copytree(folder_path, tmp_path / "remote")
        return "https://huggingface.co/me/tiny-latentdlm/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: Repo())
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    pipe = LatentDiffusionTextPipeline.from_pretrained(pipeline_dir)
    url = pipe.save_pretrained(tmp_path / "local", push_to_hub=True, repo_id="me/tiny-latentdlm")
    assert url.endswith("/commit/1") and uploads[0][0] == "me/tiny-latentdlm"
    remote = tmp_path / "remote"
    assert {"README.md", "model_index.json", "autoencoder", "denoiser", "scheduler"} <= {p.name for p in remote.iterdir()}
    assert not list(tmp_path.glob("local/.*tmp*"))  # nothing half-written left behind
    again = LatentDiffusionTextPipeline.from_pretrained(remote)
    assert again(num_samples=1, num_inference_steps=2, seed=1, show_progress=False).texts == \
        pipe(num_samples=1, num_inference_steps=2, seed=1, show_progress=False).texts


def test_the_diffusion_and_autoencoder_layers_never_import_the_pipelines_above_them():
    package = Path(latentdlm.__file__).parent
    upward = [str(p) for layer in ("diffusion", "autoencoder") for p in (package / layer).glob("*.py")
              if "latentdlm.pipelines" in p.read_text()]
    assert not upward, upward


def test_the_cli_silences_transformers_bars_keeps_the_hubs_and_shows_its_own(autoencoder, tmp_path, capsys):
    import transformers
    from huggingface_hub.utils import are_progress_bars_disabled

    from latentdlm.cli import main

    texts = tmp_path / "texts.jsonl"
    texts.write_text("".join(f'{{"text": "{text}"}}\n' for text in ("The fox ran.", "A crow sang.", "The ant worked.")))
    assert main(["reconstruct", "--autoencoder", str(autoencoder), "--input", str(texts), "--batch-size", "1"]) == 0
    assert "reconstructing" in capsys.readouterr().err  # a bar over the batches of texts
    assert not transformers.utils.logging.is_progress_bar_enabled() and not are_progress_bars_disabled()
