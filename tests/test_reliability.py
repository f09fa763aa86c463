"""Faults a long run must survive: SIGKILL anywhere (both stages), corrupt or half-written checkpoints,
NaN/inf, a full disk, and logs without duplicate steps after a resume."""

import errno
import json
from pathlib import Path

import pytest
import torch
from faults import kill_trial, timed_reference
from torch.utils.data import DataLoader, TensorDataset

from latentdlm.errors import LatentDLMError
from latentdlm.training.config import TrainingConfig
from latentdlm.training.checkpoints import latest_checkpoint
from latentdlm.training.loop import make_accelerator, make_optimizer, run_training


def toy_run(out: Path, resume: bool = False, poison_step: int | None = None, **settings) -> tuple[int, torch.nn.Module]:
    """run_training on a 2->1 linear model; the loss is NaN on the `poison_step`-th batch."""
    cfg = TrainingConfig(output_dir=str(out), **{"max_steps": 6, "save_every": 2, "log_every": 1, "eval_every": 0,
                                                 "warmup_steps": 0, "lr_scheduler": "constant", "checkpoints_total_limit": 3,
                                                 **settings})
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    accelerator = make_accelerator(cfg, cpu=True)
    model = torch.nn.Linear(2, 1)
    optimizer, scheduler = make_optimizer(cfg, model, 1)
    loader = DataLoader(TensorDataset(torch.randn(24, 2)), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)

    batches = []

    def loss_fn(module, batch, step):
        batches.append(step)
        loss = module(batch[0]).pow(2).mean()
        return {"loss": loss * float("nan") if len(batches) == poison_step else loss}

    step = run_training(accelerator, cfg, model, optimizer, scheduler, loader, loss_fn,
                        resume_from=latest_checkpoint(out) if resume else None)
    return step, model


def logged_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_nan_loss_stops_naming_the_step_and_writes_no_checkpoint_from_it(tmp_path):
    with pytest.raises(LatentDLMError, match=r"loss became NaN/inf at step 3.*on_nonfinite=skip"):
        toy_run(tmp_path, poison_step=3)
    assert latest_checkpoint(tmp_path).name == "step-2"  # the last good one; nothing from step 3 on
    assert logged_steps(tmp_path) == [1, 2]


def test_a_nan_loss_can_skip_the_batch_and_go_on(tmp_path):
    with pytest.warns(UserWarning, match="non-finite loss at step 3: batch skipped"):
        step, model = toy_run(tmp_path, poison_step=3, on_nonfinite="skip", max_steps=4)
    assert step == 4 and all(torch.isfinite(p).all() for p in model.parameters())


def test_an_unknown_nonfinite_mode_is_refused(tmp_path):
    with pytest.raises(LatentDLMError, match="training.on_nonfinite must be stop or skip"):
        toy_run(tmp_path, on_nonfinite="ignore")


def test_a_corrupt_checkpoint_is_skipped_and_resume_falls_back_to_the_one_before(tmp_path):
    toy_run(tmp_path)
    newest = tmp_path / "checkpoints" / "step-6"
    weights = next(newest.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-10])  # truncated
    with pytest.warns(UserWarning, match="skipping checkpoint .*step-6: .*does not match its checksum"):
        assert latest_checkpoint(tmp_path).name == "step-4"
    (tmp_path / "checkpoints" / "step-4" / "checkpoint_complete").unlink()  # never completed
    with pytest.warns(UserWarning, match="step-4: it was never completed"):
        assert latest_checkpoint(tmp_path).name == "step-2"


