"""Source-aware decoding (source_context): a text -> text decoder reads the source text before writing each
unit from its latent; trained on (source, target) pairs, given its sources by the text-conditioned pipeline."""

import pytest
import torch
from helpers import tiny_diffusion_overrides
from test_pretrained import concept_model, concept_overrides, stand_ins  # noqa: F401 (a fixture)

from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.cli import main
from latentdlm.errors import LatentDLMError
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

pytest.importorskip("peft")
SOURCES = ["The Fox and the Grapes: a hungry fox cannot reach the grapes and says they are sour.",
           "The Dog and his Shadow"]
TARGETS = ["The fox says the grapes are sour.", "A dog drops his meat for its shadow."]


def source_model(stand_ins, budget: int = 8) -> ParagraphAutoencoder:  # noqa: F811
    return concept_model(stand_ins, **{"model.source_context": budget, "model.segmentation.mode": "none"})


def test_the_source_is_read_first_cut_to_its_budget_and_never_a_target(stand_ins):  # noqa: F811
    model = source_model(stand_ins, budget=8)
    tokenize = lambda text: model.processor.decoder_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    heads = model.processor.context_ids([[t] for t in TARGETS], SOURCES)
    assert heads == [tokenize(SOURCES[0])[:8], tokenize(SOURCES[1])[:8]] and len(tokenize(SOURCES[0])) > 8
    targets = model.processor.tokenize(TARGETS).decoder_ids
    batch = model.processor.collate(None, targets, heads)
    width = max(map(len, heads))
    assert (batch["labels"][:, :width] == -100).all()
    assert batch["labels"][:, width:].tolist() == model.processor.collate(None, targets)["labels"].tolist()

    # the decoder reads it: another source changes its loss on the same target from the same latent
    latents = torch.randn(2, 1, 32)
    nll = model.decoder_nll(latents, [[t] for t in TARGETS], sources=SOURCES)
    other = model.decoder_nll(latents, [[t] for t in TARGETS], sources=SOURCES[::-1])
    assert not torch.allclose(nll, other)


