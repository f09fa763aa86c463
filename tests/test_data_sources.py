import bz2
import gzip
import json
import time
from pathlib import Path

import datasets
import pytest

from latentdlm.data.sources import BUNDLED, data_root, load_pairs, load_texts, train_eval_split
from latentdlm.errors import LatentDLMError


@pytest.fixture(scope="module")
def bundled_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hf-datasets-cache"))


def write(path, content: str):
    path.write_text(content, encoding="utf-8")
    return str(path)


def load(tmp_path, source, **kwargs):
    return load_texts(source, cache_dir=str(tmp_path / "cache"), **kwargs)


# --- bundled corpus ---------------------------------------------------------------------------------


def test_bundled_corpus_is_real_text(bundled_cache):
    austen = load_texts("bundled:austen", cache_dir=bundled_cache)
    aesop = load_texts("bundled:aesop", cache_dir=bundled_cache)
    assert len(austen) > 8000 and len(aesop) == 146
    assert austen[0].startswith("She was the youngest of the two daughters")
    assert not any(text.upper().startswith(("CHAPTER", "VOLUME")) for text in austen)
    assert all(len(text) >= 40 for text in austen)
    assert load_texts("bundled", cache_dir=bundled_cache) == austen + aesop


def test_bundled_files_ship_inside_the_package():
    assert set(BUNDLED) == {"austen", "aesop"}
    assert all(path.is_file() and path.parent.name == "corpus" for path in BUNDLED.values())
    assert (BUNDLED["austen"].parent / "PROVENANCE.md").is_file()


def test_bundled_pairs_and_limit(bundled_cache):
    pairs = load_pairs("bundled:aesop", "title", "lesson", cache_dir=bundled_cache)
    assert len(pairs) == 146 and pairs[0] == ("The Frogs and the Ox", "Do not attempt the impossible.")
    assert load_texts("bundled", limit=3, cache_dir=bundled_cache) == load_texts(
        "bundled:austen", cache_dir=bundled_cache
    )[:3]


def test_unknown_bundled_name(tmp_path):
    with pytest.raises(LatentDLMError, match="unknown bundled corpus 'dickens'.*austen, aesop"):
        load(tmp_path, "bundled:dickens")


def test_data_root_follows_env(monkeypatch, tmp_path):
    monkeypatch.setenv("LATENTDLM_DATA", str(tmp_path))
    assert data_root() == tmp_path
    monkeypatch.delenv("LATENTDLM_DATA")
    assert data_root().parts[-2:] == ("shared", "data")


# --- local file formats -----------------------------------------------------------------------------


def test_jsonl(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": " First. ", "id": 1}\n{"text": "Second.", "id": 2}\n')
    assert load(tmp_path, path) == ["First.", "Second."]


def test_json_list_of_objects(tmp_path):
    path = write(tmp_path / "a.json", json.dumps([{"body": "One.", "n": 1}, {"body": "Two.", "n": 2}]))
    assert load(tmp_path, path) == ["One.", "Two."]  # the only string column is the default


def test_csv_with_quoted_commas(tmp_path):
    path = write(tmp_path / "a.csv", 'label,text\n1,"Hello, world."\n2,Bye.\n')
    assert load(tmp_path, path) == ["Hello, world.", "Bye."]


def test_tsv_keeps_quotes_literal(tmp_path):
    path = write(tmp_path / "a.tsv", 'text\tlabel\n"Hi," she said.\t1\nNo quotes.\t0\n')
    assert load(tmp_path, path) == ['"Hi," she said.', "No quotes."]


def test_txt_one_text_per_line(tmp_path):
    path = write(tmp_path / "a.txt", "line one\nline two\n")
    assert load(tmp_path, path) == ["line one", "line two"]


def test_compressed_files(tmp_path):
    jsonl = tmp_path / "a.jsonl.gz"
    jsonl.write_bytes(gzip.compress(b'{"text": "zipped"}\n'))
    csv = tmp_path / "a.csv.bz2"
    csv.write_bytes(bz2.compress(b"text\nbzipped\n"))
    assert load(tmp_path, str(jsonl)) == ["zipped"]
    assert load(tmp_path, str(csv)) == ["bzipped"]


def test_empty_rows_are_dropped_with_a_count(tmp_path):
    path = write(tmp_path / "a.txt", "kept\n\n   \nalso kept\n")
    with pytest.warns(UserWarning, match="dropped 2 of 4 rows"):
        assert load(tmp_path, path) == ["kept", "also kept"]


def test_limit_keeps_the_first_texts(tmp_path):
    path = write(tmp_path / "a.txt", "a\n\nb\nc\n")
    with pytest.warns(UserWarning):
        assert load(tmp_path, path, limit=2) == ["a", "b"]
    with pytest.raises(LatentDLMError, match="limit must be a positive"):
        load(tmp_path, path, limit=0)


# --- columns ----------------------------------------------------------------------------------------


def test_explicit_column(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "t", "summary": "s"}\n')
    assert load(tmp_path, path, column="summary") == ["s"]


def test_missing_column_lists_available(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "t", "summary": "s"}\n')
    with pytest.raises(LatentDLMError, match=r"column 'body' not found\. Available columns: text \(string\), summary"):
        load(tmp_path, path, column="body")


def test_ambiguous_default_column(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"document": "d", "summary": "s"}\n')
    with pytest.raises(LatentDLMError, match="cannot tell which column.*pass a column name.*document.*summary"):
        load(tmp_path, path)


def test_non_string_column(tmp_path):
    path = write(tmp_path / "a.csv", "text,label\nhello,1\n")
    with pytest.raises(LatentDLMError, match="column 'label' holds non-text values"):
        load(tmp_path, path, column="label")


def test_mixed_types_in_json(tmp_path):
    path = write(tmp_path / "a.jsonl", '{"text": "ok"}\n{"text": 7}\n')
    with pytest.raises(LatentDLMError, match="non-text values \\(e.g. 7 of type int\\)"):
        load(tmp_path, path)


# --- file errors ------------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(LatentDLMError, match="file not found: .*nope.jsonl"):
        load(tmp_path, str(tmp_path / "nope.jsonl"))


def test_empty_file(tmp_path):
    path = write(tmp_path / "a.jsonl", "")
    with pytest.raises(LatentDLMError, match="file is empty"):
        load(tmp_path, path)


def test_header_only_csv_has_no_rows(tmp_path):
    path = write(tmp_path / "a.csv", "text,label\n")
    with pytest.raises(LatentDLMError, match="file has no rows"):
        load(tmp_path, path)


def test_all_blank_texts(tmp_path):
    path = write(tmp_path / "a.txt", "\n  \n")
    with pytest.raises(LatentDLMError, match="all 2 texts are empty or whitespace-only"):
        load(tmp_path, path)


def test_unreadable_file(tmp_path):
    path = write(tmp_path / "a.jsonl", "{not json\n")
    with pytest.raises(LatentDLMError, match="could not read .*a.jsonl as jsonl"):
        load(tmp_path, path)


def test_unsupported_extension(tmp_path):
    path = write(tmp_path / "a.docx", "text")
    with pytest.raises(LatentDLMError, match="unsupported file type.*use .jsonl, .json, .csv, .tsv or .txt"):
        load(tmp_path, path)


# --- hub names --------------------------------------------------------------------------------------


def test_hub_name_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)  # datasets reads the env var once, at import
    start = time.perf_counter()
    with pytest.raises(LatentDLMError, match="could not load dataset 'no-such-user/no-such-data'.*offline"):
        load(tmp_path, "no-such-user/no-such-data")
    assert time.perf_counter() - start < 5


