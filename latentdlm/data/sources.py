"""Load texts (or text pairs) from the bundled corpus, a local file or a Hugging Face hub dataset.

A source is `bundled:austen`, `bundled:aesop`, `bundled` (both), a local `.jsonl`/`.json`/`.csv`/`.tsv`/`.txt`
file (optionally `.gz`/`.bz2`/`.xz`/`.zst` compressed), or a hub dataset name. All of them are read through
`datasets.load_dataset`, then one column is picked, checked and stripped.
"""

import csv
import itertools
import json
import os
import random
import warnings
from collections.abc import Iterator
from pathlib import Path

import datasets

from latentdlm.errors import LatentDLMError

_CORPUS = Path(__file__).with_name("corpus")
BUNDLED = {"austen": _CORPUS / "austen.jsonl", "aesop": _CORPUS / "aesop.jsonl"}
_FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".tsv": "csv", ".txt": "text"}
_COMPRESSIONS = {".gz", ".bz2", ".xz", ".zst"}
_STRING_DTYPES = {"string", "large_string"}


def data_root() -> Path:
    """The shared folder of real data for tests and benchmarks: $LATENTDLM_DATA or <repo>/../shared/data."""
    return Path(os.environ.get("LATENTDLM_DATA", Path(__file__).resolve().parents[3] / "shared" / "data"))


def load_texts(
    source: str, column: str | None = None, split: str = "train", limit: int | None = None, cache_dir: str | None = None
) -> list[str]:
    """Stripped, non-empty texts of `column` (default "text", or the only string column); first `limit` kept."""
    return [row[0] for row in _load_rows(source, [column], split, limit, cache_dir)]


def iter_texts(source: str, column: str | None = None, split: str = "train", limit: int | None = None,
               cache_dir: str | None = None, batch_size: int = 1000) -> Iterator[str]:
    """Stripped, non-empty texts of `column` one at a time, first `limit`: a hub dataset through datasets' streaming,
    a local or bundled file through its (memory-mapped) Arrow table in batches; never all of them in memory."""
    if limit is not None and limit < 1:
        raise LatentDLMError(f"limit must be a positive number of texts or None, got {limit}.")
    count = 0
    for label, dataset in _stream_datasets(source, split, cache_dir):
        name = _text_column(dataset, column, label)
        for batch in dataset.iter(batch_size=batch_size):
            for value in batch[name]:
                if not isinstance(value, str) and value is not None:
                    raise LatentDLMError(f"{label}: column '{name}' holds non-text values (e.g. {value!r}); pick a string column")
                text = (value or "").strip()
                if text:
                    yield text
                    count += 1
                    if count == limit:
                        return
    if not count:
        raise LatentDLMError(f"{source}: no non-empty texts to read")


class TextStream:
    """The texts of a data config (its source, column, split and limit) as a stream that can be read again (each
    pass opens the source anew): a corpus too large for memory. `skip` leaves out its first texts (held out);
    `identity` names it in cache keys (the settings and, for a local file, its size and time)."""

    def __init__(self, data_cfg, skip: int = 0):
        self.data_cfg, self.skip = data_cfg, skip

    def __iter__(self) -> Iterator[str]:
        cfg = self.data_cfg
        return itertools.islice(iter_texts(cfg.source, cfg.column, cfg.split, cfg.limit), self.skip, None)

    @property
    def identity(self) -> str:
        path = Path(self.data_cfg.source).expanduser()
        stat = path.stat() if path.is_file() else None
        return json.dumps({**self.data_cfg.__dict__, "skip": self.skip,
                           "file": [str(path.resolve()), stat.st_size, stat.st_mtime_ns] if stat else None}, sort_keys=True, default=str)


def _stream_datasets(source: str, split: str, cache_dir: str | None) -> list:
    """`_load_datasets`, but a hub dataset streamed (nothing downloaded whole)."""
    path = Path(os.fspath(source)).expanduser()
    if str(source).startswith("bundled") or path.exists() or _data_suffix(path) or str(source).startswith((".", "/", "~")):
        return _load_datasets(source, split, cache_dir)
    try:
        return [(source, datasets.load_dataset(source, split=split, streaming=True))]
    except Exception as error:
        raise LatentDLMError(f"could not stream dataset '{source}' (split '{split}') from the Hugging Face hub; this machine "
                             f"may be offline - pass a local file instead. Reason: {_reason(error)}") from error


