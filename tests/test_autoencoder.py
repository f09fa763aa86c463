"""The autoencoder's parts, text API, objective and save/load on tiny random models."""

import json
import math

import pytest
import torch
from helpers import TINY_ENCODER, tiny_train_config
from transformers import AutoConfig, AutoModel

from latentdlm.autoencoder.build import build_autoencoder
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.autoencoder.objective import ObjectiveConfig, autoencoder_loss
from latentdlm.data.sources import load_texts
from latentdlm.errors import LatentDLMError

TEXTS = load_texts("bundled:aesop")[:40]
STORY = "The Fox was hungry. He saw some grapes on a vine. They were too high. He said they were sour."


def tiny_model(decoder_type="bart", **model_fields) -> ParagraphAutoencoder:
    torch.manual_seed(0)
    cfg = tiny_train_config(decoder=decoder_type).model
    for key, value in model_fields.items():
        setattr(cfg, key, value)
    return build_autoencoder(cfg, TEXTS).eval()


def one_batch(model, texts):
    units = [u for per_text in model.processor.split_units(texts) for u in per_text]
    tokens = model.processor.tokenize(units)
    return model.processor.collate(tokens.encoder_ids, tokens.decoder_ids)


@pytest.mark.parametrize("decoder", ["bart", "t5", "gpt2", "llama"])
def test_each_decoder_adapter_trains_and_decodes(decoder):
    model = tiny_model(decoder)
    batch = one_batch(model, TEXTS[:2])
    terms = autoencoder_loss(model.train(), batch, ObjectiveConfig(), step=1)
    terms["loss"].backward()
    assert torch.isfinite(terms["loss"])
    assert model.to_memory.input_projection.weight.grad.abs().sum() > 0
    assert model.latent_design.compressor.latent_queries.grad.abs().sum() > 0
    encoded = model.eval().encode([STORY])
    assert encoded.latents.shape == (1, 4, 4, 8)
    ids = model.decoder.generate(model.to_memory(encoded.latents[0]), max_new_tokens=3, min_new_tokens=3, pad_token_id=0)
    assert ids.shape == (4, 3)  # one row per segment, start token not included
    texts = model.decode(encoded, max_new_tokens=3)
    tokenizer = model.processor.decoder_tokenizer
    greedy = model.decoder.generate(model.to_memory(encoded.latents[0]), max_new_tokens=3, do_sample=False, num_beams=1,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id, eos_token_id=model.processor.decoder_tokenizer.eos_token_id)
    pieces = [t.strip() for t in model.processor.decoder_tokenizer.batch_decode(greedy, skip_special_tokens=True)]
    assert texts == [" ".join(p for p in pieces if p)]  # every segment decoded, rejoined in order


@pytest.mark.parametrize("encoder", ["bart", "t5"])
def test_encoder_half_of_seq2seq_models(encoder):
    from helpers import TINY_DECODERS

    model = tiny_model(encoder=type(tiny_train_config().model.encoder)(config=dict(TINY_DECODERS[encoder])))
    assert type(model.encoder.model).__name__ in ("BartEncoder", "T5Stack")
    assert model.encode([STORY]).latents.shape == (1, 4, 4, 8)


def test_sentence_transformers_encoder_from_a_local_folder(tmp_path):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    base = tmp_path / "bert"
    AutoModel.from_config(AutoConfig.for_model(**{**TINY_ENCODER, "vocab_size": 600})).save_pretrained(base)
    tiny_model().processor.encoder_tokenizer.save_pretrained(base)
    transformer = Transformer(str(base))
    st = SentenceTransformer(modules=[transformer, Pooling(transformer.get_embedding_dimension())])
    st.save(str(tmp_path / "st"))
    part = type(tiny_train_config().model.encoder)(kind="sentence_transformers", name_or_path=str(tmp_path / "st"), freeze=True)
    model = tiny_model(encoder=part)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert model.encode([STORY]).latents.shape == (1, 4, 4, 8)
    reloaded_dir = tmp_path / "ae"
    model.save_pretrained(reloaded_dir)
    assert torch.equal(ParagraphAutoencoder.from_pretrained(reloaded_dir).encode([STORY]).latents, model.encode([STORY]).latents)


