"""data.streaming in the autoencoder stage: a stream of texts tokenized once into shards and read by index gives the
units, batches and training a listed corpus gets; held out are the stream's first texts (or data.eval_source's)."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from helpers import launch_two_cpu_processes, tiny_overrides, tiny_train_config
from test_pretrained import concept_model, concept_overrides, stand_ins  # noqa: F401 (a fixture)

from latentdlm.autoencoder.build import build_autoencoder
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.autoencoder.token_cache import FOLDER, UnitTokens
from latentdlm.cli import main
from latentdlm.data.sources import TextStream, load_texts
from latentdlm.shards import MANIFEST, shard_name
from latentdlm.training.autoencoder import load_corpus, make_dataloader, unit_data

TINY = str(Path(__file__).resolve().parents[1] / "configs/autoencoder/tiny.yaml")
STREAM = {"data.streaming": "true", "data.limit": 40}


def tiny_model(decoder="bart", **extra):
    cfg = tiny_train_config("unused", decoder, **STREAM, **extra)
    torch.manual_seed(0)
    return build_autoencoder(cfg.model, load_texts("bundled:aesop")).eval(), cfg.data


def same_units(model, data, folder):
    listed = unit_data(model, load_texts(data.source, data.column, data.split, data.limit))
    streamed = unit_data(model, TextStream(data), folder=folder, shard_units=16)
    assert streamed.counts == listed.counts and streamed.lengths.tolist() == listed.lengths
    assert list(streamed.decoder_ids[:]) == listed.decoder_ids
    assert [streamed.decoder_ids[i] for i in (0, 17, len(listed.decoder_ids) - 1)] == [listed.decoder_ids[i] for i in (0, 17, -1)]
    if listed.contexts is None:
        assert streamed.contexts is None
    else:
        assert streamed.contexts[:] == listed.contexts
    if isinstance(listed.encoder_inputs, list):
        assert streamed.encoder_inputs[:] == listed.encoder_inputs
    else:  # fixed latents: both from the latent cache
        torch.testing.assert_close(streamed.encoder_inputs[:], listed.encoder_inputs[:])
    return listed, streamed


@pytest.mark.parametrize("decoder, extra", [("bart", {}), ("gpt2", {"model.decoder_context": 1})], ids=["plain", "decoder_context"])
def test_a_streamed_corpus_gives_the_listed_units_and_batches(tmp_path, decoder, extra):
    model, data = tiny_model(decoder, **extra)
    same_units(model, data, tmp_path)
    texts = load_texts(data.source, data.column, data.split, data.limit)
    listed = list(make_dataloader(model, texts, 4, seed=3))
    streamed = list(make_dataloader(model, TextStream(data), 4, seed=3, folder=tmp_path, shard_units=16))
    assert len(listed) == len(streamed) > 10
    for a, b in zip(listed, streamed):
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fixed_latents_and_whole_story_designs_stream_too(stand_ins, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    data = tiny_train_config(**STREAM).data
    for design in ("decoder_stream", "decoder_plan"):
        model = concept_model(stand_ins, **{f"model.{design}": "true"})
        assert model.fixed_latents
        same_units(model, data, tmp_path / design)
        texts = load_texts(data.source, data.column, data.split, data.limit)
        listed = next(iter(make_dataloader(model, texts, 2, seed=1)))
        streamed = next(iter(make_dataloader(model, TextStream(data), 2, seed=1, folder=tmp_path / design, shard_units=16)))
        assert listed.keys() == streamed.keys()
        for key in listed:  # latents encoded in other batches: equal up to float rounding
            torch.testing.assert_close(listed[key], streamed[key], msg=key)


def test_a_killed_tokenization_resumes_from_its_finished_shards(tmp_path):
    model, data = tiny_model()
    listed, _ = same_units(model, data, tmp_path)
    (cache,) = (tmp_path / FOLDER).iterdir()
    shards = sorted(cache.glob("shard-*"))
    assert len(shards) > 3
    kept = {p.name: p.stat().st_mtime_ns for p in shards[:-2]}
    shards[-2].unlink()
    (cache / MANIFEST).unlink()  # as if killed before the end
    _, again = same_units(model, data, tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in sorted(cache.glob("shard-*"))[:-2]} == kept  # not rewritten
    assert (cache / shards[-2].name).is_file() and (cache / shard_name(len(shards) - 1)).is_file()
    assert list(again.decoder_ids[:]) == listed.decoder_ids
    unit_data(model, TextStream(data), folder=tmp_path, shard_units=32)  # other settings: a new cache, the old one removed
    (other,) = (tmp_path / FOLDER).iterdir()
    assert other != cache and json.loads((other / MANIFEST).read_text())["shard_units"] == 32


def test_held_out_texts_of_a_stream_are_its_first(tmp_path):
    data = tiny_train_config(**STREAM, **{"data.max_eval": 5}).data
    train, held = load_corpus(data, seed=0)
    texts = load_texts("bundled:aesop", limit=40)
    assert held.texts == texts[:5] and list(train.texts) == texts[5:] and list(train.texts) == texts[5:]  # read again
    data.eval_source = "bundled:aesop"
    train, held = load_corpus(data, seed=0)
    assert list(train.texts) == texts and held.texts == load_texts("bundled:aesop", limit=5)


def test_training_on_a_stream_end_to_end_and_resumed_exactly(tmp_path, capsys):
    def train(out, steps, *extra):
        overrides = tiny_overrides(out, **STREAM, **{"encode_shard_units": 32, "training.max_steps": steps, "training.save_every": 2,
                                                     "training.lr_scheduler": "constant"})
        return main(["train-autoencoder", "--config", TINY, *extra, *overrides])

    straight, split = tmp_path / "straight", tmp_path / "split"
    assert train(straight, 4) == 0
    assert "a stream of training texts, 4 held out" in capsys.readouterr().out
    card = json.loads((straight / "autoencoder" / "config.json").read_text())
    assert card["training"]["data"]["num_texts"] == 36
    caches = list((straight / FOLDER).iterdir())
    assert len(caches) == 1 and json.loads((caches[0] / MANIFEST).read_text())["texts"] == 36
    assert train(split, 2) == 0 and train(split, 4, "--resume") == 0
    records = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert len(list((split / FOLDER).iterdir())) == 1  # the token cache read again, not rebuilt
    a, b = (load_file(str(run / "autoencoder" / "model.safetensors")) for run in (straight, split))
    for name in a:  # the same batches in the same order: the resumed run ends with the same weights
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_streaming_refuses_source_aware_corpora(tmp_path, capsys):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"document": f"Source {i}.", "summary": f"Summary {i}."}) + "\n" for i in range(8)))
    overrides = tiny_overrides(tmp_path / "run", **STREAM, **{"data.source": str(pairs), "data.column": "summary",
                                                              "data.source_column": "document", "model.source_context": 8})
    assert main(["train-autoencoder", "--config", TINY, *overrides]) != 0
    assert "data.streaming reads texts alone" in capsys.readouterr().err


def test_two_processes_tokenize_a_stream_in_turn_and_train_in_step(tmp_path):
    out = tmp_path / "ddp"
    info = launch_two_cpu_processes("train_autoencoder.py", TINY, tiny_overrides(out, **STREAM, encode_shard_units=48), out)
    first, second = info["rank_weight_checksums"]
    assert info["world_size"] == 2 and first == second
    (cache,) = (out / FOLDER).iterdir()
    assert len(list(cache.glob("shard-*"))) >= 4  # written by both processes in turn
    model = ParagraphAutoencoder.from_pretrained(out / "initial")
    train, _ = load_corpus(tiny_train_config(**STREAM).data, seed=0)
    assert list(UnitTokens(cache).column("decoder")[:]) == unit_data(model, list(train.texts)).decoder_ids
