"""Training loops: kill and resume, divergence, corrupted checkpoints, subnormal flushing, every model."""
from __future__ import annotations

import math
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from lowlight_fast import train as T
from tests.cli.conftest import ROOT, cli_command, run_cli

THREADS = {"OMP_NUM_THREADS": "1"}  # one thread: the same arithmetic in every process


def _args(data_dir, out, steps=24):
    return ["train", "zerodce", data_dir, "-o", out, "--crop", 32, "--batch-size", 2, "--steps", steps,
            "--checkpoint-every", 3, "--seed", 5, "-q"]


def test_sigkill_then_resume_equals_uninterrupted_run(tmp_path, data_dir):
    run_cli(*_args(data_dir, tmp_path / "full"), check=True, env_extra=THREADS)

    env = dict(os.environ, **THREADS)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.Popen(cli_command() + [str(a) for a in _args(data_dir, tmp_path / "cut")], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "cut" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    saved = T.load_checkpoint(ckpt)  # never half-written: the rename is atomic
    killed_at = saved["step"]
    assert 3 <= killed_at < 24 and killed_at % 3 == 0

    proc = run_cli(*_args(data_dir, tmp_path / "cut")[:-1], "--resume", check=True, env_extra=THREADS)
    assert f"{killed_at}/24" in proc.stderr  # the progress bar starts at the checkpoint's step
    a = load_file(tmp_path / "full" / "zerodce.safetensors")
    b = load_file(tmp_path / "cut" / "zerodce.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    full, cut = T.load_checkpoint(tmp_path / "full" / "checkpoint.pt"), T.load_checkpoint(ckpt)
    assert full["step"] == cut["step"] == 24
    for k, v in full["optimizer"]["state"].items():
        assert torch.equal(v["exp_avg_sq"], cut["optimizer"]["state"][k]["exp_avg_sq"])
    # the log rows written after the checkpoint were replaced, not duplicated
    assert (tmp_path / "cut" / "train_log.csv").read_text() == (tmp_path / "full" / "train_log.csv").read_text()


def test_corrupted_checkpoint_clear_error(tmp_path, data_dir):
    out = tmp_path / "run"
    run_cli(*_args(data_dir, out, steps=3), check=True)
    ckpt = out / "checkpoint.pt"
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 3])
    proc = run_cli(*_args(data_dir, out, steps=6)[:-1], "--resume")
    assert proc.returncode == 2
    assert "checkpoint.pt" in proc.stderr and "corrupted" in proc.stderr and "Traceback" not in proc.stderr
    ckpt.write_bytes(b"\0garbage" * 10)
    proc = run_cli(*_args(data_dir, out, steps=6)[:-1], "--resume")
    assert proc.returncode == 2 and "corrupted" in proc.stderr
    torch.save({"e_conv1.weight": torch.zeros(1)}, ckpt)
    proc = run_cli(*_args(data_dir, out, steps=6)[:-1], "--resume")
    assert proc.returncode == 2 and "not a lowlight-fast training checkpoint" in proc.stderr
    proc = run_cli(*_args(data_dir, out, steps=6)[:-1])  # a new run must not overwrite a checkpoint silently
    assert proc.returncode == 2 and "--resume" in proc.stderr


class _Poisoned(T.Objective):
    """The real objective, with a NaN loss at one step and subnormal weights planted at the first."""

    def __init__(self, cfg, nan_at=None):
        super().__init__(cfg)
        self.calls, self.nan_at = 0, nan_at

    def __call__(self, model, x, amp_dtype):
        self.calls += 1
        if self.calls == 1:
            with torch.no_grad():
                model.e_conv5.weight.view(-1)[:100] = 1e-40  # subnormal in float32
        loss, terms = super().__call__(model, x, amp_dtype)
        if self.calls == self.nan_at:
            loss = loss * float("nan")
        return loss, terms