def test_save_load_round_trip_is_exact(tmp_path):
    model = tiny_model()
    model.save_pretrained(tmp_path / "ae")
    loaded = ParagraphAutoencoder.from_pretrained(tmp_path / "ae")
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    a, b = model.encode(TEXTS[:3]), loaded.encode(TEXTS[:3])
    assert torch.equal(a.latents, b.latents)
    kwargs = dict(max_new_tokens=4, min_new_tokens=4)
    assert model.decode(a, **kwargs) == loaded.decode(b, **kwargs)
    assert json.loads((tmp_path / "ae" / "config.json").read_text())["model_type"] == "latentdlm-paragraph-autoencoder"


def test_save_replaces_an_old_folder_atomically(tmp_path):
    model = tiny_model()
    (tmp_path / "ae").mkdir()
    (tmp_path / "ae" / "stale.txt").write_text("old")
    model.save_pretrained(tmp_path / "ae")
    assert not (tmp_path / "ae" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["ae"]  # no temporary folders left behind


def test_segment_mode_gives_one_block_per_sentence_in_order():
    model = tiny_model()
    encoded = model.encode([STORY, "One sentence only."])
    assert encoded.segment_mask.tolist() == [[True] * 4, [True, False, False, False]]
    # each segment decodes from its own block: decoding segments alone gives the same pieces, in order
    whole = model.decode(encoded, max_new_tokens=3, min_new_tokens=3)
    pieces = [model.decode(type(encoded)(encoded.latents[:1, i : i + 1], encoded.segment_mask[:1, i : i + 1]), max_new_tokens=3, min_new_tokens=3)[0] for i in range(4)]
    assert whole[0] == " ".join(pieces)


def test_paragraph_mode_is_one_unit():
    model = tiny_model(segmentation=type(tiny_train_config().model.segmentation)(mode="none"))
    assert model.encode([STORY]).latents.shape == (1, 1, 4, 8)


def test_l2_regularisation_puts_latents_on_the_sqrt_d_sphere():
    model = tiny_model(regularization="l2")
    norms = model.encode([STORY]).latents.norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, math.sqrt(8)), atol=1e-4)


def test_latent_noise_on_pooled_latents_stays_on_their_sphere():
    """The decoder trains on noisy latents where decoding reads them: on the sphere pooled latents live on."""
    from latentdlm.autoencoder.designs import PooledLatents, onto_sphere

    torch.manual_seed(0)
    clean = onto_sphere(torch.randn(8, 1, 384))
    noisy = PooledLatents(None, 384).perturb(clean, 0.3)
    assert torch.allclose(noisy.norm(dim=-1), torch.full((8, 1), math.sqrt(384)), atol=1e-4)
    assert (noisy - clean).norm(dim=-1).min() > 1.0  # and it did move them
    assert torch.equal(PooledLatents(None, 384).perturb(clean, 0.0), clean)


def test_the_pooled_residual_starts_as_the_sentence_embedding_and_gates_the_perceiver_in():
    model = tiny_model(regularization="l2", pooled_residual=True)
    design = model.latent_design
    at_init = model.encode([STORY]).latents
    with torch.no_grad():
        for weight in design.compressor.parameters():
            weight.add_(torch.randn_like(weight))
    assert torch.allclose(model.encode([STORY]).latents, at_init)  # step 0: the Perceiver is gated out
    with torch.no_grad():
        design.pooled.weight.zero_()
        design.pooled.bias.zero_()
    assert not torch.allclose(model.encode([STORY]).latents, at_init)  # the sentence embedding is what is read
    batch = one_batch(model, [STORY])
    latents = model.encode_tokens(batch["input_ids"], batch["attention_mask"]).mean
    (latents * torch.randn_like(latents)).sum().backward()
    assert design.compressor_gate.grad.abs() > 0  # and the gate learns to let the Perceiver in
    assert "latent_design.pooled.weight" in model.state_dict() and tiny_model().latent_design.pooled is None


