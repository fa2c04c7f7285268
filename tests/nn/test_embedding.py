"""The embedding's gradient as rows (nn/embedding.py): the same clipped SGD step as the dense
gradient's, untouched rows left exactly as they were."""

from __future__ import annotations

import copy

import pytest
import torch

from lstmkit.fields import apply_overrides
from lstmkit.lm.config import preset
from lstmkit.lm.model import build_language_model
from lstmkit.lm.optim import clipped_step, gradient_norm, make_optimizer, row_sparse_ok
from lstmkit.lm.train import _embedding_row_grads
from lstmkit.nn.embedding import Embedding, collect_row_grads

VOCAB = 50


def config(**overrides):
    return apply_overrides(preset("test"), {"keep_prob": 1.0, **overrides}, "test")


def train_windows(model, rows: bool, windows, max_norm: float):
    """Clipped SGD over `windows`; the embedding's gradient as rows or dense."""
    cfg = config()
    optimizer = make_optimizer(cfg, model)
    row_grads = collect_row_grads(model.embedding) if rows else None
    params = list(model.parameters())
    norms = []
    for ids, targets in windows:
        optimizer.zero_grad(set_to_none=True)
        if row_grads is not None:
            row_grads.clear()
        nll, _ = model.window_nll(ids, targets, model.zero_state(ids.size(0)))
        nll.backward()
        norm = gradient_norm(params, row_grads)
        norms.append(float(norm))
        clipped_step(optimizer, norm, max_norm, row_grads=row_grads)
    return norms


def windows(count: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    # ids from half the vocabulary: the other half's rows get no gradient at all
    return [(torch.randint(0, VOCAB // 2, (4, 6), generator=gen),
             torch.randint(0, VOCAB, (4, 6), generator=gen)) for _ in range(count)]


@pytest.mark.parametrize("max_norm", [0.01, 1e6], ids=["clipped", "unclipped"])
def test_the_rows_step_is_the_dense_step(max_norm):
    torch.manual_seed(0)
    dense = build_language_model(config(), VOCAB)
    rows = copy.deepcopy(dense)
    before = rows.embedding.weight.detach().clone()
    data = windows(3)
    dense_norms = train_windows(dense, False, data, max_norm)
    row_norms = train_windows(rows, True, data, max_norm)
    assert row_norms == pytest.approx(dense_norms, rel=1e-6)
    assert rows.embedding.weight.grad is None  # nothing dense was made
    for (name, a), b in zip(dense.named_parameters(), rows.parameters(), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    untouched = slice(VOCAB // 2, None)
    assert torch.equal(rows.embedding.weight[untouched], before[untouched])
    assert not torch.equal(rows.embedding.weight[: VOCAB // 2], before[: VOCAB // 2])


def test_two_lookups_in_a_window_add_up():
    torch.manual_seed(0)
    embedding = Embedding(10, 3)
    row_grads = collect_row_grads(embedding)
    a, b = torch.tensor([1, 2, 2]), torch.tensor([2, 7])
    (embedding(a).sum() + 2 * embedding(b).sum()).backward()
    ids, grad = row_grads.summed()
    assert ids.tolist() == [1, 2, 7]
    assert grad[:, 0].tolist() == [1.0, 4.0, 2.0]  # id 2: twice in a, once (x2) in b


def test_without_row_grads_it_is_nn_embedding():
    embedding = Embedding(10, 3)
    embedding(torch.tensor([1, 1])).sum().backward()
    assert embedding.weight.grad is not None and embedding.weight.grad[1, 0] == 2


class OneProcess:
    distributed = False


@pytest.mark.parametrize("overrides,rows", [
    ({}, True),
    ({"optimizer": "adam", "learning_rate": 0.002}, False),
    ({"weight_decay": 1e-6}, False),
    ({"tie_weights": True}, False),
])
def test_the_trainer_takes_rows_only_where_its_step_can(overrides, rows):
    cfg = config(**overrides)
    assert row_sparse_ok(cfg) == ("optimizer" not in overrides and "weight_decay" not in overrides)
    model = build_language_model(cfg, VOCAB)
    assert (_embedding_row_grads(model, cfg, OneProcess()) is not None) == rows
