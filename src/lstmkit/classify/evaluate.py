"""Loss, accuracy and probabilities of a classifier, as plain functions of a model and data."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lstmkit.classify.data import EncodedSplit, pad_batch

EVAL_BATCH_SIZE = 256


@dataclass(frozen=True)
class SplitScore:
    loss: float  # mean over the texts
    accuracy: float
    count: int


def batch_loss(logits: torch.Tensor, labels: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of a batch: `bce` on the logits, or the tutorial's `mse` on sigmoid(logits)."""
    if kind == "mse":
        return F.mse_loss(torch.sigmoid(logits), labels)
    return F.binary_cross_entropy_with_logits(logits, labels)


@torch.no_grad()
def logits_of(model, ids: Sequence[torch.Tensor], batch_size: int = EVAL_BATCH_SIZE
              ) -> torch.Tensor:
    """Logits [N] in input order; batches are formed from texts of similar length (speed only:
    each text's logit does not depend on its batch mates, except in a bidirectional model run
    without `packed`, whose backward layer reads the padding; see classify/model.py)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids))
    try:
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            x, lengths = pad_batch([ids[i] for i in chosen])
            out[chosen] = model(x.to(device), lengths).float().cpu()
    finally:
        model.train(was_training)
    return out


def score(model, split: EncodedSplit, loss: str = "bce") -> SplitScore:
    logits = logits_of(model, split.ids)
    correct = ((logits >= 0).float() == split.labels).sum().item()
    loss_value = batch_loss(logits, split.labels, loss).item()
    return SplitScore(loss_value, correct / len(split), len(split))


def probabilities(model, ids: Sequence[torch.Tensor]) -> list[float]:
    """P(positive) of each text."""
    return torch.sigmoid(logits_of(model, ids)).tolist()