def test_resume_from_an_earlier_checkpoint_logs_every_step_once_and_ends_the_same(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _, expected = toy_run(straight)
    toy_run(resumed)
    for later in ("step-4", "step-6"):  # as if killed after step 5 was logged, with step 4's checkpoint half-written
        (resumed / "checkpoints" / later / "checkpoint_complete").unlink()
    with pytest.warns(UserWarning, match="never completed"):
        step, model = toy_run(resumed, resume=True)
    assert step == 6 and logged_steps(resumed) == [1, 2, 3, 4, 5, 6]
    for a, b in zip(expected.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_a_write_error_during_a_checkpoint_is_one_message_and_keeps_the_earlier_ones(tmp_path, monkeypatch):
    from accelerate import Accelerator

    original, calls = Accelerator.save_state, []

    def full_disk(self, output_dir=None, **kwargs):
        calls.append(output_dir)
        if len(calls) == 2:
            Path(output_dir).mkdir(parents=True, exist_ok=True)
            (Path(output_dir) / "half-written.bin").write_bytes(b"\0" * 10)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    with pytest.raises(LatentDLMError, match=r"could not write the checkpoint of step 4 to .*step-4: No space left on device"):
        toy_run(tmp_path)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step-2"]  # no partial folder left behind
    assert latest_checkpoint(tmp_path).name == "step-2"


def test_a_write_error_on_the_final_model_keeps_the_finished_one(tmp_path, monkeypatch, capsys):
    from helpers import tiny_overrides

    from latentdlm.autoencoder import model as model_module
    from latentdlm.cli import main

    preset = str(Path(__file__).resolve().parents[1] / "configs/autoencoder/tiny.yaml")
    out = tmp_path / "run"
    assert main(["train-autoencoder", "--config", preset, *tiny_overrides(out)]) == 0
    before = (out / "autoencoder" / "model.safetensors").read_bytes()

    original = model_module.save_model

    def full_disk(model, path, **kwargs):
        if ".autoencoder.tmp" in path:  # the final model; the untrained one saved at the start still writes
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(model, path, **kwargs)

    monkeypatch.setattr(model_module, "save_model", full_disk)
    assert main(["train-autoencoder", "--config", preset, *tiny_overrides(out), "training.overwrite_output_dir=true"]) == 2
    assert "could not write the trained autoencoder to" in capsys.readouterr().err
    assert (out / "autoencoder" / "model.safetensors").read_bytes() == before


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_sigkill_anywhere_then_resume_ends_with_the_uninterrupted_weights(stage, autoencoder, tmp_path):
    expected, seconds = timed_reference(stage, tmp_path / "straight", autoencoder)
    random_kill = kill_trial(stage, tmp_path / "random", 1, expected, autoencoder, seconds=seconds)
    save_kill = kill_trial(stage, tmp_path / "save", 2, expected, autoencoder, during_save=True)
    assert save_kill["killed"], save_kill
    for trial in (random_kill, save_kill):
        assert trial["exact"], trial


@pytest.mark.parametrize("stage", ["autoencoder", "diffusion"])
def test_the_save_path_of_sharded_runs_gathers_the_same_weights(stage, autoencoder, tmp_path, monkeypatch):
    """FSDP cannot run on CPU processes here (accelerate makes them MULTI_CPU), so its save path, which
    rebuilds whole parts from accelerate's gathered state dict (and keeps EMA per rank), runs on one process."""
    from faults import FINAL, stage_arguments
    from safetensors.torch import load_file

    from latentdlm.cli import main
    from latentdlm.training import autoencoder as autoencoder_stage
    from latentdlm.training import checkpoints
    from latentdlm.training import diffusion as diffusion_stage

    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    assert main(stage_arguments(stage, plain, autoencoder) + ["training.num_threads=null"]) == 0
    for module in (autoencoder_stage, diffusion_stage, checkpoints):
        monkeypatch.setattr(module, "is_sharded", lambda accelerator: True)
    assert main(stage_arguments(stage, sharded, autoencoder) + ["training.num_threads=null"]) == 0
    if stage == "diffusion":
        assert (sharded / "checkpoints" / "step-12" / "ema.rank0.safetensors").exists()
    a, b = load_file(plain / FINAL[stage]), load_file(sharded / FINAL[stage])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