@pytest.mark.parametrize("regularization", ["l2", "vae"])
def test_batch_normed_latents_cannot_be_the_same_for_every_unit(regularization, tmp_path):
    model = tiny_model(regularization=regularization, latent_batch_norm=True).train()
    design = model.latent_design
    features = torch.randn(1, *design.compressor.latent_queries.shape).repeat(8, 1, 1)
    features = features + 0.1 * torch.randn_like(features)  # nearly the same features for every unit (~99% shared)
    latents = design.bottleneck(features).mean.flatten(1)
    if regularization == "vae":  # standardised per coordinate across the batch: no constant coordinate
        assert latents.mean(0).abs().max() < 1e-4 and latents.std(0).min() > 0.9
    else:  # then onto the sphere: the units still point in different directions
        assert torch.nn.functional.cosine_similarity(latents[:1], latents[1:]).max() < 0.9
    model.eval()
    model.save_pretrained(tmp_path / "ae")
    reloaded = ParagraphAutoencoder.from_pretrained(tmp_path / "ae")
    assert torch.equal(reloaded.latent_design.bottleneck.standardize.running_mean, design.bottleneck.standardize.running_mean)
    assert torch.allclose(reloaded.encode([STORY]).latents, model.encode([STORY]).latents, atol=1e-5)  # running statistics at inference


def test_vae_sampling_differs_from_the_mean():
    model = tiny_model(regularization="vae")
    assert not torch.equal(model.encode([STORY], sample=True).latents, model.encode([STORY]).latents)


def test_objective_terms_and_kl_annealing():
    model = tiny_model().train()
    batch = one_batch(model, TEXTS[:4])
    cfg = ObjectiveConfig(kl_weight=0.1, kl_anneal_steps=10, free_bits=0.0, word_dropout=0.3, latent_noise=0.1,
                          token_noise=0.2, adversarial_eps=0.1, adversarial_weight=0.5, contrastive_weight=0.2)
    early = autoencoder_loss(model, batch, cfg, step=0)
    assert set(early) >= {"nll", "kl", "kl_penalty", "adversarial", "contrastive", "loss"}
    assert early["kl_penalty"].item() == 0.0  # beta starts at 0
    late = autoencoder_loss(model, batch, cfg, step=10)
    tokens_per_unit = (batch["labels"] != -100).sum().item() / batch["labels"].shape[0]
    assert late["kl_penalty"].item() == pytest.approx(0.1 * late["kl"].item() / tokens_per_unit, rel=1e-5)
    late["loss"].backward()


def test_free_bits_floor_the_penalty():
    model = tiny_model().train()
    batch = one_batch(model, TEXTS[:4])
    terms = autoencoder_loss(model, batch, ObjectiveConfig(kl_weight=1.0, kl_anneal_steps=0, free_bits=100.0), step=5)
    tokens_per_unit = (batch["labels"] != -100).sum().item() / batch["labels"].shape[0]
    assert terms["kl_penalty"].item() == pytest.approx(100.0 * 4 * 8 / tokens_per_unit, rel=1e-5)  # nats per dim per unit


def test_long_units_are_truncated_with_a_count():
    model = tiny_model()
    with pytest.warns(UserWarning, match=r"1 of 2 texts are longer than max_length=32 tokens"):
        tokens = model.processor.tokenize(["short text.", "word " * 200])
    assert max(len(ids) for ids in tokens.encoder_ids + tokens.decoder_ids) <= 32


def test_empty_texts_are_rejected():
    with pytest.raises(LatentDLMError, match="empty or whitespace"):
        tiny_model().encode(["fine.", "   "])


def test_not_an_autoencoder_folder(tmp_path):
    with pytest.raises(LatentDLMError, match="not found"):
        ParagraphAutoencoder.from_pretrained(tmp_path / "missing")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.json").write_text("{}")
    with pytest.raises(LatentDLMError, match="not a latentdlm autoencoder folder"):
        ParagraphAutoencoder.from_pretrained(tmp_path / "other")


