"""Test setup: no test may reach the Hugging Face hub or touch the user's Hugging Face cache."""

import os
import shutil
import tempfile

from pathlib import Path

import pytest
import torch

_HF_HOME = tempfile.mkdtemp(prefix="latentdlm-test-hf-home-")
# Set at import, before any test module imports transformers or datasets: both read these once at import.
os.environ.update(
    {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": _HF_HOME}
)


@pytest.fixture(scope="session", autouse=True)
def offline_hf_home():
    """The temporary HF_HOME of this session; removed when the session ends."""
    yield _HF_HOME
    shutil.rmtree(_HF_HOME, ignore_errors=True)



torch.set_flush_denormal(True)  # denormals made some CPU runs 10-30x slower
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def autoencoder(tmp_path_factory):
    """A tiny segment-mode autoencoder, a few steps on the bundled Aesop fables (stage 2's tests build on it)."""
    from helpers import tiny_overrides

    from latentdlm.cli import main

    out = tmp_path_factory.mktemp("ae")
    preset = Path(__file__).resolve().parents[1] / "configs/autoencoder/tiny.yaml"
    assert main(["train-autoencoder", "--config", str(preset), *tiny_overrides(out)]) == 0
    return out / "autoencoder"


@pytest.fixture(scope="session")
def pipeline_dir(autoencoder, tmp_path_factory):
    """A tiny unconditional pipeline on that autoencoder (4 steps, samples every 2)."""
    from helpers import tiny_diffusion_overrides

    from latentdlm.cli import main

    out = tmp_path_factory.mktemp("dm")
    preset = Path(__file__).resolve().parents[1] / "configs/diffusion/tiny.yaml"
    assert main(["train-diffusion", "--config", str(preset), *tiny_diffusion_overrides(autoencoder, out),
                 "training.eval_every=2"]) == 0
    return out / "pipeline"


@pytest.fixture(scope="session")
def conditional_pipeline(autoencoder, tmp_path_factory):
    """A tiny text-conditioned pipeline (fable title -> fable) on that autoencoder."""
    from helpers import train_conditional

    out = tmp_path_factory.mktemp("cond")
    assert train_conditional(autoencoder, out, "training.eval_every=2") == 0
    return out / "pipeline"