# --- pairs and splits -------------------------------------------------------------------------------


def test_load_pairs_drops_pairs_with_an_empty_side(tmp_path):
    rows = [{"doc": "A doc.", "sum": "A."}, {"doc": "B doc.", "sum": " "}, {"doc": "", "sum": "C."}]
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(row) for row in rows))
    with pytest.warns(UserWarning, match="dropped 2 of 3"):
        assert load_pairs(path, "doc", "sum", cache_dir=str(tmp_path / "c")) == [("A doc.", "A.")]
    with pytest.raises(LatentDLMError, match="column 'summary' not found"):
        load_pairs(path, "doc", "summary", cache_dir=str(tmp_path / "c"))


def test_train_eval_split():
    texts = [f"t{i}" for i in range(100)]
    train, evals = train_eval_split(texts, 0.1, None, seed=0)
    assert len(evals) == 10 and sorted(train + evals) == sorted(texts)
    assert (train, evals) == train_eval_split(texts, 0.1, None, seed=0)
    assert train_eval_split(texts, 0.1, None, seed=1) != (train, evals)
    assert len(train_eval_split(texts, 0.5, 3, seed=0)[1]) == 3
    assert len(train_eval_split(texts[:2], 0.01, None, seed=0)[1]) == 1
    assert train_eval_split(texts, 0.0, None, seed=0)[1] == []
    with pytest.raises(LatentDLMError, match="eval_fraction must be in"):
        train_eval_split(texts, 1.5, None, seed=0)


@pytest.mark.parametrize("preset", ["xsum_cond", "dialogsum_cond", "debian_descriptions_cond", "roc_title2story", "tiny_cond"])
def test_each_pair_preset_reads_its_shared_dataset(preset):
    """The presets' files and column mappings hold: non-empty (source, target) string pairs."""
    import yaml

    data = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs/diffusion" / f"{preset}.yaml").read_text())["data"]
    path = data_root() / data["source"].split("shared/data/", 1)[1]
    if not path.exists():
        pytest.skip(f"{path} is missing")
    pairs = load_pairs(str(path), data["condition_column"], data["column"], limit=50)
    assert len(pairs) == 50
    assert all(isinstance(s, str) and isinstance(t, str) and s.strip() and t.strip() for s, t in pairs)


def test_samsum_csv_pairs_with_multiline_dialogues():
    path = data_root() / "samsum" / "val.csv"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    pairs = load_pairs(str(path), "dialogue", "summary", limit=20)
    assert len(pairs) == 20 and all("\n" in dialogue or ":" in dialogue for dialogue, _ in pairs)
