"""Plan-aware parallel decoding (decoder_plan): every segment decodes in one batched pass, each reading its
whole text's latents (one vector per segment, its own marked) before its own prefix; and `generate_tokens`,
the decoding loop in which finished rows stop costing."""

import pytest
import torch
from test_pretrained import STORY, concept_model, concept_overrides, stand_ins  # noqa: F401 (a fixture)

from latentdlm.autoencoder.decoding import PlanDecoding
from latentdlm.autoencoder.designs import plan_index
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.autoregressive import generate_tokens
from latentdlm.errors import LatentDLMError

pytest.importorskip("peft")
TEXTS = [STORY, "A dog barked.", "The cat slept. It woke up."]


def plan_model(stand_ins, **extra) -> ParagraphAutoencoder:  # noqa: F811
    model = concept_model(stand_ins, **{"model.decoder_plan": "true", **extra})
    with torch.no_grad():  # a trained marker: zeros would hide a unit's own position
        model.to_plan.own.normal_(0, 1)
    return model


def plan_batch(model, texts):
    from latentdlm.training.autoencoder import text_batch

    per_text = model.processor.split_units(texts)
    tokenized = [model.processor.tokenize(units) for units in per_text]
    return text_batch(model, [t.encoder_ids for t in tokenized], [t.decoder_ids for t in tokenized])


def test_plan_index_points_every_unit_at_its_texts_units():
    index, own = plan_index([3, 1, 2])
    assert index.tolist() == [[0, 1, 2], [0, 1, 2], [0, 1, 2], [3, -1, -1], [4, 5, -1], [4, 5, -1]]
    assert own.tolist() == [0, 1, 2, 0, 0, 1]


def test_a_segment_reads_its_whole_plan_and_its_position_not_other_texts(stand_ins):  # noqa: F811
    model = plan_model(stand_ins)
    batch = plan_batch(model, TEXTS)
    encoded = model.encode(TEXTS)
    latents = encoded.latents[encoded.segment_mask]
    logits = model.batch_logits(latents, batch)
    labels = batch["labels"]
    # the story's units alone (no other texts, no plan padding) predict the same
    alone = model.batch_logits(latents[:3], plan_batch(model, TEXTS[:1]))
    width = alone.shape[1]
    torch.testing.assert_close(logits[:3, :width][labels[:3, :width] != -100], alone[plan_batch(model, TEXTS[:1])["labels"] != -100],
                               atol=1e-4, rtol=1e-4)
    # the first sentence reads the third's latent (a later sentence of its plan) ...
    moved = latents.clone()
    moved[2] = moved[2].flip(-1)
    changed = model.batch_logits(moved, batch)
    assert not torch.allclose(changed[0][labels[0] != -100], logits[0][labels[0] != -100], atol=1e-4)
    # ... but nothing of the other texts
    torch.testing.assert_close(changed[3:][labels[3:] != -100], logits[3:][labels[3:] != -100])
    # and knows which sentence of the plan it writes
    swapped = dict(batch, plan_own=batch["plan_own"].roll(1))
    assert not torch.allclose(model.batch_logits(latents, swapped)[0][labels[0] != -100], logits[0][labels[0] != -100], atol=1e-4)
    nll = model.decoder_nll(latents, model.processor.split_units(TEXTS), batch_size=2)  # batches that cut a text
    per_unit = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    torch.testing.assert_close(nll, per_unit.sum(1) / (labels != -100).sum(1), atol=1e-4, rtol=1e-4)