def test_decoding_writes_what_the_training_layout_predicts(stand_ins):  # noqa: F811
    """Greedy decoding with sources writes, token by token, the argmax of the teacher-forced logits of the
    training layout ([prefix, source, start token, target]): training and decoding read the source alike."""
    model = source_model(stand_ins)
    encoded = model.encode(TARGETS)
    written = model.decode(encoded, sources=SOURCES, max_new_tokens=6)
    assert len(written) == 2
    tokenizer = model.processor.decoder_tokenizer
    for row, text in enumerate(written):
        generated = model.decoder.generate(model.to_memory(model.latent_design.project(encoded.latents[row, :1])), 6,
                                           context_ids=model.processor.source_ids(SOURCES[row : row + 1]), do_sample=False,
                                           num_beams=1, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        ids = [i for i in generated[0].tolist() if i != tokenizer.pad_token_id]
        assert model.processor.batch_decode(torch.tensor([ids]))[0] == text
        batch = model.processor.collate(None, [ids[:-1] + [tokenizer.eos_token_id] if ids else [tokenizer.eos_token_id]],
                                        model.processor.source_ids(SOURCES[row : row + 1]))
        logits = model.decoder_logits(model.latent_design.project(encoded.latents[row, :1]), batch["decoder_input_ids"],
                                      batch["decoder_attention_mask"])
        predicted = logits[0, (batch["labels"][0] != -100)].argmax(-1).tolist()
        assert predicted[: len(ids)] == ids[: len(predicted)]


def test_sources_are_required_exactly_where_the_decoder_reads_them(stand_ins):  # noqa: F811
    aware, plain = source_model(stand_ins), concept_model(stand_ins, **{"model.segmentation.mode": "none"})
    encoded = aware.encode(TARGETS)
    with pytest.raises(LatentDLMError, match="AND a source text"):
        aware.decode(encoded)
    with pytest.raises(LatentDLMError, match="2 texts"):
        aware.decode(encoded, sources=SOURCES[:1])
    with pytest.raises(LatentDLMError, match="empty"):
        aware.decode(encoded, sources=["", "x"])
    with pytest.raises(LatentDLMError, match="without source_context"):
        plain.decode(plain.encode(TARGETS), sources=SOURCES)
    with pytest.raises(LatentDLMError, match="without decoder_stream"):
        concept_model(stand_ins, **{"model.source_context": 8, "model.decoder_stream": "true"})


def test_a_source_aware_autoencoder_and_its_dit_train_and_summarise_end_to_end(stand_ins, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    preset = tmp_path / "concept.yaml"
    preset.write_text("data: {source: 'bundled:aesop'}\n")
    pairs = ["data.column=text", "model.segmentation.mode=none", "model.max_length=24"]
    run = tmp_path / "ae"
    assert main(["train-autoencoder", "--config", str(preset), *concept_overrides(stand_ins, run),
                 *pairs, "model.source_context=16"]) == 2  # no source column: one clear error
    assert "go together" in capsys.readouterr().err
    assert main(["train-autoencoder", "--config", str(preset), *concept_overrides(stand_ins, run),
                 *pairs, "model.source_context=16", "data.source_column=title"]) == 0
    autoencoder = ParagraphAutoencoder.from_pretrained(run / "autoencoder")
    assert autoencoder.config.source_context == 16 and "heldout_latent_gap" in autoencoder.training_record["metrics"]

    dit = ["data.column=text", "condition.max_length=16", "denoiser.patch_size=1"]
    assert main(["train-diffusion", "--config", "configs/diffusion/tiny.yaml", *tiny_diffusion_overrides(run / "autoencoder", tmp_path / "u"),
                 "data.column=text", "denoiser.patch_size=1"]) == 2  # the decoder needs sources: an unconditional DiT cannot feed it
    assert "data.condition_column" in capsys.readouterr().err
    assert main(["train-diffusion", "--config", "configs/diffusion/tiny_cond.yaml", "data.condition_column=title",
                 *tiny_diffusion_overrides(run / "autoencoder", tmp_path / "dm"), *dit]) == 0
    pipe = LatentDiffusionTextPipeline.from_pretrained(tmp_path / "dm" / "pipeline")
    titles = ["The Fox and the Grapes", "The Lion and the Mouse"]
    written = pipe(num_samples=2, conditions=titles, num_inference_steps=2, seed=0).texts
    assert len(written) == 2 and written == pipe(num_samples=2, conditions=titles, num_inference_steps=2, seed=0).texts
    with pytest.raises(LatentDLMError, match="AND a source text"):
        pipe.autoencoder.reconstruct(titles)  # its decoder cannot write without the source
    out = tmp_path / "summaries.jsonl"
    source = tmp_path / "docs.txt"
    source.write_text("The Fox and the Grapes\nThe Lion and the Mouse\n")
    assert main(["summarize", "--model", str(tmp_path / "dm" / "pipeline"), "--input", str(source), "--output", str(out),
                 "--steps", "2"]) == 0
    assert len(out.read_text().splitlines()) == 2


def test_the_corpus_keeps_each_texts_source_and_a_separate_held_out_file(tmp_path):
    import json

    from latentdlm.training.autoencoder import TextDataConfig, load_corpus

    rows = [{"document": f"Document number {i}.", "summary": f"Summary {i}."} for i in range(10)]
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "held.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    data = TextDataConfig(source=str(tmp_path / "train.jsonl"), column="summary", source_column="document", eval_fraction=0.2)
    train, held = load_corpus(data, seed=0, source_context=8)
    assert len(train.texts) == 8 and len(held.texts) == 2
    assert all(source == f"Document number {t.split()[1][:-1]}." for t, source in zip(train.texts + held.texts, train.sources + held.sources))
    plain = TextDataConfig(source=str(tmp_path / "train.jsonl"), column="summary", eval_source=str(tmp_path / "held.jsonl"))
    train, held = load_corpus(plain, seed=0)
    assert len(train.texts) == 10 and held.texts == ["Summary 0.", "Summary 1."] and held.sources is None
    with pytest.raises(LatentDLMError, match="go together"):
        load_corpus(plain, seed=0, source_context=8)
