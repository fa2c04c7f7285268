"""NaN and inf in training: a clear stop, or `--on-nan rollback` to the last checkpoint with a
lower learning rate; never a diverged model written over a good checkpoint."""

from __future__ import annotations

import io
import json
import re

import pytest
import torch

import lstmkit.lm.train
from conftest import resumed_at, tree_files
from lstmkit.cli import main
from lstmkit.errors import UserError
from lstmkit.fields import apply_overrides
from lstmkit.lm import api
from lstmkit.lm.config import preset
from lstmkit.lm.model import LanguageModel
from lstmkit.lm.runs import load_lm
from lstmkit.lm.train import MAX_ROLLBACKS_IN_A_ROW, ROLLBACK_LR_FACTOR
from lstmkit.reporting import Console

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["--preset", "test", "--hidden-size", "16", "--batch-size", "4", "--num-steps", "5"]
WINDOWS = 87  # of the generated corpus at batch 4 x 5 steps
QUIET = Console(enabled=False)


def config(**fields):
    return apply_overrides(preset("test"), {"hidden_size": 16, "batch_size": 4, "num_steps": 5,
                                            "checkpoint_every": 10, **fields}, "test")


def nan_loss_at(monkeypatch, *steps: int) -> None:
    """The training loss becomes NaN at these training windows (counted over the process)."""
    window_loss, calls = LanguageModel.window_loss, []

    def faulty(self, ids, targets, state):
        nll, penalty, state = window_loss(self, ids, targets, state)
        if self.training:
            calls.append(1)
            if len(calls) in steps:
                nll = nll * float("nan")
        return nll, penalty, state

    monkeypatch.setattr(LanguageModel, "window_loss", faulty)


def records(run, event):
    return [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if r["event"] == event]


def finite(path) -> bool:
    return all(torch.isfinite(p).all() for p in load_lm(path).model.parameters())


def test_nan_loss_stops_with_one_line_before_the_weights_change(ptb_dir, tmp_path, capsys,
                                                                 monkeypatch):
    """The faulty step 25 neither updates the weights in memory nor writes the checkpoint:
    the weights stay those after step 24, model.safetensors the bytes written at step 20."""
    written, stepped = [], []
    save = lstmkit.lm.train.save_lm_checkpoint

    def recording_save(path, *args, **kwargs):
        save(path, *args, **kwargs)
        written.append(path.read_bytes())

    step = torch.optim.SGD.step

    def recording_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        stepped.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        live.clear()
        live.extend(self.param_groups[0]["params"])
        return out

    live: list[torch.Tensor] = []
    monkeypatch.setattr(lstmkit.lm.train, "save_lm_checkpoint", recording_save)
    monkeypatch.setattr(torch.optim.SGD, "step", recording_step)
    run = tmp_path / "run"
    nan_loss_at(monkeypatch, 25)
    assert main(["train", *FAST, "--checkpoint-every", "10", "--data-dir", str(ptb_dir),
                 "--save-path", str(run)]) == 2
    assert capsys.readouterr().err == (
        "lstmkit: error: training diverged: loss is nan at epoch 1, step 25; the last "
        "checkpoint is intact (try a lower learning_rate or max_grad_norm, or --on-nan "
        "rollback)\n")
    assert len(stepped) == 24, "no optimizer step at the faulty window"
    assert all(torch.equal(now, then) for now, then in zip(live, stepped[-1], strict=True))
    assert len(written) == 2 and (run / "model.safetensors").read_bytes() == written[-1]
    assert load_lm(run).progress.step == 20 and finite(run)
    assert tree_files(run) == {"model.safetensors", "metrics.jsonl"}


def test_diverged_weights_are_never_written_over_a_good_checkpoint(ptb_dir, tmp_path, capsys,
                                                                   monkeypatch):
    """Weights that turn NaN in a step whose loss and gradient were finite (an overflow, a
    faulty kernel) are refused by the checkpoint writer itself."""
    step, calls = torch.optim.SGD.step, []

    def poisoning_step(self, *args, **kwargs):
        calls.append(1)
        out = step(self, *args, **kwargs)
        if len(calls) == 20:  # the step right before the second checkpoint
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("nan"))
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", poisoning_step)
    run = tmp_path / "run"
    assert main(["train", *FAST, "--checkpoint-every", "10", "--data-dir", str(ptb_dir),
                 "--save-path", str(run)]) == 2
    assert capsys.readouterr().err.startswith(
        "lstmkit: error: training diverged: the weights are not finite at epoch 1, step 20; "
        "the last checkpoint is intact")
    assert load_lm(run).progress.step == 10 and finite(run)
    assert tree_files(run) == {"model.safetensors", "metrics.jsonl"}, "no temporary file"


