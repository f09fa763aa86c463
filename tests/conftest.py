"""Test setup: no test may reach the Hugging Face hub or touch the user's Hugging Face cache."""

import os
import shutil
import tempfile

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
