"""What ``lowlight-fast train`` guarantees: no non-finite weights are ever saved, bad values are refused
with one line and exit status 2, a resumed run says which settings it takes from its checkpoint, and a
failed write names the file and keeps the previous checkpoint."""
from __future__ import annotations

import pytest
import torch

from lowlight_fast import train as T


def _train(data_dir, out, *extra):
    return ("train", "zerodce", data_dir, "-o", out, "--crop", "32", "--batch-size", "2", "--device", "cpu",
            "--threads", "1", "-q", *extra)


@pytest.mark.parametrize("flag,message", [("--lr", "--lr must be a positive finite number"),
                                          ("--grad-clip", "--grad-clip must be a positive finite number")])
@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_learning_rates_and_clips_are_refused(cli_main, tmp_path, data_dir, flag, message, value):
    out = tmp_path / "run"
    status, err = cli_main(*_train(data_dir, out, "--steps", "6", flag, value, "--checkpoint-every", "1"))
    assert status == 2 and message in err and "Traceback" not in err
    assert not (out / "checkpoint.pt").exists() and not (out / "zerodce.safetensors").exists()


def test_an_update_that_makes_the_weights_non_finite_stops_the_run_and_saves_nothing_of_it(
        cli_main, tmp_path, data_dir, monkeypatch):
    """A finite loss and gradient whose update is still too large (what --lr inf did): the run stops at
    that step, the last checkpoint is the last finite one, and no weights file is written."""
    out = tmp_path / "run"
    real_step = torch.optim.Adam.step
    calls = {"n": 0}

    def exploding_step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].mul_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", exploding_step)
    status, err = cli_main(*_train(data_dir, out, "--steps", "6", "--checkpoint-every", "1"))
    assert status == 2, err
    assert "the weights became non-finite in the update of step 3" in err
    assert "its result was not saved" in err and "the last good checkpoint (step 2) is intact" in err
    state = T.load_checkpoint(out / "checkpoint.pt")
    assert state["step"] == 2
    assert all(bool(torch.isfinite(v).all()) for v in state["model"].values())
    assert not (out / "zerodce.safetensors").exists()


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    good = {"format": T.CHECKPOINT_FORMAT, "step": 1, "model": {"w": torch.ones(3)}}
    T.save_checkpoint(tmp_path / "c.pt", good)
    bad = {"format": T.CHECKPOINT_FORMAT, "step": 2, "model": {"w": torch.tensor([1.0, float("nan"), 0.0])}}
    with pytest.raises(T.TrainingError, match=r"w holds 1 non-finite.*not written"):
        T.save_checkpoint(tmp_path / "c.pt", bad)
    assert torch.load(tmp_path / "c.pt", weights_only=True)["step"] == 1


def test_a_full_disk_while_checkpointing_is_named_and_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    T.save_checkpoint(path, {"format": T.CHECKPOINT_FORMAT, "step": 1, "model": {"w": torch.ones(2)}})

    def full(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(T.TrainingError, match="no space left on the device; the previous checkpoint"):
        T.save_checkpoint(path, {"format": T.CHECKPOINT_FORMAT, "step": 2, "model": {"w": torch.ones(2)}})
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]


@pytest.mark.parametrize("args,message", [
    (["--lr", "-1"], "--lr must be a positive finite number, got -1.0"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--weight-decay", "nan"], "--weight-decay must be a non-negative finite number"),
    (["--threads", "-1"], "--threads: must be at least 1"),
    (["--threads", "0"], "--threads: must be at least 1"),
    (["--device", "gpu"], "--device gpu: expected auto, cpu, cuda or cuda:N"),
])
def test_bad_training_values_are_one_line_and_exit_2(cli_main, tmp_path, data_dir, args, message):
    status, err = cli_main(*_train(data_dir, tmp_path / "run", "--steps", "2", *args))
    assert status == 2 and message in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_resume_refuses_settings_that_differ_from_its_checkpoint(cli_main, tmp_path, data_dir):
    out = tmp_path / "run"
    assert cli_main(*_train(data_dir, out, "--steps", "2"))[0] == 0
    status, err = cli_main(*_train(data_dir, out, "--steps", "4", "--resume", "--lr", "0.5",
                                        "--batch-size", "3"))
    assert status == 2 and "Traceback" not in err
    assert "--lr 0.5 (the checkpoint has 0.0001)" in err and "--batch-size 3 (the checkpoint has 2)" in err
    assert T.load_checkpoint(out / "checkpoint.pt")["step"] == 2
    # the same values as the checkpoint's, and a longer run, are accepted
    status, err = cli_main(*_train(data_dir, out, "--steps", "4", "--resume", "--batch-size", "2"))
    assert status == 0, err
    assert T.load_checkpoint(out / "checkpoint.pt")["step"] == 4


def test_a_full_disk_while_writing_the_final_weights_is_one_line(cli_main, tmp_path, data_dir, monkeypatch):
    import lowlight_fast.models as models

    def full(model, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(models, "save_weights", full)
    status, err = cli_main(*_train(data_dir, tmp_path / "run", "--steps", "1"))
    assert status == 2 and "Traceback" not in err
    assert "cannot write the weights" in err and "no space left on the device" in err
    assert T.load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1  # the checkpoint is there
