"""File helpers: writes that never leave a half-written result where a good one was, file checksums, and
the checks a saved folder passes before anything in it is loaded."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import types
import typing
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from latentdlm.errors import LatentDLMError

# the files of a saved latentdlm folder (the diffusers parts keep diffusers' names)
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model_index.json"
SCHEDULER_CONFIG_NAME = "scheduler_config.json"


def cache_dir() -> Path:
    """Where converted models and unpacked features are kept: $LATENTDLM_CACHE or ~/.cache/latentdlm."""
    return Path(os.environ.get("LATENTDLM_CACHE") or Path.home() / ".cache" / "latentdlm").absolute()


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old)
    else:
        tmp.rename(path)


@contextmanager
def atomic_file(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def write_errors_explained(what: str, path: str | Path) -> Iterator[None]:
    """A failed write (disk full, no permission, ...) becomes one LatentDLMError naming what and where."""
    try:
        yield
    except OSError as exc:
        raise LatentDLMError(f"could not write {what} to {path}: {exc.strerror or exc}") from exc


def file_sha256(path: str | Path, digest=None) -> str:
    """The sha256 of a file's bytes (read in blocks), optionally continuing a running `digest`."""
    digest = digest or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


PICKLED_WEIGHTS = (".bin", ".pkl", ".pt", ".pth", ".ckpt")


def check_saved_folder(folder: str | Path, kind: str, needed: Sequence[str] = ()) -> Path:
    """A saved latentdlm `kind` folder is loaded only when it keeps to itself and to safetensors (no file or
    link that resolves outside it, no pickled weights in place of safetensors: unpickling can run code) and
    holds the `needed` files."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LatentDLMError(f"{folder} is not a latentdlm {kind} folder ({'a file' if folder.exists() else 'not found'})")
    root = folder.resolve()
    files = [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    outside = [p for p in files if not p.resolve().is_relative_to(root)]
    if outside:
        raise LatentDLMError(f"the {kind} folder {folder} links outside itself ({outside[0]} -> {outside[0].resolve()}): refused")
    pickled = [p for p in files if p.suffix in PICKLED_WEIGHTS]
    if pickled and not any(p.suffix == ".safetensors" for p in files):
        raise LatentDLMError(f"the {kind} folder {folder} holds only pickled weights ({pickled[0].name}), which can run code "
                             "when loaded: latentdlm loads safetensors only (convert them with safetensors.torch.save_file)")
    if missing := [name for name in needed if not (folder / name).exists()]:
        raise LatentDLMError(f"{folder} is not a latentdlm {kind} folder (missing {', '.join(missing)})")
    return folder


def read_json(path: str | Path, types_of: dict[str, Any] | None = None, required: Sequence[str] = ()) -> dict:
    """A saved folder's JSON file as a dict, its `required` keys present and its values of the `types_of`
    annotations (where given), or else one LatentDLMError naming the file (and the key)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except ValueError as exc:  # not UTF-8 or not JSON (cut short, corrupt); a missing file is an OSError
        raise LatentDLMError(f"{path} is not valid JSON, truncated or corrupt ({exc})") from None
    if not isinstance(data, dict):
        raise LatentDLMError(f"{path} must hold a JSON object, not {type(data).__name__}")
    if missing := [key for key in required if key not in data]:
        raise LatentDLMError(f"{path} misses the key '{missing[0]}'")
    for key, hint in (types_of or {}).items():
        if key in data and not _fits(data[key], hint):
            name = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
            raise LatentDLMError(f"{path}: the value of '{key}' must be {name}, got {data[key]!r} ({type(data[key]).__name__})")
    return data


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value is of the annotation `hint` (numbers, text, lists, objects, None, unions)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint) or (Any,)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arm) for arm in args)
    if origin in (list, tuple, Sequence):
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is not None or hint is Any or not isinstance(hint, type):
        return origin is not dict or isinstance(value, dict)
    return not (isinstance(value, bool) and hint in (int, float)) and isinstance(value, (int, float) if hint is float else hint)
