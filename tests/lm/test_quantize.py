"""--quantize int8: the recurrent and output layers in int8, everywhere a model is used."""

import pytest
import torch

import lstmkit
from conftest import write_ptb_layout
from lstmkit.cli import main
from lstmkit.errors import UserError
from lstmkit.lm.evaluate import perplexity, stream_perplexity
from lstmkit.lm.generate import token_nlls
from lstmkit.lm.quantize import is_quantized, quantize_model
from tiny_runs import save_tiny_run


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_int8_model_is_close_to_fp32_and_its_evaluation_goes_through_the_int8_layers(
        tmp_path, cell):
    run = lstmkit.load(save_tiny_run(tmp_path / "run", "word", cell, hidden=32))
    quantized = quantize_model(run.model, "int8")
    assert is_quantized(quantized.decoder)
    assert is_quantized(quantized.rnn) == (cell != "rnn"), "PyTorch has no int8 vanilla RNN"
    assert not is_quantized(run.model.decoder), "the fp32 model is left as it was"
    ids = torch.randint(len(run.vocab), (600,), generator=torch.Generator().manual_seed(0))
    fp32, int8 = stream_perplexity(run.model, ids), stream_perplexity(quantized, ids)
    assert int8.value == pytest.approx(fp32.value, rel=0.02)
    assert int8.value != fp32.value
    # The batched evaluator's loss and token-by-token scoring agree on the int8 model.
    nll = token_nlls(quantized, ids).double().sum().item()
    assert nll == pytest.approx(int8.nll, rel=1e-5)
    assert perplexity(quantized, ids, 4, 7).value == pytest.approx(int8.value, rel=0.05)


def test_evaluate_score_and_sample_take_quantize_int8(tmp_path, capsys):
    run = save_tiny_run(tmp_path / "run", "word", "lstm")
    ptb = write_ptb_layout(tmp_path / "ptb")
    assert main(["evaluate", "--model", str(run), "--data-dir", str(ptb), "--stream",
                 "--quantize", "int8"]) == 0
    assert "test perplexity" in capsys.readouterr().out
    text = tmp_path / "t.txt"
    text.write_text("the cat sees a dog\n")
    assert main(["score", "--model", str(run), str(text), "--quantize", "int8"]) == 0
    assert "perplexity" in capsys.readouterr().out
    assert main(["sample", "--model", str(run), "--length", "5", "--seed", "1",
                 "--quantize", "int8"]) == 0
    assert capsys.readouterr().out.strip()
    fp32 = lstmkit.load(run).score("the cat sees a dog\n")
    int8 = lstmkit.load(run, quantize="int8").score("the cat sees a dog\n")
    assert int8.perplexity == pytest.approx(fp32.perplexity, rel=0.05)


def test_int8_refuses_other_precisions_and_unknown_kinds(tmp_path, capsys):
    run = save_tiny_run(tmp_path / "run", "word", "gru")
    with pytest.raises(UserError, match="fp32"):
        lstmkit.load(run, quantize="int8").score("the cat\n", precision="bf16")
    with pytest.raises(UserError, match="quantize must be one of"):
        lstmkit.load(run, quantize="int4")
    assert main(["score", "--model", str(run), "-", "--quantize", "int4"]) == 2
    assert "invalid choice" in capsys.readouterr().err
