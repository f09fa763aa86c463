from pathlib import Path

import pytest

from latentdlm.config import load_config
from latentdlm.errors import LatentDLMError
from latentdlm.training.autoencoder import AutoencoderTrainConfig

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted((CONFIGS / "autoencoder").glob("*.yaml"))
DIFFUSION_PRESETS = sorted((CONFIGS / "diffusion").rglob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.stem)
def test_every_autoencoder_preset_loads(preset):
    cfg = load_config(AutoencoderTrainConfig, preset)
    assert cfg.model.num_latents > 0 and cfg.model.latent_dim > 0
    assert cfg.model.decoder.kind in ("seq2seq", "causal")


def test_expected_presets_exist():
    assert {p.stem for p in PRESETS} >= {"tiny", "minilm_smollm2", "minilm_smollm2_concept", "ld4lg_bart_base", "planner_bert_gpt2",
                                         "sld_flan_t5_base"}
    flagship = {p.stem for p in (CONFIGS / "diffusion" / "flagship").glob("*.yaml")}
    tasks = {f"{design}_{task}" for design in ("concept", "perceiver") for task in ("roc_uncond", "roc_title2story", "debian", "xsum")}
    assert flagship == tasks | {"concept_agnews_uncond", "concept_agnews_class"}  # the latent-space benchmark's guidance pair


@pytest.mark.parametrize("preset", DIFFUSION_PRESETS, ids=lambda p: str(p.relative_to(CONFIGS / "diffusion")))
def test_every_diffusion_preset_loads(preset):
    from latentdlm.training.diffusion import DiffusionTrainConfig

    cfg = load_config(DiffusionTrainConfig, preset)
    assert cfg.denoiser.num_layers > 0 and cfg.autoencoder and cfg.training.output_dir
    if cfg.data.condition_column:  # text-conditioned presets name their condition encoder
        assert cfg.condition.name_or_path or cfg.condition.config


def test_flagship_presets_match_their_latent_design():
    concept = load_config(AutoencoderTrainConfig, CONFIGS / "autoencoder" / "minilm_smollm2_concept.yaml")
    perceiver = load_config(AutoencoderTrainConfig, CONFIGS / "autoencoder" / "minilm_smollm2.yaml")
    assert (concept.model.latent_type, concept.model.num_latents, concept.model.latent_dim) == ("pooled", 1, 384)
    assert perceiver.model.latent_type == "perceiver" and perceiver.model.num_latents % 4 == 0
    for cfg in (concept, perceiver):
        assert cfg.model.encoder.freeze and cfg.model.decoder.freeze and cfg.model.decoder.lora.r == 16


def test_yaml_then_overrides_take_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("training:\n  max_steps: 7\n  learning_rate: 0.5\nmodel:\n  num_latents: 3\n")
    cfg = load_config(AutoencoderTrainConfig, path, ["training.max_steps=9", "model.encoder.config={model_type: bert}"])
    assert cfg.training.max_steps == 9
    assert cfg.training.learning_rate == 0.5
    assert cfg.model.num_latents == 3
    assert cfg.model.encoder.config == {"model_type": "bert"}


def test_unknown_key_names_it_with_a_suggestion():
    with pytest.raises(LatentDLMError, match=r"unknown config key 'training.max_stepz'.*did you mean 'max_steps'"):
        load_config(AutoencoderTrainConfig, None, ["training.max_stepz=3"])


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  num_latent: 3\n")
    with pytest.raises(LatentDLMError, match=r"unknown config key 'model.num_latent' in .*c.yaml"):
        load_config(AutoencoderTrainConfig, path)


def test_mistyped_value_is_an_error():
    with pytest.raises(LatentDLMError, match=r"bad value for config key 'training.max_steps'"):
        load_config(AutoencoderTrainConfig, None, ["training.max_steps=many"])


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(LatentDLMError, match="not of the form key=value"):
        load_config(AutoencoderTrainConfig, None, ["training.max_steps"])
    with pytest.raises(LatentDLMError, match="config file not found"):
        load_config(AutoencoderTrainConfig, tmp_path / "nope.yaml")


def test_invalid_segmentation_mode_is_reported():
    with pytest.raises(LatentDLMError, match="segmentation mode"):
        load_config(AutoencoderTrainConfig, None, ["model.segmentation.mode=paragraphs"])
