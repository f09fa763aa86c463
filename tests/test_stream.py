"""One-stream decoding (decoder_stream): each text is one causal sequence, every segment's latent prefix
injected where the segment starts; trained in one pass per text, decoded under one KV cache."""

import pytest
import torch
from test_pretrained import STORY, concept_model, concept_overrides, stand_ins  # noqa: F401 (a fixture)

from latentdlm.autoencoder.decoding import DecodingConfig, StreamDecoding, decode_with_settings
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.errors import LatentDLMError

pytest.importorskip("peft")
TEXTS = [STORY, "A dog barked."]


def stream_model(stand_ins, **extra) -> ParagraphAutoencoder:  # noqa: F811
    return concept_model(stand_ins, **{"model.decoder_stream": "true", **extra})


def stream_of(model, texts):
    per_text = model.processor.split_units(texts)
    decoder_ids = [model.processor.tokenize(units).decoder_ids for units in per_text]
    return decoder_ids, model.processor.collate_stream(decoder_ids, model.to_memory.length)


def test_a_stream_is_each_units_prefix_then_its_text_labelled_as_the_unit(stand_ins):  # noqa: F811
    model = stream_model(stand_ins)
    m = model.to_memory.length
    decoder_ids, batch = stream_of(model, TEXTS)
    assert [len(d) for d in decoder_ids] == [3, 1]
    story = [label for target in decoder_ids[0] for label in [-100] * m + target]
    assert batch["labels"][0].tolist() == story
    short = [-100] * m + decoder_ids[1][0]
    assert batch["labels"][1, : len(short)].tolist() == short and (batch["labels"][1, len(short) :] == -100).all()
    assert batch["decoder_attention_mask"][1].sum() == len(short)
    assert batch["stream_index"][1, :m].tolist() == list(range(3 * m, 4 * m))  # the 4th unit's memory rows
    # each unit reads its start token and its target shifted, as the unit-by-unit collation gives them
    units = model.processor.collate(None, [ids for text in decoder_ids for ids in text])
    table_tokens = batch["stream_index"] - 4 * m
    second = slice(m + len(decoder_ids[0][0]) + m, m + len(decoder_ids[0][0]) + m + len(decoder_ids[0][1]))
    assert batch["stream_tokens"][table_tokens[0, second]].tolist() == units["decoder_input_ids"][1, : len(decoder_ids[0][1])].tolist()
    assert batch["label_units"][0, second].unique().tolist() == [1]


def test_a_segment_reads_the_story_before_it_and_not_the_other_rows(stand_ins):  # noqa: F811
    model = stream_model(stand_ins)
    _, batch = stream_of(model, TEXTS)
    latents = model.encode(TEXTS).latents[model.encode(TEXTS).segment_mask]
    logits = model.batch_logits(latents, batch)
    _, alone = stream_of(model, TEXTS[:1])
    first = model.batch_logits(latents[:3], alone)
    torch.testing.assert_close(logits[0, : first.shape[1]], first[0], atol=1e-4, rtol=1e-4)
    second = batch["label_units"][0] == 1
    moved = latents.clone()
    moved[0] = moved[0].flip(-1)  # another plan for the first sentence only
    changed = model.batch_logits(moved, batch)
    assert not torch.allclose(changed[0, second], logits[0, second], atol=1e-4)
    # its per-unit loss is the same stream's
    nll = model.decoder_nll(latents, model.processor.split_units(TEXTS))
    assert nll.shape == (4,) and torch.isfinite(nll).all()


