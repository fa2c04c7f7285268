"""scripts/clip_norms.py: the clipping norm with the embedding counted densely or per lookup."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from lstmkit.lm.config import preset
from lstmkit.lm.model import build_language_model
from lstmkit.lm.optim import gradient_norm

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "clip_norms.py"
VOCAB = 64


def load_script():
    spec = importlib.util.spec_from_file_location("clip_norms", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def model():
    torch.manual_seed(0)
    config = replace(preset("test"), hidden_size=8, num_layers=2)  # keep_prob 1: no dropout
    return build_language_model(config, VOCAB).train()


def lookup_gradients(model, x, y) -> torch.Tensor:
    """d cost / d (each looked-up row), [B * T, H], computed apart from the script."""
    state = model.zero_state(x.size(0))
    rows = model.embedding(x).detach().requires_grad_(True)
    original = model.embedding.forward
    model.embedding.forward = lambda ids: rows  # the lookup's output, as a leaf
    try:
        nll, _, _ = model.window_loss(x, y, state)
    finally:
        model.embedding.forward = original
    (grad,) = torch.autograd.grad(nll / x.size(0), rows)
    return grad.reshape(-1, grad.size(-1))


def test_distinct_words_make_the_two_counts_equal(model):
    script = load_script()
    x = torch.arange(40).view(4, 10)  # no word twice in the window
    y = (x + 1) % VOCAB
    norms, _ = script.window_norms(model, x, y, model.zero_state(4))
    assert norms["embedding_lookups"] == pytest.approx(norms["embedding_dense"], rel=1e-5)
    assert norms["total_dense"] == pytest.approx(float(gradient_norm(list(model.parameters()))),
                                                 rel=1e-5)


def test_a_repeated_word_is_counted_per_lookup_or_summed(model):
    script = load_script()
    x = torch.full((4, 10), 7)  # one word, 40 lookups
    y = torch.arange(40).view(4, 10) % VOCAB
    grads = lookup_gradients(model, x, y)
    norms, _ = script.window_norms(model, x, y, model.zero_state(4))
    per_lookup = float(grads.pow(2).sum().sqrt())
    summed = float(grads.sum(0).norm())
    assert norms["embedding_lookups"] == pytest.approx(per_lookup, rel=1e-5)
    assert norms["embedding_dense"] == pytest.approx(summed, rel=1e-5)
    assert not math.isclose(per_lookup, summed, rel_tol=1e-3)
    total = float(gradient_norm(list(model.parameters())))
    assert norms["total_dense"] == pytest.approx(total, rel=1e-5)
    assert norms["total_dense"] ** 2 == pytest.approx(
        norms["rest"] ** 2 + norms["embedding_dense"] ** 2, rel=1e-6)


def test_the_step_ratio_is_that_of_the_two_clipped_steps():
    script = load_script()
    assert script.step_ratio({"total_lookups": 4.0, "total_dense": 10.0}, 5.0) == 2.0
    assert script.step_ratio({"total_lookups": 20.0, "total_dense": 10.0}, 5.0) == 0.5
    assert script.step_ratio({"total_lookups": 1.0, "total_dense": 2.0}, 5.0) == 1.0
