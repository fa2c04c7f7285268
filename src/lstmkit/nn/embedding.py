"""An embedding whose gradient is kept as the rows a window looked up, not a dense matrix.

A window of B x T ids touches at most B * T rows of the [V, H] matrix (700 of 10,000 at PTB
`medium`), yet `nn.Embedding`'s dense gradient is a zeroed [V, H] matrix that the gradient norm
and the optimizer then read whole: at `small` and `medium` in bf16 that was 10-20% of a
training step. With `row_grads` set, the backward pass instead sums the window's gradient per
distinct id into `row_grads` (ids [R], rows [R, H]) and leaves `weight.grad` unset; the
trainer counts those rows in the gradient norm and applies them with the same clipped SGD rule
(lm/optim.py), as TensorFlow does with the `IndexedSlices` its embedding lookup yields.

Only plain SGD without weight decay reads a gradient this way (an untouched row's update is
then exactly zero), so the trainer sets `row_grads` for that alone (`lm.optim.row_sparse_ok`).
Without it this is `nn.Embedding`, with the same parameter and checkpoint names.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F


@dataclass
class RowGrads:
    """The gradient of `weight` (an embedding's) in one window, as (ids, rows) pieces, one per
    lookup."""

    weight: torch.Tensor
    pieces: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)

    def clear(self) -> None:
        self.pieces.clear()

    def summed(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(distinct ids [R], their summed gradient rows [R, H]), or None without a lookup."""
        if not self.pieces:
            return None
        if len(self.pieces) == 1:
            return self.pieces[0]
        ids = torch.cat([i for i, _ in self.pieces])
        rows = torch.cat([r for _, r in self.pieces])
        return _sum_rows(ids, rows)


class Embedding(nn.Embedding):
    """`nn.Embedding`; with `row_grads` set, a training lookup's gradient goes there."""

    row_grads: RowGrads | None = None

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.row_grads is None or not (torch.is_grad_enabled() and self.weight.requires_grad):
            return super().forward(ids)
        return _RowSparseLookup.apply(self.weight, ids, self.row_grads)


def collect_row_grads(embedding: nn.Module) -> RowGrads | None:
    """Sets an `Embedding` to keep its gradient as rows and returns where they go (None for
    any other module, whose gradient stays dense)."""
    if not isinstance(embedding, Embedding):
        return None
    embedding.row_grads = RowGrads(embedding.weight)
    return embedding.row_grads


class _RowSparseLookup(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, ids, sink):
        ctx.save_for_backward(ids)
        ctx.sink = sink
        return F.embedding(ids, weight)

    @staticmethod
    def backward(ctx, grad):
        (ids,) = ctx.saved_tensors
        grad = grad.reshape(-1, grad.size(-1))
        ctx.sink.pieces.append(_sum_rows(ids.reshape(-1), grad.float()))
        return None, None, None


def _sum_rows(ids: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    distinct, where = torch.unique(ids, return_inverse=True)
    summed = rows.new_zeros(distinct.numel(), rows.size(1))
    return distinct, summed.index_add_(0, where, rows)