def test_cached_stream_decoding_writes_what_the_one_pass_stream_predicts(stand_ins):  # noqa: F811
    """Greedy decoding under one KV cache picks at every position the argmax of the teacher-forced pass over
    the same stream, with rows out of step (sentences ended early by a stand-in processor), a given segment read
    in between, and prefixes read whole or one vector a step: positions, padding and cache agree."""
    from latentdlm.autoencoder.decoding import _Streams

    model = stream_model(stand_ins)
    texts = [STORY, "A dog barked. It ran home. Then it slept.", "The cat slept. It woke up."]
    encoded = model.encode(texts)
    eos = model.processor.decoder_tokenizer.eos_token_id

    def end_early(ids, scores):  # a sentence whose last token id is a multiple of 3 ends there
        if ids.shape[1] >= 2 and int(ids[0, -1]) % 3 == 0:
            scores = torch.full_like(scores, float("-inf"))
            scores[:, eos] = 0.0
        return scores

    given = "He saw some grapes on a vine."
    fixed = [[None, given, None], [None, None, None], [None, None]]
    runs = []
    for rows in ([0, 1, 2], [0], [1], [2]):  # together, then each alone (a batch of one reads its queue whole)
        streams = _Streams(model, encoded.latents[rows], encoded.segment_mask[rows], [fixed[r] for r in rows], 5,
                           {"eos_token_id": eos, "do_sample": False})
        streams.processors = end_early
        runs.append((streams.run(), streams.written_ids))
    (together, ids), alone = runs[0], runs[1:]
    assert together == [run[0][0] for run in alone] and together[0][1] == given
    assert set(ids) == {(0, 0), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1)}
    targets = [[ids[row, s] + [eos] if (row, s) in ids else model.processor.tokenize([given]).decoder_ids[0]
                for s in range(len(fixed[row]))] for row in range(3)]
    batch = model.processor.collate_stream(targets, model.to_memory.length)
    predicted = model.batch_logits(encoded.latents[encoded.segment_mask], batch).argmax(-1)
    for unit, (row, s) in enumerate((row, s) for row in range(3) for s in range(len(fixed[row]))):
        if (row, s) in ids:
            where = (batch["label_units"][row] == unit).nonzero().flatten()[: len(ids[row, s])]
            assert predicted[row, where].tolist() == ids[row, s], (row, s)


def test_stream_sampling_repeats_with_the_seed_and_beams_are_refused(stand_ins):  # noqa: F811
    model = stream_model(stand_ins)
    encoded = model.encode(TEXTS)
    rule = DecodingConfig(top_p=0.9, temperature=0.8, no_repeat_ngram_size=2)
    draw = lambda seed: decode_with_settings(model, encoded, rule, torch.Generator().manual_seed(seed), 8)  # noqa: E731
    assert draw(0) == draw(0) and len(draw(0)) == 2
    assert isinstance(model.decoding, StreamDecoding)
    with pytest.raises(LatentDLMError, match="beam search"):
        model.decode(encoded, num_beams=2)


def test_stream_needs_a_causal_decoder_in_segment_mode_without_decoder_context(stand_ins):  # noqa: F811
    with pytest.raises(LatentDLMError, match="choose one of decoder_context"):
        stream_model(stand_ins, **{"model.decoder_context": 1})
    with pytest.raises(LatentDLMError, match="decoder_stream .* needs a causal decoder in segment mode"):
        stream_model(stand_ins, **{"model.segmentation.mode": "none"})


def test_training_one_pass_per_story(stand_ins, tmp_path, monkeypatch):  # noqa: F811
    from latentdlm.cli import main
    from latentdlm.training.autoencoder import AutoencoderTrainConfig, latent_gap, make_dataloader
    from latentdlm.config import load_config

    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    preset = tmp_path / "concept.yaml"
    preset.write_text("data: {source: 'bundled:aesop'}\n")
    overrides = concept_overrides(stand_ins, tmp_path / "run", **{"model.decoder_stream": "true", "training.batch_size": 2})
    model = stream_model(stand_ins)
    batch = next(iter(make_dataloader(model, TEXTS * 2, 2, seed=0)))
    assert batch["stream_index"].shape[0] == 2 and batch["latents"].shape[0] == len(batch["label_units"].unique()) - 1
    gap = latent_gap(model, TEXTS)  # the stream reads its latents: other units' latents change its loss
    assert gap == gap and abs(gap) > 1e-4
    assert main(["train-autoencoder", "--config", str(preset), *overrides]) == 0
    trained = ParagraphAutoencoder.from_pretrained(tmp_path / "run" / "autoencoder")
    assert trained.config.decoder_stream and len(trained.reconstruct(TEXTS)) == 2
    assert load_config(AutoencoderTrainConfig, tmp_path / "run" / "train_config.yaml", []).model.decoder_stream
