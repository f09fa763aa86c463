"""File helpers: writes that never leave a half-written result where a good one was, file checksums, and
the checks a saved folder passes before anything in it is loaded."""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from latentdlm.errors import LatentDLMError


def cache_dir() -> Path:
    """Where converted models and unpacked features are kept: $LATENTDLM_CACHE or ~/.cache/latentdlm."""
    return Path(os.environ.get("LATENTDLM_CACHE") or Path.home() / ".cache" / "latentdlm")


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


def check_saved_folder(folder: str | Path, what: str) -> Path:
    """A saved folder is loaded only when it keeps to itself and to safetensors: no file (or link) that
    resolves outside it, and no pickled weights in place of safetensors (unpickling can run code)."""
    folder = Path(folder)
    root = folder.resolve()
    files = [p for p in folder.rglob("*") if p.is_file() or p.is_symlink()]
    outside = [p for p in files if not p.resolve().is_relative_to(root)]
    if outside:
        raise LatentDLMError(f"{what} {folder} links outside itself ({outside[0]} -> {outside[0].resolve()}): refused")
    pickled = [p for p in files if p.suffix in PICKLED_WEIGHTS]
    if pickled and not any(p.suffix == ".safetensors" for p in files):
        raise LatentDLMError(f"{what} {folder} holds only pickled weights ({pickled[0].name}), which can run code when "
                             "loaded: latentdlm loads safetensors only (convert them with safetensors.torch.save_file)")
    return folder
