"""fp16's dynamic loss scaling in the trainer. fp16 runs only on CUDA, so here the scaling is
switched on for an fp32 run on the CPU: the trainer code is the same, and a power-of-two scale
changes no bit of an fp32 step, so a scaled run must train exactly as an unscaled one."""

from __future__ import annotations

import io
import json

import pytest
import torch

import lstmkit.lm.train
from conftest import resumed_at
from lstmkit.errors import UserError
from lstmkit.fields import apply_overrides
from lstmkit.lm import api
from lstmkit.lm.config import preset
from lstmkit.lm.model import LanguageModel
from lstmkit.lm.optim import LOSS_SCALE_START
from lstmkit.lm.runs import load_lm
from lstmkit.reporting import Console

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = Console(enabled=False)
WINDOWS = 87  # of the generated corpus at batch 4 x 5 steps


def config(**fields):
    return apply_overrides(preset("test"), {"hidden_size": 16, "batch_size": 4, "num_steps": 5,
                                            "checkpoint_every": 10, "precision": "fp32",
                                            **fields}, "test")


@pytest.fixture
def scaled(monkeypatch):
    """Loss scaling on, as fp16 has it, for the fp32 runs on the CPU."""
    monkeypatch.setattr(lstmkit.lm.train, "starting_loss_scale",
                        lambda precision, saved: saved or LOSS_SCALE_START)


def overflow_at(monkeypatch, *windows: int) -> None:
    """The gradients (not the loss) of these training windows are inf, as an fp16 backward
    that overflowed gives them (windows counted over the process)."""
    window_loss, calls = LanguageModel.window_loss, []

    def overflowing(self, ids, targets, state):
        nll, penalty, state = window_loss(self, ids, targets, state)
        if self.training:
            calls.append(1)
            if len(calls) in windows:
                nll.register_hook(lambda grad: grad * float("inf"))
        return nll, penalty, state

    monkeypatch.setattr(LanguageModel, "window_loss", overflowing)


def count_steps(monkeypatch) -> list[int]:
    steps: list[int] = []
    step = torch.optim.SGD.step

    def counted(self, *args, **kwargs):
        steps.append(1)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", counted)
    return steps


def records(run, event):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["event"] == event]


def weights(run) -> list[torch.Tensor]:
    return list(load_lm(run).model.parameters())


def raw_gradient_norms(monkeypatch) -> list[float]:
    """The gradients' norm as backward left them (before the loss scale is divided out)."""
    norms: list[float] = []
    gradient_norm = lstmkit.lm.train.gradient_norm

    def recorded(params, row_grads=None, copies=None):
        norm = gradient_norm(params, row_grads, copies)
        norms.append(float(norm))
        return norm

    monkeypatch.setattr(lstmkit.lm.train, "gradient_norm", recorded)
    return norms


def test_a_scaled_run_trains_as_an_unscaled_one(ptb_dir, tmp_path, monkeypatch):
    norms = raw_gradient_norms(monkeypatch)
    api.train_ptb(config(), ptb_dir, tmp_path / "plain", console=QUIET)
    plain_norms = norms.copy()
    norms.clear()
    said = io.StringIO()
    monkeypatch.setattr(lstmkit.lm.train, "starting_loss_scale",
                        lambda precision, saved: saved or LOSS_SCALE_START)
    api.train_ptb(config(), ptb_dir, tmp_path / "scaled", console=Console(said))
    scaled_norms = norms
    assert "precision fp32, loss scale 65536 |" in said.getvalue()
    assert len(scaled_norms) == len(plain_norms) == WINDOWS
    assert scaled_norms == pytest.approx([n * LOSS_SCALE_START for n in plain_norms],
                                         rel=1e-5), "backward ran on the loss x 2^16"
    for a, b in zip(weights(tmp_path / "plain"), weights(tmp_path / "scaled"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    assert load_lm(tmp_path / "scaled").progress.loss_scale == LOSS_SCALE_START
    assert load_lm(tmp_path / "plain").progress.loss_scale == 0.0


@pytest.mark.usefixtures("scaled")
def test_an_overflowed_step_is_skipped_with_half_the_scale(ptb_dir, tmp_path, monkeypatch):
    overflow_at(monkeypatch, 3, 4)
    steps = count_steps(monkeypatch)
    run = tmp_path / "run"
    api.train_ptb(config(), ptb_dir, run, console=QUIET)
    assert len(steps) == WINDOWS - 2, "no step for the two overflowed windows"
    assert records(run, "overflow") == [
        {"event": "overflow", "epoch": 1, "step": 3, "loss_scale": LOSS_SCALE_START / 2},
        {"event": "overflow", "epoch": 1, "step": 4, "loss_scale": LOSS_SCALE_START / 4}]
    progress = load_lm(run).progress
    assert progress.loss_scale == LOSS_SCALE_START / 4
    assert progress.loss_scale_good_steps == WINDOWS - 4
    assert all(torch.isfinite(p).all() for p in weights(run))


@pytest.mark.usefixtures("scaled")
def test_resume_goes_on_with_the_saved_scale(ptb_dir, tmp_path, monkeypatch):
    overflow_at(monkeypatch, 3)
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    api.train_ptb(config(max_max_epoch=2), ptb_dir, whole, console=QUIET)
    overflow_at(monkeypatch, 3)  # counted afresh: the same window of the first epoch
    api.train_ptb(config(max_max_epoch=1), ptb_dir, parts, console=QUIET)
    said = io.StringIO()
    api.train_ptb(config(max_max_epoch=2), ptb_dir, parts, resume=True, console=Console(said))
    assert resumed_at(said.getvalue()) == (2, 0)
    assert "loss scale 32768 |" in said.getvalue()
    assert load_lm(parts).progress.loss_scale == load_lm(whole).progress.loss_scale \
        == LOSS_SCALE_START / 2
    for a, b in zip(weights(whole), weights(parts), strict=True):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("scaled")
def test_gradients_that_overflow_even_unscaled_stop_the_run(ptb_dir, tmp_path, monkeypatch):
    overflow_at(monkeypatch, *range(1, WINDOWS + 1))
    with pytest.raises(UserError, match=r"training diverged: gradient norm is (inf|nan) at "
                                        r"epoch 1, step 17;"):
        api.train_ptb(config(), ptb_dir, tmp_path / "run", console=QUIET)
    assert [r["loss_scale"] for r in records(tmp_path / "run", "overflow")][-1] == 1.0


def test_a_run_resumed_in_another_precision_starts_or_drops_the_scale(ptb_dir, tmp_path,
                                                                      monkeypatch):
    """The resumed run's precision decides (bf16 on the CPU, then fp16 on a GPU: a fresh
    scale; back to bf16: none)."""
    run = tmp_path / "run"
    api.train_ptb(config(max_max_epoch=1), ptb_dir, run, console=QUIET)
    with monkeypatch.context() as patch:
        patch.setattr(lstmkit.lm.train, "starting_loss_scale",
                      lambda precision, saved: saved or LOSS_SCALE_START)
        overflow_at(patch, 5)
        api.train_ptb(config(max_max_epoch=2), ptb_dir, run, resume=True, console=QUIET)
    progress = load_lm(run).progress
    assert progress.loss_scale == LOSS_SCALE_START / 2
    api.train_ptb(config(max_max_epoch=3), ptb_dir, run, resume=True, console=QUIET)
    assert load_lm(run).progress.loss_scale == 0.0