def load_pairs(
    source: str,
    source_column: str,
    target_column: str,
    split: str = "train",
    limit: int | None = None,
    cache_dir: str | None = None,
) -> list[tuple[str, str]]:
    """Stripped (source, target) text pairs; pairs with an empty side are dropped."""
    return _load_rows(source, [source_column, target_column], split, limit, cache_dir)


def load_columns(
    source: str, columns: list[str | None], split: str = "train", limit: int | None = None, cache_dir: str | None = None,
) -> list[tuple[str, ...]]:
    """Every row of `columns`, stripped, in file order; empty values kept as "" (for inputs whose rows
    must stay aligned with their outputs: the caller decides what an empty value means)."""
    return _load_rows(source, columns, split, limit, cache_dir, drop_empty=False)


FIRST_WORD = "first_word"  # label_column value: the label is each text's first word (SST-2 txt style)


def load_labeled_texts(
    source: str, column: str | None, label_column: str, split: str = "train", limit: int | None = None,
    cache_dir: str | None = None,
) -> list[tuple[str, str]]:
    """(text, label) pairs; labels of any type become strings ("1", "World", ...)."""
    if label_column == FIRST_WORD:
        pairs = [tuple(reversed(text.split(maxsplit=1))) for text in load_texts(source, column, split, limit, cache_dir)]
        bad = next((i for i, pair in enumerate(pairs) if len(pair) < 2), None)
        if bad is not None:
            raise LatentDLMError(f"{source}: text {bad} has a label but no text after it")
        return pairs
    return _load_rows(source, [column, label_column], split, limit, cache_dir, labels_from=1)


def train_eval_split(
    texts: list[str], eval_fraction: float, max_eval: int | None, seed: int
) -> tuple[list[str], list[str]]:
    """Shuffle with `seed` and hold out `eval_fraction` (at least one, at most `max_eval`) as the eval set."""
    if not 0 <= eval_fraction < 1:
        raise LatentDLMError(f"eval_fraction must be in [0, 1), got {eval_fraction}.")
    if max_eval is not None and max_eval < 0:
        raise LatentDLMError(f"max_eval must be >= 0 or None, got {max_eval}.")
    shuffled = list(texts)
    random.Random(seed).shuffle(shuffled)
    n_eval = max(1, int(len(shuffled) * eval_fraction)) if eval_fraction > 0 and len(shuffled) > 1 else 0
    if max_eval is not None:
        n_eval = min(n_eval, max_eval)
    return shuffled[n_eval:], shuffled[:n_eval]


def _load_rows(
    source: str, columns: list[str | None], split: str, limit: int | None, cache_dir: str | None,
    labels_from: int | None = None, drop_empty: bool = True,
) -> list[tuple[str, ...]]:
    """Rows of the given columns over all datasets of `source`, stripped, empty rows dropped (unless
    `drop_empty` is false), first `limit` kept. Columns from index `labels_from` on may hold any type
    (labels) and are turned into strings."""
    if limit is not None and limit < 1:
        raise LatentDLMError(f"limit must be a positive number of texts or None, got {limit}.")
    rows = []
    for label, dataset in _load_datasets(source, split, cache_dir):
        rows += zip(*(
            _column_values(dataset, column, label, any_type=labels_from is not None and i >= labels_from)
            for i, column in enumerate(columns)
        ))
    stripped = [tuple((value or "").strip() for value in row) for row in rows]
    if not drop_empty:
        return stripped[:limit]
    kept = [row for row in stripped if all(row)]
    if not kept:
        raise LatentDLMError(f"{source}: all {len(rows)} texts are empty or whitespace-only; nothing to load.")
    if len(kept) < len(rows):
        dropped = f"{len(rows) - len(kept)} of {len(rows)}"
        warnings.warn(f"{source}: dropped {dropped} rows with empty or whitespace-only text.", stacklevel=3)
    return kept[:limit]


