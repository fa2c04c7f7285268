import dataclasses

import pytest
import torch

from lstmkit.lm.config import preset
from lstmkit.lm.model import build_language_model


def small_config(**changes):
    import dataclasses
    return dataclasses.replace(preset("small"), hidden_size=8, **changes)


def test_all_parameters_start_uniform_within_init_scale_and_lstm_has_one_bias():
    model = build_language_model(small_config(init_scale=0.05), vocab_size=50)
    for name, param in model.named_parameters():
        assert param.abs().max() <= 0.05, name
        if "bias_hh" in name:
            assert torch.count_nonzero(param) == 0, "b_hh duplicates b_ih; it starts at zero"
        else:
            assert param.abs().max() > 0.02, f"{name} looks untouched by the uniform init"


def test_tutorial_and_zaremba_inits_draw_the_same_weights_and_differ_only_in_the_biases():
    """tutorial: both LSTM biases 0 (TF's BasicLSTMCell); zaremba: both uniform (his Torch
    code); uniform: only b_ih. Everything else is the same draw, so a comparison of runs
    isolates the biases."""
    models = {}
    for scheme in ("uniform", "tutorial", "zaremba"):
        torch.manual_seed(0)
        models[scheme] = dict(build_language_model(
            small_config(init=scheme, init_scale=0.05), vocab_size=50).named_parameters())
    for name, param in models["uniform"].items():
        tutorial, zaremba = models["tutorial"][name], models["zaremba"][name]
        if "bias_ih" in name or "bias_hh" in name:
            assert torch.count_nonzero(tutorial) == 0, name
            assert 0.02 < zaremba.abs().max() <= 0.05, name
            if "bias_ih" in name:
                assert torch.equal(zaremba, param), name
        else:
            assert torch.equal(tutorial, param) and torch.equal(zaremba, param), name
    assert not torch.equal(models["zaremba"]["rnn.bias_hh_l0"], models["zaremba"]["rnn.bias_ih_l0"])


def test_awd_init_starts_each_recurrent_layer_as_pytorch_and_the_output_bias_at_zero():
    """AWD-LSTM's: embedding within init_scale, recurrent layers of H units within 1/sqrt(H)
    (PyTorch's LSTM default, both biases included), output bias 0."""
    torch.manual_seed(0)
    config = dataclasses.replace(preset("small"), init="awd", init_scale=0.1, num_layers=3,
                                 hidden_size=64, embedding_size=16, tie_weights=True)
    model = build_language_model(config, vocab_size=50)
    assert model.tied() and torch.count_nonzero(model.decoder.bias) == 0
    assert 0.09 < model.embedding.weight.abs().max() <= 0.1
    for rnn, hidden in ((model.rnn, 64), (model.rnn_top, 16)):
        for name, param in rnn.named_parameters():
            bound = hidden ** -0.5
            assert 0.9 * bound < param.abs().max() <= bound, name


def test_forget_bias_is_added_to_the_forget_gate_slice():
    torch.manual_seed(0)
    base = build_language_model(small_config(), vocab_size=20)
    torch.manual_seed(0)
    biased = build_language_model(small_config(forget_bias=1.0), vocab_size=20)
    diff = biased.rnn.bias_ih_l0 - base.rnn.bias_ih_l0
    assert torch.allclose(diff[8:16], torch.ones(8)) and torch.count_nonzero(diff[:8]) == 0


def test_dropout_only_when_training_and_keep_prob_below_one():
    model = build_language_model(small_config(keep_prob=0.5), vocab_size=30)
    ids = torch.randint(0, 30, (4, 6))
    state = model.zero_state(4)
    model.eval()
    a, _ = model(ids, state)
    b, _ = model(ids, state)
    assert torch.equal(a, b)
    model.train()
    c, _ = model(ids, state)
    assert not torch.allclose(a, c)
    assert model.rnn.dropout == 0.5  # between the stacked layers, never on the recurrence


@pytest.mark.parametrize("cell, parts", [("lstm", 2), ("gru", 1), ("rnn", 1)])
def test_state_is_carried_so_two_windows_equal_one_long_window(cell, parts):
    model = build_language_model(small_config(cell=cell), vocab_size=30).eval()
    ids = torch.randint(0, 30, (3, 10))
    state = model.zero_state(3)
    assert len(state) == parts
    whole, _ = model(ids, state)
    first, mid = model(ids[:, :4], state)
    second, _ = model(ids[:, 4:], mid)
    assert torch.allclose(torch.cat([first, second], 1), whole, atol=1e-6)
