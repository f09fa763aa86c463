"""Loading from and sharing to the Hugging Face hub, through `huggingface_hub.ModelHubMixin`.

A latentdlm model is one folder. `from_pretrained` takes that folder or a hub repo id (downloaded with
`snapshot_download`: revision, cache_dir, token as everywhere in the ecosystem), `save_pretrained`
writes the folder atomically with its model card (`README.md`), and `push_to_hub` (the mixin's) saves
into a temporary folder and uploads it in one commit.
"""

from __future__ import annotations

import inspect
import typing
from pathlib import Path
from typing import Optional

import torch
from diffusers import ModelMixin
from diffusers.utils import logging as diffusers_logging
from huggingface_hub import ModelCard, ModelHubMixin, snapshot_download
from huggingface_hub.errors import HFValidationError

from latentdlm.errors import LatentDLMError
from latentdlm.io import CONFIG_NAME, atomic_directory, check_saved_folder, read_json

REPO_URL = "https://github.com/latentdlm/latentdlm"


def model_folder(name_or_path: str | Path, revision: Optional[str] = None, cache_dir: Optional[str | Path] = None,
                 token: Optional[str | bool] = None, local_files_only: bool = False, force_download: bool = False) -> Path:
    """A local folder as it is; a hub repo id ("org/name") downloaded into the hub cache. A path that is no
    repo id and does not exist comes back unchanged, for the caller's own "not a ... folder" message."""
    path = Path(name_or_path)
    if path.exists():
        if revision is not None:
            raise LatentDLMError(f"revision={revision!r} applies to hub repos; {path} is a local folder")
        return path
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir, token=token,
                                      local_files_only=local_files_only, force_download=force_download))
    except HFValidationError:
        return path  # not a repo id: a local path that does not exist
    except Exception as exc:  # offline, no such repo or revision, no access: one message
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LatentDLMError(f"'{name_or_path}' is not a local folder, and the Hugging Face hub could not give it "
                             f"({type(exc).__name__}: {first})") from None


class HubMixin(ModelHubMixin, library_name="latentdlm", repo_url=REPO_URL, tags=["latentdlm", "latent-diffusion"]):
    """The hub surface of a latentdlm folder class: it writes a folder with `_save_folder(folder)`, reads
    one with `_load_folder(folder)` (after `check_saved_folder`: the `folder_files` there, safetensors only)
    and describes itself with `model_card()`."""

    folder_kind = "model"  # "... is not a latentdlm {folder_kind} folder"
    folder_files: tuple[str, ...] = ()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, *, revision: Optional[str] = None,
                        cache_dir: Optional[str | Path] = None, token: Optional[str | bool] = None,
                        local_files_only: bool = False, force_download: bool = False,
                        torch_dtype: Optional[torch.dtype] = None):
        """Load a saved folder or a hub repo id; `torch_dtype` (e.g. torch.bfloat16) casts the weights."""
        if torch_dtype is not None and not (isinstance(torch_dtype, torch.dtype) and torch_dtype.is_floating_point):
            raise LatentDLMError(f"torch_dtype must be a floating torch dtype such as torch.bfloat16, got {torch_dtype!r}")
        folder = model_folder(pretrained_model_name_or_path, revision, cache_dir, token, local_files_only, force_download)
        model = cls._load_folder(check_saved_folder(folder, cls.folder_kind, cls.folder_files))
        if torch_dtype is None:
            return model
        level = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # diffusers warns on every cast, even with no module to keep in float32
        try:
            return model.to(dtype=torch_dtype)
        finally:
            diffusers_logging.set_verbosity(level)

    def save_pretrained(self, save_directory: str | Path, *, push_to_hub: bool = False, repo_id: Optional[str] = None,
                        config=None, model_card_kwargs=None, **push_to_hub_kwargs) -> Optional[str]:
        """Write the folder (atomically, with its model card); with `push_to_hub`, upload it to `repo_id`
        (default: the folder's name; further keywords go to `push_to_hub`: private, token, branch, ...).
        `config` and `model_card_kwargs` are the mixin's and unused: the folder carries its own config and
        the card is written from it."""
        with atomic_directory(save_directory) as tmp:
            self._save_folder(tmp)
            if (card := self.model_card()) is not None:
                card.save(tmp / "README.md")
        if push_to_hub:
            return self.push_to_hub(repo_id or Path(save_directory).name, **push_to_hub_kwargs)
        return None

    def model_card(self) -> Optional[ModelCard]:
        return None  # a part saved inside a pipeline folder needs no card of its own


class HubModule(torch.nn.Module, HubMixin):
    """A torch module saved as one latentdlm folder, with the device and dtype DiffusionPipeline reads."""

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def load_config_model(cls: type[ModelMixin], folder: Path, kind: str) -> ModelMixin:
    """A diffusers model folder (config.json + safetensors weights): checked as every latentdlm folder, its
    config.json read by the one JSON reader and type-checked against `cls.__init__` before it is built."""
    check_saved_folder(folder, kind, (CONFIG_NAME,))
    init = inspect.signature(cls.__init__).parameters  # register_to_config keeps the signature
    required = [name for name, p in list(init.items())[1:] if p.default is p.empty]
    read_json(folder / CONFIG_NAME, typing.get_type_hints(cls.__init__), required)
    try:
        return ModelMixin.from_pretrained.__func__(cls, folder, use_safetensors=True).eval()
    except (OSError, ValueError) as exc:
        raise LatentDLMError(f"could not load the {kind} in {folder}: {str(exc).splitlines()[0]}") from None
