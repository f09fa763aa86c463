"""`latentdlm train-autoencoder` / `reconstruct` end to end on tiny models: saving, resume, bad input."""

import json
from pathlib import Path

import pytest
import torch
from helpers import launch_two_cpu_processes, tiny_overrides
from safetensors.torch import load_file

from latentdlm.autoencoder.model import ParagraphAutoencoder
from latentdlm.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "configs/autoencoder/tiny.yaml")


def train(out, *extra, resume=False):
    args = ["train-autoencoder", "--config", TINY, *(["--resume"] if resume else []), *tiny_overrides(out), *extra]
    return main(args)


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


def test_training_saves_a_loadable_autoencoder_and_reports(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out, "training.eval_every=2", "show_examples=1") == 0
    printed = capsys.readouterr().out
    assert "held-out reconstruction over 4 texts: BLEU" in printed
    model = ParagraphAutoencoder.from_pretrained(out / "autoencoder")
    assert model.config.num_latents == 4
    records = metrics(out)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4]
    assert {"eval/bleu", "eval/exact_match", "eval/latent_gap"} <= set(next(r for r in records if "eval/bleu" in r))
    assert json.loads((out / "run_info.json").read_text())["world_size"] == 1
    assert (out / "reconstructions.jsonl").exists() and (out / "train_config.yaml").exists()
    assert (out / "training_curves.png").read_bytes()[:4] == b"\x89PNG"


def test_resume_continues_from_the_saved_step_exactly(tmp_path, capsys):
    straight, split = tmp_path / "straight", tmp_path / "split"
    common = ["training.save_every=2", "training.lr_scheduler=constant", "objective.word_dropout=0.2"]
    assert train(straight, "training.max_steps=4", *common) == 0
    assert train(split, "training.max_steps=2", *common) == 0
    assert train(split, "training.max_steps=4", *common, resume=True) == 0
    assert "resumed from" in capsys.readouterr().out
    assert [r["step"] for r in metrics(split) if "loss" in r] == [1, 2, 3, 4]
    # same data order, RNG and optimizer state: the resumed run ends with the same weights
    a = load_file(straight / "autoencoder" / "model.safetensors")
    b = load_file(split / "autoencoder" / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6, msg=name)


