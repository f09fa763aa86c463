"""One typed config system: dataclass schemas, YAML presets and `key=value` overrides.

OmegaConf does the merging and type checking; this module turns its errors into one clear
message that names the offending key (with a close match when there is one).
"""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from latentdlm.errors import LatentDLMError

T = TypeVar("T")


def _known_keys(instance: Any, dotted: str) -> list[str]:
    """The valid keys at the level where `dotted` points (for a 'did you mean' hint)."""
    node = instance
    for part in dotted.split(".")[:-1]:
        node = getattr(node, part, None)
    return [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []


def _config_error(exc: OmegaConfBaseException, schema: Any, origin: str) -> LatentDLMError:
    key = getattr(exc, "full_key", None) or ""
    message = str(exc).splitlines()[0]
    if isinstance(exc, ConfigKeyError):
        leaf = key.split(".")[-1]
        close = difflib.get_close_matches(leaf, _known_keys(schema, key), n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return LatentDLMError(f"unknown config key '{key}' in {origin}{hint}")
    return LatentDLMError(f"bad value for config key '{key}' in {origin}: {message}")


def _read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise LatentDLMError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as exc:
        raise LatentDLMError(f"config file {path} is not valid YAML (in UTF-8 text): {exc}") from None
    if data is None:
        raise LatentDLMError(f"config file {path} is empty: start from a preset under configs/")
    if not isinstance(data, dict):
        raise LatentDLMError(f"config file {path} must hold a mapping of keys, not {type(data).__name__}")
    return data


def parse_overrides(overrides: Sequence[str]) -> list[str]:
    """Check that each override looks like `a.b=value` (values are parsed as YAML by OmegaConf)."""
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise LatentDLMError(f"override '{item}' is not of the form key=value (e.g. training.max_steps=100)")
    return list(overrides)


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a `schema` dataclass from defaults, then the YAML file, then the overrides."""
    base = OmegaConf.structured(schema)
    cfg = base
    try:
        if path is not None:
            cfg = OmegaConf.merge(cfg, OmegaConf.create(_read_yaml(path)))
    except OmegaConfBaseException as exc:
        raise _config_error(exc, schema(), str(path)) from None
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(parse_overrides(overrides)))
    except OmegaConfBaseException as exc:
        raise _config_error(exc, schema(), "the command-line overrides") from None
    return OmegaConf.to_object(cfg)


def save_config(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))


def config_from_dict(schema: type[T], values: dict, origin: str) -> T:
    """Validate a plain dict (e.g. a saved model's config) against `schema`."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.create(values)))
    except OmegaConfBaseException as exc:
        raise _config_error(exc, schema(), origin) from None
