"""LSTM, GRU and vanilla RNN cells: each builds, trains and comes back from a checkpoint."""

import json

import pytest
import torch
from torch import nn

from lstmkit.cli import main
from lstmkit.lm.config import LMConfig
from lstmkit.lm.data import load_text_corpus
from lstmkit.lm.model import build_language_model
from lstmkit.lm.optim import clipped_step, gradient_norm, make_optimizer
from lstmkit.lm.runs import load_lm
from lstmkit.nn import recurrent
from lstmkit.nn.kept import weights_kept

CELLS = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("optimizer, lr", [("sgd", 0.2), ("adam", 0.01)])
def test_each_cell_trains_a_few_steps_and_its_loss_goes_down(cell, optimizer, lr, text_file):
    corpus = load_text_corpus("char", data_file=text_file)
    config = LMConfig(cell=cell, hidden_size=32, num_layers=2, num_steps=20, batch_size=8,
                      optimizer=optimizer, learning_rate=lr)
    torch.manual_seed(0)
    model = build_language_model(config, len(corpus.vocab))
    assert isinstance(model.rnn, CELLS[cell])
    rows = corpus.train[: 8 * 21].view(8, 21)
    x, y = rows[:, :-1], rows[:, 1:]
    optimizer_ = make_optimizer(config, model)

    def loss() -> torch.Tensor:
        nll, _ = model.window_nll(x, y, model.zero_state(8))
        return nll / y.numel()

    with torch.no_grad():
        before = loss().item()
    for _ in range(15):
        optimizer_.zero_grad()
        (loss() * config.num_steps).backward()  # the trainer's cost: summed over time steps
        clipped_step(optimizer_, gradient_norm(list(model.parameters())),
                     config.max_grad_norm)
    with torch.no_grad():
        after = loss().item()
    assert after < before - 0.3, (cell, optimizer, before, after)


def test_gru_and_rnn_have_three_and_one_quarters_of_the_lstm_recurrent_weights():
    counts = {cell: sum(p.numel() for p in build_language_model(
        LMConfig(cell=cell, hidden_size=20), vocab_size=10).rnn.parameters()) for cell in CELLS}
    assert counts["gru"] * 4 == counts["lstm"] * 3
    assert counts["rnn"] * 4 == counts["lstm"]


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_cell_flag_trains_saves_and_reloads_that_cell(cell, text_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "char", "--level", "char", "--cell", cell,
                 "--hidden-size", "24", "--batch-size", "4", "--num-steps", "20",
                 "--max-max-epoch", "2", "--data-file", str(text_file),
                 "--save-path", str(run)]) == 0
    loaded = load_lm(run)
    assert loaded.config.cell == cell and isinstance(loaded.model.rnn, CELLS[cell])
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert epochs[1]["train_loss"] < epochs[0]["train_loss"]
    assert epochs[1]["valid_loss"] < epochs[0]["valid_loss"]


@pytest.mark.parametrize("amx", [False, True])
def test_auto_evaluates_in_lstmkits_layer_inside_a_kept_block_at_every_width(monkeypatch, amx):
    monkeypatch.setattr(recurrent, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(recurrent, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(recurrent, "native_kernel", lambda: object())
    cpu = torch.device("cpu")
    with torch.device("meta"):
        narrow, wide = nn.LSTM(8, 650, 2), nn.LSTM(8, recurrent.NATIVE_EVAL_MIN_HIDDEN, 2)

    def native(rnn, kept, bf16=True, impl="auto", device=cpu, one_step=False):
        return recurrent.uses_native_lstm(rnn, device, impl, bf16, training=False, kept=kept,
                                          one_step=one_step)

    assert native(narrow, kept=True) and native(wide, kept=True)
    assert native(narrow, kept=False) == amx, "outside a block: every width only with AMX"
    assert native(wide, kept=False)
    assert not native(narrow, kept=True, bf16=False), "fp32 evaluates in oneDNN's layer"
    monkeypatch.setattr(recurrent, "cpu_has_avx512", lambda: True)
    assert native(narrow, kept=True, bf16=False, one_step=True), "but samples in lstmkit's"
    assert not native(narrow, kept=False, bf16=False, one_step=True), "in a block only"
    monkeypatch.setattr(recurrent, "cpu_has_avx512", lambda: False)
    assert not native(narrow, kept=True, bf16=False, one_step=True), "measured with AVX-512"
    assert not native(narrow, kept=True, impl="onednn")
    assert not native(narrow, kept=True, device=torch.device("cuda")), "cuDNN's on a GPU"
    monkeypatch.setattr(recurrent, "cpu_has_native_bf16", lambda: False)
    assert not native(wide, kept=True), "emulated bf16: the layer runs in fp32, oneDNN's"
    monkeypatch.setattr(recurrent, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(recurrent, "native_kernel", lambda: None)
    assert not native(wide, kept=True), "never the plain-PyTorch fallback's loop over steps"
    assert native(wide, kept=True, impl="native"), "unless asked for"


def test_a_call_sees_whether_it_runs_inside_a_kept_block(monkeypatch):
    monkeypatch.setattr(recurrent, "cpu_has_native_bf16", lambda: True)
    monkeypatch.setattr(recurrent, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(recurrent, "native_kernel", lambda: object())
    rnn = nn.LSTM(8, 16, 2).eval()
    inputs = torch.zeros(1, 3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert not recurrent._native_here(rnn, inputs, "auto")
        with weights_kept():
            assert recurrent._native_here(rnn, inputs, "auto")
        assert not recurrent._native_here(rnn, inputs, "auto")
