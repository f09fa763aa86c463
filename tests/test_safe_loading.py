"""A downloaded folder or config never runs code: safetensors only, no links out of the folder, safe YAML."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.config import load_config
from latentdlm.errors import LatentDLMError
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
from latentdlm.training.autoencoder import AutoencoderTrainConfig


@pytest.fixture()
def copy(pipeline_dir, tmp_path):
    folder = tmp_path / "pipeline"
    shutil.copytree(pipeline_dir, folder)
    return folder


def test_a_pickle_only_part_is_refused_with_a_message(copy):
    weights = copy / "denoiser" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(weights), copy / "denoiser" / "diffusion_pytorch_model.bin")
    weights.unlink()
    with pytest.raises(LatentDLMError, match="denoiser folder .* holds only pickled weights"):
        LatentDiffusionTextPipeline.from_pretrained(copy)  # the other parts' safetensors do not hide it
    auto = copy / "autoencoder"
    torch.save(load_file(auto / "model.safetensors"), auto / "pytorch_model.bin")
    (auto / "model.safetensors").unlink()
    with pytest.raises(LatentDLMError, match="holds only pickled weights .*safetensors only"):
        ParagraphAutoencoder.from_pretrained(auto)


def test_a_link_out_of_the_folder_is_refused(copy, tmp_path):
    outside = tmp_path / "elsewhere.json"
    outside.write_text("{}")
    (copy / "denoiser" / "extra.json").symlink_to(outside)
    with pytest.raises(LatentDLMError, match="links outside itself"):
        LatentDiffusionTextPipeline.from_pretrained(copy)


def test_an_unknown_scheduler_class_is_refused(copy):
    config = copy / "scheduler" / "scheduler_config.json"
    config.write_text(config.read_text().replace('"DPMSolverMultistepScheduler"', '"os.system"').replace(
        '"DDIMScheduler"', '"os.system"').replace('"DDPMScheduler"', '"os.system"'))
    with pytest.raises(LatentDLMError, match="unknown scheduler 'os.system'"):
        LatentDiffusionTextPipeline.from_pretrained(copy)


def test_yaml_tags_that_would_run_code_are_not_executed(tmp_path):
    marker = tmp_path / "ran"
    config = tmp_path / "evil.yaml"
    config.write_text(f'training:\n  output_dir: !!python/object/apply:os.system ["touch {marker}"]\n')
    with pytest.raises(LatentDLMError, match="not valid YAML"):
        load_config(AutoencoderTrainConfig, config)
    assert not marker.exists()