def _cfg(data_dir, out, **kw):
    values = dict(crop=32, batch_size=2, steps=6, checkpoint_every=2, progress=False, seed=1)
    values.update(kw)
    return T.TrainConfig.for_model("zerodce", str(data_dir), str(out), **values)


def test_nan_loss_stops_with_last_checkpoint_intact(tmp_path, data_dir):
    cfg = _cfg(data_dir, tmp_path)
    with pytest.raises(T.TrainingError, match=r"loss became nan at step 5.*step 4\) is intact"):
        T.train(cfg, objective=_Poisoned(cfg, nan_at=5))
    saved = T.load_checkpoint(tmp_path / "checkpoint.pt")
    assert saved["step"] == 4
    assert all(torch.isfinite(v).all() for v in saved["model"].values())
    cfg = _cfg(data_dir, tmp_path)  # and the run resumes from it
    assert T.train(cfg, resume=tmp_path / "checkpoint.pt")["step"] == 6


def test_subnormal_weights_flushed_during_training(tmp_path, data_dir):
    cfg = _cfg(data_dir, tmp_path, steps=2, weight_decay=0.0)
    T.train(cfg, objective=_Poisoned(cfg))
    sd = load_file(tmp_path / "zerodce.safetensors")
    tiny = torch.finfo(torch.float32).tiny
    for k, v in sd.items():
        assert not ((v != 0) & (v.abs() < tiny)).any(), k


@pytest.mark.parametrize("model,kw", [("zerodcepp", {"size": 24}), ("sci", {"crop": 24, "batch_size": 1})])
def test_other_models_train_and_load_for_inference(tmp_path, data_dir, model, kw):
    from lowlight_fast.models import build_model, load_weights

    values = dict(steps=3, checkpoint_every=2, progress=False, crop=0, batch_size=3)
    values.update(kw)
    cfg = T.TrainConfig.for_model(model, str(data_dir), str(tmp_path), **values)
    before = {k: v.clone() for k, v in T.build_training_model(cfg).state_dict().items()}
    T.train(cfg)
    sd = load_file(tmp_path / f"{model}.safetensors")
    assert any(not torch.equal(before[k], sd[k]) for k in sd if sd[k].is_floating_point())
    m = load_weights(build_model(model), tmp_path / f"{model}.safetensors").eval()
    y = m.enhance_image(torch.rand(1, 3, 17, 23))
    assert y.shape == (1, 3, 17, 23) and torch.isfinite(y).all()
    assert T.load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3


def test_full_size_batches_need_equal_sizes(tmp_path, data_dir):
    cfg = _cfg(data_dir, tmp_path, crop=0, size=0, batch_size=2)
    with pytest.raises(T.TrainingError, match="differ in size"):
        T.train(cfg)


def test_batches_depend_on_seed_and_step_only(data_dir):
    cfg = _cfg(data_dir, "unused")
    files = T.list_images(str(data_dir))
    assert len(files) == 7 and "sub/img6.png" in files
    a, b = T.StepBatches(cfg, files), T.StepBatches(cfg, files)
    for step in (4, 0, 9):
        assert torch.equal(a[step], b[step])
    assert not torch.equal(a[0], a[1])
    epochs = {a.indices(s)[0] for s in range(9)}
    assert epochs == {0, 1, 2}  # 7 images, batch 2: 3 steps per epoch


@pytest.mark.parametrize("model", ["zerodce", "zerodcepp", "sci"])
def test_amp_and_cosine_run(tmp_path, data_dir, model):
    cfg = T.TrainConfig.for_model(model, str(data_dir), str(tmp_path), crop=32, size=0, batch_size=2, steps=2,
                                  checkpoint_every=2, progress=False, amp=True, schedule="cosine")
    result = T.train(cfg)
    saved = T.load_checkpoint(result["checkpoint"])
    assert saved["scheduler"]["last_epoch"] == 2
    assert math.isclose(saved["optimizer"]["param_groups"][0]["lr"], 0.0, abs_tol=1e-12)