def test_an_existing_run_is_never_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert train(out) == 0
    before = (out / "autoencoder" / "model.safetensors").read_bytes()
    assert train(out) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "autoencoder" / "model.safetensors").read_bytes() == before
    # asked to overwrite: a fresh run, with none of the old run's metrics or checkpoints
    assert train(out, "training.overwrite_output_dir=true", "training.max_steps=2") == 0
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-2"]
    assert (out / "autoencoder" / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize(
    "extra, message",
    [
        (["training.max_stepz=3"], "unknown config key 'training.max_stepz'"),
        (["data.source=/no/such/file.jsonl"], "file not found"),
        (["data.column=body"], "column 'body' not found"),
        (["model.regularization=gauss"], "unknown regularization 'gauss'"),
        (["model.decoder.kind=diffusion"], "unknown decoder kind 'diffusion'"),
    ],
)
def test_bad_training_input_is_one_clear_error(tmp_path, capsys, extra, message):
    assert train(tmp_path / "run", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "autoencoder").exists()


def test_resume_without_a_checkpoint(tmp_path, capsys):
    assert train(tmp_path / "run", resume=True) == 2
    assert "no complete checkpoint" in capsys.readouterr().err


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("trained")
    assert train(out) == 0
    return out / "autoencoder"


def test_reconstruct_text_and_file(trained, tmp_path, capsys):
    assert main(["reconstruct", "--autoencoder", str(trained), "--text", "The Lion woke up. He roared."]) == 0
    captured = capsys.readouterr()
    assert "BLEU" in captured.err
    data = tmp_path / "in.csv"
    data.write_text("id,body\n1,A Fox saw a Crow.\n2,The Crow dropped the cheese.\n")
    out = tmp_path / "out.jsonl"
    assert main(["reconstruct", "--autoencoder", str(trained), "--input", str(data), "--column", "body", "--output", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["text"] for r in rows] == ["A Fox saw a Crow.", "The Crow dropped the cheese."]
    expected = ParagraphAutoencoder.from_pretrained(trained).reconstruct([r["text"] for r in rows])
    assert [r["reconstruction"] for r in rows] == expected  # what the Python API gives for the same texts


@pytest.mark.parametrize(
    "args, message",
    [
        (["--text", "   "], "--text is empty"),
        (["--input", "/no/such.jsonl"], "file not found"),
        (["--input", "EMPTY"], "empty"),
        (["--input", "CSV", "--column", "missing"], "column 'missing' not found"),
    ],
)
def test_reconstruct_bad_input(trained, tmp_path, capsys, args, message):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "d.csv").write_text("text\nhello there.\n")
    args = [a.replace("EMPTY", str(tmp_path / "empty.jsonl")).replace("CSV", str(tmp_path / "d.csv")) for a in args]
    assert main(["reconstruct", "--autoencoder", str(trained), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_reconstruct_from_a_folder_that_is_not_an_autoencoder(tmp_path, capsys):
    assert main(["reconstruct", "--autoencoder", str(tmp_path), "--text", "Hello."]) == 2
    assert "not a latentdlm autoencoder folder" in capsys.readouterr().err


def test_long_inputs_warn_with_a_count(trained, capsys):
    assert main(["reconstruct", "--autoencoder", str(trained), "--text", "word " * 100 + "end."]) == 0
    assert "warning: 1 of 1 texts are longer than max_length=32 tokens and were truncated" in capsys.readouterr().err


def test_two_process_cpu_ddp_through_accelerate_launch(tmp_path):
    out = tmp_path / "ddp"
    info = launch_two_cpu_processes("train_autoencoder.py", TINY, tiny_overrides(out), out)
    assert info["world_size"] == 2
    first, second = info["rank_weight_checksums"]
    assert first == second  # gradients were all-reduced: both ranks hold identical weights
    assert ParagraphAutoencoder.from_pretrained(out / "autoencoder").config.num_latents == 4


@pytest.mark.parametrize("where", ["missing_dir", "a_directory"])
def test_reconstruct_output_that_cannot_be_written_is_refused_before_any_work(trained, tmp_path, capsys, monkeypatch, where):
    def no_work(*args, **kwargs):
        raise AssertionError("reconstructed before checking the output path")

    monkeypatch.setattr(ParagraphAutoencoder, "reconstruct", no_work)
    output = tmp_path / "no" / "dir" / "out.jsonl" if where == "missing_dir" else tmp_path
    assert main(["reconstruct", "--autoencoder", str(trained), "--text", "A fox.", "--output", str(output)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--output" in err and "Traceback" not in err, err


def test_a_run_cut_by_max_minutes_shows_progress_against_its_minutes(tmp_path, monkeypatch):
    """Not '0/100000 steps, 9:00:00 left': the bar counts training minutes when the time budget ends the run."""
    import latentdlm.training.budget as budget

    bars = []

    class Recording(budget.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(budget, "tqdm", Recording)
    out = tmp_path / "timed"
    assert train(out, "training.max_steps=100000", "training.max_minutes=0.03", "training.save_every=0") == 0
    bar = bars[0]
    assert bar.unit == "min" and bar.total == pytest.approx(0.03)
    assert bar.n == pytest.approx(0.03, abs=0.02)  # the run ends when its minutes are spent
    assert "step" in bar.postfix and "100000" in bar.postfix
    assert "100000" not in str(bar.total)
    # max_steps ends the run first: the usual step bar
    bars.clear()
    assert train(tmp_path / "stepped", "training.max_steps=3", "training.max_minutes=30") == 0
    assert bars[0].unit != "min" and bars[0].total == 3 and bars[0].n == 3


def test_a_collapsed_latent_stops_the_run_with_a_clear_message(tmp_path, capsys):
    """min_latent_gap: an evaluation that finds the decoder ignoring its latent ends the run, saying so."""
    code = train(tmp_path / "collapsed", "training.max_steps=4", "training.eval_every=2", "min_latent_gap=1000")
    err = capsys.readouterr().err
    assert code == 2 and "ignores its latent" in err and "at step 2" in err and "Traceback" not in err
    assert not (tmp_path / "collapsed" / "autoencoder").exists()


def test_a_run_too_short_to_log_has_no_curves_and_no_crash(tmp_path):
    from latentdlm.evaluation.plots import plot_training_curves

    assert plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png") is None
    (tmp_path / "metrics.jsonl").write_text("")
    assert plot_training_curves(tmp_path / "metrics.jsonl", tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()
