"""lowlight_fast.train piece by piece: resume rules, run state, a step in two parts, log, errors."""
from __future__ import annotations

import csv
from dataclasses import asdict

import pytest
import torch

from lowlight_fast import train as T
from lowlight_fast.models import registry


def _cfg(data_dir, out, **kw):
    values = dict(crop=32, batch_size=2, steps=6, checkpoint_every=2, progress=False, seed=1)
    values.update(kw)
    return T.TrainConfig.for_model("zerodce", str(data_dir), str(out), **values)


def test_recipes_come_from_the_registry():
    assert T.RECIPES == {name: spec.recipe for name, spec in registry.MODELS.items()}
    cfg = T.TrainConfig.for_model("sci", "d", "o", lr=None, batch_size=4)
    assert (cfg.lr, cfg.batch_size) == (registry.get("sci").recipe["lr"], 4)  # None keeps the recipe
    with pytest.raises(ValueError, match="model: expected one of zerodce, zerodcepp, sci"):
        T.TrainConfig.for_model("unet", "d", "o")


def test_resolve_config_takes_run_keys_from_the_checkpoint(tmp_path, data_dir):
    saved = _cfg(data_dir, tmp_path / "a", lr=3e-3, steps=10, epochs=4, seed=9)
    ckpt = tmp_path / "a" / "checkpoint.pt"
    T.save_checkpoint(ckpt, {"format": T.CHECKPOINT_FORMAT, "config": asdict(saved)})

    cfg = _cfg(data_dir, tmp_path / "a", lr=1e-5, steps=20, epochs=2, seed=0, checkpoint_every=5)
    state = T.resolve_config(cfg, ckpt)
    assert state["config"] == asdict(saved)
    assert (cfg.lr, cfg.seed, cfg.epochs) == (3e-3, 9, 4)  # from the checkpoint; epochs 2 does not shorten it
    assert cfg.steps == 20  # more steps extend the run
    assert cfg.checkpoint_every == 5  # not a setting of the optimisation: this run's value

    other = T.TrainConfig.for_model("sci", str(data_dir), str(tmp_path / "a"))
    with pytest.raises(T.TrainingError, match="trains zerodce, not sci"):
        T.resolve_config(other, ckpt)
    with pytest.raises(T.TrainingError, match="already holds a training checkpoint"):
        T.resolve_config(_cfg(data_dir, tmp_path / "a"), None)
    assert T.resolve_config(_cfg(data_dir, tmp_path / "b"), None) is None


def test_build_run_and_restore(tmp_path, data_dir):
    cfg = _cfg(data_dir, tmp_path)
    run = T.build_run(cfg)
    assert run.step == 0 and run.total == 6 and run.amp_dtype is None and not run.scaler.is_enabled()
    assert run.model.check_range is False  # the batches are in [0, 1]: no range pass per step
    assert type(run.model).check_range is True  # the class keeps checking for other users
    T.train_step(run, run.data[0])
    state = run.state_dict()
    assert state["step"] == 1 and state["format"] == T.CHECKPOINT_FORMAT

    again = T.build_run(_cfg(data_dir, tmp_path))
    T.restore(again, state)
    assert again.step == 1
    for a, b in zip(run.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state["rng"]["torch"])
    assert again.optimizer.state_dict()["state"][0]["step"] == 1


def test_a_step_split_into_parts_needs_only_its_own_gradients(tmp_path, data_dir):
    """What a tiled step does: gradients of parts of the batch accumulated, then the same update."""
    cfg = _cfg(data_dir, tmp_path, batch_size=4, grad_clip=1e3)
    whole, split = T.build_run(cfg), T.build_run(cfg)
    batch = whole.data[0]
    before = [p.clone() for p in split.model.parameters()]

    def split_gradients(run, batch):
        run.model.train()
        run.optimizer.zero_grad(set_to_none=True)
        values = {"loss": 0.0}
        for part in batch.chunk(2):  # every term of the loss is a mean over the batch
            loss, _ = run.objective(run.model, part, run.amp_dtype)
            (loss / 2).backward()
            values["loss"] += float(loss.detach()) / 2
        return values

    values = T.train_step(whole, batch)
    split_values = split_gradients(split, batch)
    T.apply_update(split, split_values)
    assert split.step == whole.step == 1
    assert split_values["loss"] == pytest.approx(values["loss"], rel=1e-5)
    for a, b, b0 in zip(whole.model.parameters(), split.model.parameters(), before):
        # the gradients the update used (it leaves them in .grad); the weights themselves are not compared:
        # Adam's first step moves each by about lr, in the direction of the sign of a possibly tiny gradient
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-4 * float(a.grad.abs().max()))
        assert not torch.equal(b, b0)


def test_non_finite_loss_is_not_applied(tmp_path, data_dir):
    run = T.build_run(_cfg(data_dir, tmp_path))
    before = [p.clone() for p in run.model.parameters()]
    batch = run.data[0]
    batch[0, 0, 0, 0] = float("nan")
    with pytest.raises(T.Diverged, match=r"the loss became nan at step 1 \(loss=nan"):
        T.train_step(run, batch)
    assert run.step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, run.model.parameters()))


def test_checkpointer_says_where_to_resume(tmp_path, data_dir):
    cfg = _cfg(data_dir, tmp_path, checkpoint_every=2)
    run = T.build_run(cfg)
    checkpoints = T.Checkpointer(cfg, run.total, last_good=None)
    assert "no checkpoint was written yet" in str(checkpoints.stopped("the loss became nan"))
    for _ in range(3):
        T.train_step(run, run.data[run.step])
        checkpoints.after_step(run)
    assert checkpoints.last_good == 2 and T.load_checkpoint(checkpoints.path)["step"] == 2
    message = str(checkpoints.stopped("the loss became nan at step 4 (loss=nan)"))
    assert message.startswith(
        "training stopped: the loss became nan at step 4 (loss=nan); the step was not applied; the last good")
    assert f"(step 2) is intact at {checkpoints.path}" in message


def test_run_log_rows_and_resume(tmp_path, data_dir):
    cfg = _cfg(data_dir, tmp_path, log_every=2)
    with T.RunLog(cfg, 0, 5) as log:
        for step in range(1, 6):
            log.record(step, {"loss": step / 10, "a_term": step})
    rows = list(csv.reader(open(log.path, newline="")))
    assert rows == [["step", "a_term", "loss"], ["2", "2", "0.2"], ["4", "4", "0.4"], ["5", "5", "0.5"]]
    with T.RunLog(cfg, 3, 5) as log:  # resumed from step 3: the rows after it are written again
        pass
    assert list(csv.reader(open(log.path, newline=""))) == rows[:2]
    with T.RunLog(cfg, 1, 5):  # only the header would be left: nothing is
        pass
    assert log.path.read_text() == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_missing_cuda_is_a_training_error(tmp_path, data_dir):
    cfg = _cfg(data_dir, tmp_path, device="cuda")
    message = r"^--device cuda asked for, but torch sees no CUDA device \(try --device cpu\)$"
    with pytest.raises(T.TrainingError, match=message):
        T.train(cfg)
