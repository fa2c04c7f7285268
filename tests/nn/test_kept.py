"""Weights kept for a block of calls without gradients (nn/kept.py)."""

from __future__ import annotations

import torch
from torch import nn

from lstmkit.nn.kept import (
    kept_cast,
    kept_linear,
    kept_weights_context,
    weights_are_kept,
    weights_kept,
)


def test_a_cast_is_made_once_per_block_and_again_when_the_weight_changes():
    weight = torch.randn(5, 3)
    assert kept_cast(weight, torch.bfloat16) is None, "outside a block nothing is kept"
    with weights_kept():
        first = kept_cast(weight, torch.bfloat16)
        assert torch.equal(first, weight.to(torch.bfloat16))
        assert kept_cast(weight, torch.bfloat16) is first
        with torch.no_grad():
            weight.mul_(2)  # its version moves
        again = kept_cast(weight, torch.bfloat16)
        assert again is not first and torch.equal(again, weight.to(torch.bfloat16))
        other = torch.randn(5, 3)
        assert torch.equal(kept_cast(other, torch.bfloat16), other.to(torch.bfloat16))
    with weights_kept():
        assert kept_cast(weight, torch.bfloat16) is not again, "a new block casts afresh"


def test_a_block_inside_another_shares_what_the_outer_one_keeps():
    weight = torch.randn(4, 4)
    with weights_kept():
        outer = kept_cast(weight, torch.bfloat16)
        with weights_kept():
            assert kept_cast(weight, torch.bfloat16) is outer
        assert weights_are_kept()
    assert not weights_are_kept()


def test_a_kept_context_holds_one_block_across_its_runs():
    weight = torch.randn(4, 4)
    context = kept_weights_context()
    first = context.run(kept_cast, weight, torch.bfloat16)
    assert context.run(kept_cast, weight, torch.bfloat16) is first
    assert context.run(weights_are_kept) and not weights_are_kept(), "only inside the context"


def test_the_output_layer_on_kept_weights_gives_what_autocast_gives():
    """Bit for bit: the same product on the same bf16 operands; with gradients, outside a
    block or without autocast the layer is simply called."""
    torch.manual_seed(0)
    layer = nn.Linear(24, 50)
    x = torch.randn(3, 24)

    def autocast_bf16():
        return torch.autocast("cpu", dtype=torch.bfloat16)

    with torch.no_grad(), weights_kept():
        with autocast_bf16():
            got = kept_linear(x, layer)
            assert got.dtype == torch.bfloat16
            assert torch.equal(got, layer(x))
            layer.bias.add_(1.0)  # (autocast's own cache would miss this: a new context below)
            moved = kept_linear(x, layer)
        with autocast_bf16():
            assert torch.equal(moved, layer(x)), "a changed bias is cast again"
        assert torch.equal(kept_linear(x, layer), layer(x)), "fp32: the layer itself"
    with autocast_bf16():
        assert torch.equal(kept_linear(x, layer), layer(x))