def test_parallel_decoding_writes_what_the_teacher_forced_pass_predicts(stand_ins):  # noqa: F811
    """Greedy decoding of all segments at once (rows of plans of different lengths, finished rows leaving the
    batch) picks at every position the argmax of the one-pass logits over what it wrote."""
    model = plan_model(stand_ins)
    assert isinstance(model.decoding, PlanDecoding)
    encoded = model.encode(TEXTS)
    written = model.decode(encoded, joined=False, max_new_tokens=6)
    assert [len(row) for row in written] == [3, 1, 2]
    eos, pad = model.processor.decoder_tokenizer.eos_token_id, model.processor.decoder_pad_id
    plan = PlanDecoding().plan(encoded, [(r, s) for r in range(3) for s in range(len(written[r]))])
    memory, memory_mask = model.unit_memory(encoded.latents[encoded.segment_mask], plan)
    ids = model.decoder.generate(memory, 6, memory_mask=memory_mask, eos_token_id=eos, pad_token_id=pad)
    assert model.processor.batch_decode(ids) == [piece for row in written for piece in row]
    eos = int(ids[0, 2])  # a stand-in eos that the random decoder writes: rows end at different steps
    ids = model.decoder.generate(memory, 6, memory_mask=memory_mask, eos_token_id=eos, pad_token_id=pad)
    units = [row[: (row == eos).nonzero().flatten()[:1].add(1).tolist()[0] if (row == eos).any() else len(row)].tolist() for row in ids]
    assert len({len(u) for u in units}) > 1  # rows finished at different steps
    batch = model.processor.collate(None, [u if u[-1] == eos else u + [eos] for u in units])
    batch["plan_index"], batch["plan_own"] = plan_index([3, 1, 2])
    predicted = model.batch_logits(encoded.latents[encoded.segment_mask], batch).argmax(-1)
    for row, unit in enumerate(units):
        assert predicted[row, : len(unit)].tolist() == unit, row


def test_generate_tokens_equals_transformers_generate_and_frees_finished_rows(stand_ins):  # noqa: F811
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(stand_ins / "decoder").eval()
    torch.manual_seed(0)
    prompts = [[1, 5, 9, 13], [0, 0, 1, 7], [0, 1, 4, 4]]
    ids = torch.tensor(prompts)
    mask = (ids != 0).long()
    theirs = lambda eos: model.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos,  # noqa: E731
                                        pad_token_id=0, no_repeat_ngram_size=2)[:, ids.shape[1]:]
    eos = int(theirs(2)[0, 3])  # a token the first row writes 4th: there it ends, the others later or never
    rows_per_step = []
    hook = model.register_forward_pre_hook(lambda _, args, kw: rows_per_step.append(kw["inputs_embeds"].shape[0]), with_kwargs=True)
    ours = generate_tokens(model, model.get_input_embeddings()(ids), mask, 12, eos, 0, no_repeat_ngram_size=2)
    hook.remove()
    expected = theirs(eos)
    assert ours.tolist() == expected[:, : ours.shape[1]].tolist() and (expected[:, ours.shape[1]:] == 0).all()
    assert ours[0, 3] == eos and rows_per_step[:4] == [3, 3, 3, 3] and max(rows_per_step[4:], default=0) < 3  # row 0 left
    with pytest.raises(ValueError, match="beam"):
        generate_tokens(model, model.get_input_embeddings()(ids), mask, 4, eos, 0, num_beams=2)


def test_plan_decoding_choices_are_checked(stand_ins):  # noqa: F811
    with pytest.raises(LatentDLMError, match="choose one of decoder_context"):
        plan_model(stand_ins, **{"model.decoder_stream": "true"})
    with pytest.raises(LatentDLMError, match="decoder_plan .* needs a causal decoder in segment mode"):
        plan_model(stand_ins, **{"model.segmentation.mode": "none"})


def test_training_one_text_per_example(stand_ins, tmp_path, monkeypatch):  # noqa: F811
    from latentdlm.cli import main
    from latentdlm.training.autoencoder import latent_gap, make_dataloader

    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    model = plan_model(stand_ins)
    batch = next(iter(make_dataloader(model, TEXTS * 2, 2, seed=0)))
    assert batch["latents"].shape[0] == batch["plan_index"].shape[0] == batch["labels"].shape[0]
    gap = latent_gap(model, TEXTS)
    assert gap == gap and abs(gap) > 1e-4
    preset = tmp_path / "concept.yaml"
    preset.write_text("data: {source: 'bundled:aesop'}\n")
    overrides = concept_overrides(stand_ins, tmp_path / "run", **{"model.decoder_plan": "true", "training.batch_size": 2})
    assert main(["train-autoencoder", "--config", str(preset), *overrides]) == 0
    trained = ParagraphAutoencoder.from_pretrained(tmp_path / "run" / "autoencoder")
    assert trained.config.decoder_plan and len(trained.reconstruct(TEXTS)) == 3
    assert any(name.startswith("to_plan.") for name in trained.state_dict())
