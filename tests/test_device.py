"""Device and precision selection: the logic that must pick cuDNN on a GPU and bf16 only where
bf16 products are native, tested here by pretending to be those machines."""

from __future__ import annotations

import pytest
import torch

from lstmkit import device as dev
from lstmkit.cli import _one_line_warnings
from lstmkit.errors import LstmkitWarning, UserError
from lstmkit.nn.recurrent import make_recurrent, run_recurrent, zero_state

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native_bf16(monkeypatch):
    def pretend(has: bool) -> None:
        monkeypatch.setattr(dev, "cpu_has_native_bf16", lambda: has)
        monkeypatch.setattr("lstmkit.nn.recurrent.cpu_has_native_bf16", lambda: has)
    return pretend


@pytest.mark.parametrize(("has", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_follows_the_cpu(native_bf16, has, expected):
    native_bf16(has)
    assert dev.resolve_precision("auto", CPU) == expected


def test_auto_precision_is_fp32_on_cuda(native_bf16):
    native_bf16(True)
    assert dev.resolve_precision("auto", CUDA) == "fp32"


@pytest.mark.parametrize("explicit", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept(native_bf16, explicit):
    native_bf16(False)
    assert dev.resolve_precision(explicit, CPU) == explicit


def test_fp16_on_the_cpu_is_a_user_error():
    with pytest.raises(UserError, match="fp16 needs a CUDA GPU"):
        dev.check_precision("fp16", CPU)


def test_bf16_on_a_cpu_that_emulates_it_warns(native_bf16):
    native_bf16(False)
    with pytest.warns(LstmkitWarning, match="emulated, about 20x slower"):
        dev.check_precision("bf16", CPU)


@pytest.mark.parametrize(("precision", "has"), [("bf16", True), ("fp32", False), ("auto", False)])
def test_no_warning_where_the_precision_is_fast(native_bf16, recwarn, precision, has):
    native_bf16(has)
    dev.check_precision(precision, CPU)
    assert not [w for w in recwarn if issubclass(w.category, LstmkitWarning)]


@pytest.mark.parametrize(("saved", "device", "reused"), [
    ("bf16", CPU, "auto"), ("fp32", CPU, "fp32"), ("auto", CPU, "auto"), ("fp16", CUDA, "fp16"),
    ("fp16", CPU, "auto"), ("bf16", CUDA, "auto")])
def test_a_checkpoint_is_reused_in_its_precision_only_where_that_is_fast_and_runs(saved, device,
                                                                                  reused):
    """bf16 only where native ('auto' decides); fp16 (trained on a GPU) only on CUDA."""
    assert dev.saved_precision(saved, device) == reused


def test_our_warnings_print_as_one_line_and_others_as_usual(capsys):
    usual_calls = []
    show = _one_line_warnings(lambda *args: usual_calls.append(args))
    show(LstmkitWarning("lstmkit: precision bf16 is slow here"), LstmkitWarning, "f.py", 3)
    show(UserWarning("from torch"), UserWarning, "t.py", 7)
    assert capsys.readouterr().err == "lstmkit: warning: precision bf16 is slow here\n"
    assert len(usual_calls) == 1 and usual_calls[0][2:4] == ("t.py", 7)


def test_auto_device_picks_cuda_when_present(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.resolve_device("auto") == CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert dev.resolve_device("auto") == CPU


def test_absent_cuda_is_a_user_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match="no CUDA GPU"):
        dev.resolve_device("cuda")


def test_autocast_dtype_per_precision(native_bf16):
    native_bf16(True)
    with dev.autocast("auto", CPU):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    native_bf16(False)
    with dev.autocast("auto", CPU):
        assert not torch.is_autocast_enabled("cpu")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_bf16_recurrent_layer_falls_back_to_fp32_without_native_bf16(native_bf16, cell):
    """Without native bf16 the layer runs in fp32 (oneDNN has no bf16 RNN there): same result
    as fp32, instead of oneDNN's 'could not create a primitive descriptor'."""
    native_bf16(False)
    torch.manual_seed(0)
    rnn = make_recurrent(cell, 8, 16, 2, 0.0)
    x = torch.randn(3, 5, 8)
    state = zero_state(rnn, 3)
    plain, _ = run_recurrent(rnn, x, state)
    with dev.autocast("bf16", CPU):
        mixed, _ = run_recurrent(rnn, x, state)
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, plain)