def test_weights_that_do_not_fit_the_config(tmp_path):
    tiny_model().save_pretrained(tmp_path / "a")
    tiny_model(num_latents=6).save_pretrained(tmp_path / "b")
    (tmp_path / "b" / "model.safetensors").replace(tmp_path / "a" / "model.safetensors")
    with pytest.raises((LatentDLMError, RuntimeError)):
        ParagraphAutoencoder.from_pretrained(tmp_path / "a")


def test_pretrained_parts_from_local_folders_bring_their_own_tokenizers(tmp_path):
    """The hub-name code path (from_pretrained on name_or_path), exercised on local folders."""
    from helpers import TINY_DECODERS
    from transformers import AutoModelForCausalLM

    tokenizer = tiny_model().processor.encoder_tokenizer
    AutoModel.from_config(AutoConfig.for_model(**{**TINY_ENCODER, "vocab_size": len(tokenizer)})).save_pretrained(tmp_path / "enc")
    tokenizer.save_pretrained(tmp_path / "enc")
    gpt2 = {**TINY_DECODERS["gpt2"], "vocab_size": len(tokenizer), "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    AutoModelForCausalLM.from_config(AutoConfig.for_model(**gpt2)).save_pretrained(tmp_path / "dec")
    tokenizer.save_pretrained(tmp_path / "dec")
    part = type(tiny_train_config().model.encoder)
    model = tiny_model(encoder=part(name_or_path=str(tmp_path / "enc")), decoder=part(kind="causal", name_or_path=str(tmp_path / "dec")))
    assert model.processor.encoder_tokenizer is not model.processor.decoder_tokenizer  # each part loaded its own
    assert model.encode([STORY]).latents.shape == (1, 4, 4, 8)
    with pytest.raises(LatentDLMError, match="cannot load"):
        tiny_model(encoder=part(name_or_path=str(tmp_path / "missing")), decoder=part(kind="causal", name_or_path=str(tmp_path / "dec")))


def test_package_paths_resolve_inside_installed_packages():
    from pathlib import Path

    from latentdlm.hf_parts import resolve_model_path

    assert Path(resolve_model_path("package:latentdlm/data/corpus")).joinpath("aesop.jsonl").is_file()
    assert resolve_model_path("facebook/bart-base") == "facebook/bart-base"
    with pytest.raises(LatentDLMError, match="not installed"):
        resolve_model_path("package:no_such_package_xyz/model")


# ---- frozen parts stay in eval mode -------------------------------------------------------------
def test_frozen_parts_stay_in_eval_mode_under_train():
    from helpers import TINY_DECODERS

    from latentdlm.autoencoder.objective import AutoencoderObjective

    part = type(tiny_train_config().model.encoder)
    leaky_encoder = {**TINY_ENCODER, "hidden_dropout_prob": 0.5, "attention_probs_dropout_prob": 0.5}
    leaky_decoder = {**TINY_DECODERS["bart"], "dropout": 0.5, "attention_dropout": 0.5, "activation_dropout": 0.5}
    model = tiny_model(encoder=part(kind="hf", config=leaky_encoder, freeze=True),
                       decoder=part(kind="seq2seq", config=leaky_decoder, freeze=True))
    AutoencoderObjective(model, ObjectiveConfig()).train()  # the outer module, as the training loop does
    assert model.training and model.latent_design.compressor.training and model.to_memory.training  # trainable parts train
    for frozen in (model.encoder, model.decoder):
        assert all(not m.training for m in frozen.model.modules())
    batch = one_batch(model, [STORY])
    states = [model.encoder(batch["input_ids"], batch["attention_mask"]) for _ in range(2)]
    assert torch.equal(states[0], states[1])
    memory = model.to_memory(model.encode_tokens(batch["input_ids"], batch["attention_mask"]).mean)
    logits = [model.decoder(memory, batch["decoder_input_ids"], batch["decoder_attention_mask"]) for _ in range(2)]
    assert torch.equal(logits[0], logits[1])
    model.eval().train()  # and again after a round trip
    assert not model.encoder.model.training and not model.decoder.model.training

    trainable = tiny_model(encoder=part(kind="hf", config=leaky_encoder)).train()
    assert trainable.encoder.model.training  # an unfrozen part still trains (dropout on)
    a, b = (trainable.encoder(batch["input_ids"], batch["attention_mask"]) for _ in range(2))
    assert not torch.equal(a, b)


# ---- decoder inputs and targets as each pretrained decoder was trained ---------------------------
SENTENCE = "The Fox was hungry."
# (model config ids, tokenizer post-processor) of tokenizers that behave like the real ones, on the
# in-memory BPE's ids: <pad>=0, <s>=1, </s>=2
DECODER_STYLES = {
    "bart": ("seq2seq", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "decoder_start_token_id": 2}, "<s> $A </s>"),
    "t5": ("seq2seq", {"eos_token_id": 2, "pad_token_id": 0, "decoder_start_token_id": 0}, "$A </s>"),
    "llama": ("causal", {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}, "<s> $A"),
    "gpt2": ("causal", {"bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 2}, "$A"),  # bos = eos, nothing added
}


def styled_pretrained_decoder(tmp_path, style):
    """A local 'pretrained' decoder folder: random weights, the real model's special ids, and a tokenizer
    that adds special tokens the way the real one does."""
    from helpers import TINY_DECODERS
    from tokenizers import processors
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    kind, ids, template = DECODER_STYLES[style]
    tokenizer = tiny_model().processor.decoder_tokenizer
    specials = [(t, tokenizer.convert_tokens_to_ids(t)) for t in ("<s>", "</s>") if t in template]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(single=template, special_tokens=specials)
    if style == "t5":
        tokenizer.bos_token = None
    auto = AutoModelForSeq2SeqLM if kind == "seq2seq" else AutoModelForCausalLM
    config = AutoConfig.for_model(**{**TINY_DECODERS[style], **ids, "vocab_size": len(tokenizer)})
    auto.from_config(config).save_pretrained(tmp_path / style)
    tokenizer.save_pretrained(tmp_path / style)
    part = type(tiny_train_config().model.encoder)
    return tiny_model(style, decoder=part(kind=kind, name_or_path=str(tmp_path / style)))


@pytest.mark.parametrize("style", ["bart", "t5", "llama", "gpt2"])
def test_decoder_sees_the_start_sequence_it_was_trained_with(tmp_path, style):
    model = styled_pretrained_decoder(tmp_path, style)
    x = model.processor.decoder_tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
    assert model.processor.decoder_tokenizer(SENTENCE)["input_ids"] != x or style == "gpt2"  # the tokenizer adds its specials
    batch = one_batch(model, [SENTENCE])
    expected = {  # (decoder inputs, labels)
        "bart": ([2, 1] + x, [1] + x + [2]),  # </s> <s> x  ->  <s> x </s>
        "t5": ([0] + x, x + [2]),  # <pad> x  ->  x </s>
        "llama": ([1] + x, x + [2]),  # <s> x  ->  x </s>
        "gpt2": ([2] + x, x + [2]),  # <|endoftext|> x  ->  x <|endoftext|>
    }[style]
    assert batch["decoder_input_ids"][0].tolist() == expected[0]
    assert batch["labels"][0].tolist() == expected[1]
    # generation starts where training did; a produced leading <s> is dropped when decoding to text
    encoded = model.encode([SENTENCE])
    ids = model.decoder.generate(model.to_memory(encoded.latents[0]), max_new_tokens=3, min_new_tokens=3, pad_token_id=0)
    assert ids.shape == (1, 3)
    assert "<s>" not in model.decode(encoded, max_new_tokens=3, min_new_tokens=3)[0]


def test_from_scratch_tokenizer_keeps_start_then_text():
    """The in-memory BPE adds <s> ... </s>; a random decoder starts with <s>, so targets are x </s>."""
    for decoder in ("bart", "gpt2"):
        model = tiny_model(decoder)
        x = model.processor.decoder_tokenizer(SENTENCE, add_special_tokens=False)["input_ids"]
        batch = one_batch(model, [SENTENCE])
        assert batch["decoder_input_ids"][0].tolist() == [1] + x
        assert batch["labels"][0].tolist() == x + [2]


# ---- the KL term is a per-token ELBO -------------------------------------------------------------
def _loss_on(num_units, tokens_per_unit, kl_per_unit, cfg):
    """autoencoder_loss on a stub model: uniform decoder (NLL = log V per token), posterior with a known KL."""
    from types import SimpleNamespace

    from latentdlm.autoencoder.bottleneck import Latents
    from latentdlm.autoencoder.designs import LatentDesign

    k, d, vocab = 2, 4, 50
    mean = torch.full((num_units, k, d), math.sqrt(2 * kl_per_unit / (k * d)))  # KL = 0.5 * mean^2 per dim
    stub = SimpleNamespace(
        processor=SimpleNamespace(encoder_tokenizer=None, decoder_tokenizer=None), latent_design=LatentDesign(),
        encode_tokens=lambda ids, mask: Latents(mean, torch.zeros_like(mean)),
        batch_logits=lambda latents, batch: torch.zeros(*batch["decoder_input_ids"].shape, vocab) + 0 * latents.sum(),
    )
    shape = (num_units, tokens_per_unit)
    batch = {"input_ids": torch.ones(shape, dtype=torch.long), "attention_mask": torch.ones(shape, dtype=torch.long),
             "decoder_input_ids": torch.ones(shape, dtype=torch.long), "decoder_attention_mask": torch.ones(shape, dtype=torch.long),
             "labels": torch.ones(shape, dtype=torch.long)}
    return autoencoder_loss(stub, batch, cfg, step=10), math.log(vocab)


def test_kl_weight_means_the_same_for_long_and_short_units():
    """Same per-token statistics (NLL and KL per token), units of different lengths: same loss. One
    20-token paragraph with 8 nats of KL vs two 10-token segments with 4 nats each."""
    cfg = ObjectiveConfig(kl_weight=0.5, kl_anneal_steps=0)
    paragraph, log_v = _loss_on(num_units=1, tokens_per_unit=20, kl_per_unit=8.0, cfg=cfg)
    segments, _ = _loss_on(num_units=2, tokens_per_unit=10, kl_per_unit=4.0, cfg=cfg)
    for terms in (paragraph, segments):
        assert terms["nll"].item() == pytest.approx(log_v, rel=1e-5)
        # (sum_tokens NLL + beta * sum_units KL) / sum_tokens
        assert terms["kl_penalty"].item() == pytest.approx(0.5 * 8.0 / 20, rel=1e-5)
        assert terms["loss"].item() == pytest.approx((20 * log_v + 0.5 * 8.0) / 20, rel=1e-5)
    # the same 4 nats per unit on units twice as long weigh half as much per token
    long_units, _ = _loss_on(num_units=2, tokens_per_unit=20, kl_per_unit=4.0, cfg=cfg)
    assert long_units["kl_penalty"].item() == pytest.approx(segments["kl_penalty"].item() / 2, rel=1e-5)
    # free bits stay nats per latent dimension per unit: a floor of 2 nats x 8 dims = 16 nats per unit
    floored, _ = _loss_on(num_units=2, tokens_per_unit=10, kl_per_unit=4.0, cfg=ObjectiveConfig(kl_weight=0.5, kl_anneal_steps=0, free_bits=2.0))
    assert floored["kl_penalty"].item() == pytest.approx(0.5 * 16.0 / 10, rel=1e-5)


def test_logged_kl_is_nats_per_unit():
    terms, _ = _loss_on(num_units=2, tokens_per_unit=10, kl_per_unit=4.0, cfg=ObjectiveConfig(kl_weight=0.5))
    assert terms["kl"].item() == pytest.approx(4.0, rel=1e-5)  # reported as is, not divided by tokens
    model = tiny_model().train()
    real = autoencoder_loss(model, one_batch(model, TEXTS[:2]), ObjectiveConfig(), step=1)
    assert "kl" in real and real["kl"].item() > 0