def test_rollback_returns_to_the_last_checkpoint_and_lowers_the_learning_rate(
        ptb_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    nan_loss_at(monkeypatch, 25)
    api.train_ptb(config(on_nan="rollback", max_max_epoch=2), ptb_dir, run, console=QUIET)
    [rollback] = records(run, "rollback")
    assert rollback == {"event": "rollback", "epoch": 1, "step": 25, "fault": "loss is nan",
                        "to_epoch": 1, "to_step": 20, "lr_scale": ROLLBACK_LR_FACTOR}
    # The schedule goes on, scaled: epoch 1 at 1.0 x 0.5, epoch 2 decayed (0.5) x 0.5.
    assert [e["learning_rate"] for e in records(run, "epoch")] == [0.5, 0.25]
    assert [r["step"] for r in records(run, "progress")][:3] == [9, 18, 27], \
        "the log rewound to the checkpoint: no step is reported twice"
    assert load_lm(run).progress.lr_scale == ROLLBACK_LR_FACTOR
    assert finite(run) and finite(run / "best.safetensors")

    said = io.StringIO()
    api.train_ptb(config(on_nan="rollback", max_max_epoch=3), ptb_dir, run, resume=True,
                  console=Console(said))
    assert resumed_at(said.getvalue()) == (3, 0)
    assert records(run, "epoch")[-1]["learning_rate"] == 0.125, "resume keeps the lowered rate"


def test_rollback_gives_up_after_a_few_in_a_row_and_keeps_the_checkpoint(ptb_dir, tmp_path,
                                                                         monkeypatch):
    run = tmp_path / "run"
    nan_loss_at(monkeypatch, *range(25, 200))
    with pytest.raises(UserError, match=rf"training diverged: loss is nan at epoch 1, step 21, "
                                        rf"again after {MAX_ROLLBACKS_IN_A_ROW} rollbacks to "
                                        rf"epoch 1, step 20 \(learning rate now 0.125 x"):
        api.train_ptb(config(on_nan="rollback"), ptb_dir, run, console=QUIET)
    assert len(records(run, "rollback")) == MAX_ROLLBACKS_IN_A_ROW
    assert load_lm(run).progress.step == 20 and finite(run)


def test_rollback_of_a_real_divergence_gives_up_with_one_line(ptb_dir, tmp_path, capsys):
    """At lr 3e38 one step sends the weights to ~1e38 and the next loss overflows, however
    often the rate is halved: every rollback (to the checkpoint a rollback run writes before
    its first step) diverges again."""
    run = tmp_path / "run"
    assert main(["train", *FAST, "--on-nan", "rollback", "--learning-rate", "3e38",
                 "--data-dir", str(ptb_dir), "--save-path", str(run)]) == 2
    out, err = capsys.readouterr()
    assert out.count("rolled back to epoch 1, step 0") == MAX_ROLLBACKS_IN_A_ROW
    assert re.match(r"lstmkit: error: training diverged: loss is (nan|inf) at epoch 1, step 2, "
                    r"again after 3 rollbacks to epoch 1, step 0 ", err)
    assert err.count("\n") == 1
    assert load_lm(run).progress.step == 0 and finite(run)


def test_a_rollback_run_that_gives_up_brings_back_the_run_it_was_to_replace(ptb_dir, tmp_path,
                                                                            capsys):
    """The untrained checkpoint a rollback run starts from is no reason to let the old run go."""
    run = tmp_path / "run"
    assert main(["train", *FAST, "--max-max-epoch", "1", "--data-dir", str(ptb_dir),
                 "--save-path", str(run)]) == 0
    files = lambda: {str(p.relative_to(run)): p.read_bytes()  # noqa: E731
                     for p in run.rglob("*") if p.is_file()}
    old = files()
    capsys.readouterr()
    assert main(["train", *FAST, "--on-nan", "rollback", "--learning-rate", "3e38", "--overwrite",
                 "--data-dir", str(ptb_dir), "--save-path", str(run)]) == 2
    err = capsys.readouterr().err
    assert "again after 3 rollbacks to epoch 1, step 0 " in err
    assert f"the run it was to replace is back in {run} " in err and err.count("\n") == 1
    assert files() == old


def test_rollback_needs_a_run_directory(ptb_dir):
    with pytest.raises(UserError, match=r"on_nan rollback needs a save path \(--save-path\)"):
        api.train_ptb(config(on_nan="rollback"), ptb_dir, None, console=QUIET)


def test_a_run_that_diverges_before_its_first_checkpoint_does_not_claim_one(ptb_dir, tmp_path,
                                                                            capsys, monkeypatch):
    nan_loss_at(monkeypatch, 2)
    assert main(["train", *FAST, "--data-dir", str(ptb_dir), "--save-path",
                 str(tmp_path / "run")]) == 2
    assert "epoch 1, step 2; this run had written no checkpoint yet (try a lower" in (
        capsys.readouterr().err)