def _load_datasets(source: str, split: str, cache_dir: str | None) -> list[tuple[str, datasets.Dataset]]:
    """(label, dataset) for each part of `source`: two for `bundled`, else one."""
    source = os.fspath(source)
    if source == "bundled":
        return [(f"bundled:{name}", _load_file(path, cache_dir)) for name, path in BUNDLED.items()]
    if source.startswith("bundled:"):
        name = source.removeprefix("bundled:")
        if name not in BUNDLED:
            choices = ", ".join(BUNDLED)
            raise LatentDLMError(f"unknown bundled corpus '{name}'; choose one of: {choices} (or 'bundled').")
        return [(source, _load_file(BUNDLED[name], cache_dir))]
    path = Path(source).expanduser()
    if path.exists() or _data_suffix(path) or source.startswith((".", "/", "~")):
        return [(source, _load_file(path, cache_dir))]
    try:
        dataset = datasets.load_dataset(source, split=split, cache_dir=cache_dir)
    except Exception as error:
        raise LatentDLMError(
            f"could not load dataset '{source}' (split '{split}') from the Hugging Face hub; this machine may be "
            f"offline (HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set, or no internet) - pass a local file or "
            f"'bundled' instead. Reason: {_reason(error)}"
        ) from error
    return [(source, dataset)]


def _data_suffix(path: Path) -> str:
    """The format suffix of `path` (".csv" for "x.csv.gz"), or "" if it is not a supported data file."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes.pop()
    return suffixes[-1] if suffixes and suffixes[-1] in _FORMATS else ""


def _load_file(path: Path, cache_dir: str | None) -> datasets.Dataset:
    """Read a local data file with the matching `datasets` builder."""
    if not path.is_file():
        raise LatentDLMError(f"file not found: {path}" + (" (it is a directory)" if path.is_dir() else ""))
    suffix = _data_suffix(path)
    if not suffix:
        raise LatentDLMError(
            f"unsupported file type: {path}; use .jsonl, .json, .csv, .tsv or .txt "
            f"(optionally compressed: {', '.join(sorted(_COMPRESSIONS))})."
        )
    if path.stat().st_size == 0:
        raise LatentDLMError(f"file is empty: {path}")
    options = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {}
    try:
        dataset = datasets.load_dataset(
            _FORMATS[suffix], data_files=str(path), split="train", cache_dir=cache_dir, **options
        )
    except Exception as error:
        if "corresponds to no data" in str(error):
            raise LatentDLMError(f"file has no rows: {path}") from error
        raise LatentDLMError(f"could not read {path} as {suffix[1:]}: {_reason(error)}") from error
    if dataset.num_rows == 0:
        raise LatentDLMError(f"file has no rows: {path}")
    return dataset


def _column_values(dataset: datasets.Dataset, column: str | None, label: str, any_type: bool = False) -> list[str | None]:
    """The values of `column` (or the default text column); every value must be a string or missing,
    unless `any_type` (then values become strings)."""
    column = _text_column(dataset, column, label)
    available = ", ".join(f"{name} ({_dtype(feature)})" for name, feature in dataset.features.items())
    values = dataset[column]
    if any_type:
        return [None if value is None else str(value) for value in values]
    bad = next((value for value in values if value is not None and not isinstance(value, str)), None)
    if bad is not None:
        raise LatentDLMError(
            f"{label}: column '{column}' holds non-text values (e.g. {bad!r} of type {type(bad).__name__}); "
            f"pick a string column. Available columns: {available}"
        )
    return list(values)


def _text_column(dataset, column: str | None, label: str) -> str:
    """`column`, or the default text column ('text', else the only string column), checked to exist."""
    features = dataset.features or {}  # a streamed dataset may not know its features before reading
    names = list(features) or list(getattr(dataset, "column_names", None) or [])
    available = ", ".join(f"{name} ({_dtype(feature)})" for name, feature in features.items()) or ", ".join(names)
    if column is None:
        strings = [name for name, feature in features.items() if _dtype(feature) in _STRING_DTYPES]
        if "text" not in names and len(strings) != 1:
            raise LatentDLMError(
                f"{label}: cannot tell which column holds the text (no 'text' column and {len(strings)} string "
                f"columns); pass a column name. Available columns: {available}"
            )
        column = "text" if "text" in names else strings[0]
    if names and column not in names:
        raise LatentDLMError(f"{label}: column '{column}' not found. Available columns: {available}")
    return column


def _dtype(feature) -> str:
    return feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__


def _reason(error: BaseException) -> str:
    """The innermost cause of `error`, on one short line."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:200] if lines else ''}"
