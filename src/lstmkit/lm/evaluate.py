"""Perplexity of a language model on a token stream, as a plain function.

Any batch shape gives the same number up to the few targets lost at row starts, because the
state is carried across windows and the short tail window is included. The tutorial's
reported test number is the one unbroken stream: batch 1 (num_steps does not change it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lstmkit.device import autocast
from lstmkit.lm.batching import batch_rows, bptt_windows
from lstmkit.nn.kept import weights_kept

STREAM_NUM_STEPS = 100  # batch-1 stream: the chunk length only sets speed, not the result


@dataclass(frozen=True)
class Perplexity:
    nll: float  # summed negative log-likelihood (nats)
    tokens: int  # number of predicted targets
    batch_size: int
    num_steps: int

    @property
    def value(self) -> float:
        try:
            return math.exp(self.nll / self.tokens)
        except OverflowError:  # a diverged model: its perplexity is past any float
            return math.inf

    @property
    def shape(self) -> str:
        if self.batch_size == 1:
            return "one stream, batch 1"
        return f"batch {self.batch_size} x {self.num_steps} steps"


@torch.no_grad()
@weights_kept()  # the weights stay as they are for the whole pass
def perplexity(model, ids: torch.Tensor, batch_size: int, num_steps: int,
               precision: str = "fp32") -> Perplexity:
    """exp(total NLL / total targets) over `ids`, state carried from window to window."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    rows = batch_rows(ids, batch_size).to(device)
    state = model.zero_state(batch_size)
    total, count = 0.0, 0
    try:
        for x, y in bptt_windows(rows, num_steps, include_tail=True):
            with autocast(precision, device):
                nll, state = model.window_nll(x, y, state)
            total += nll.item()
            count += y.numel()
    finally:
        model.train(was_training)
    return Perplexity(total, count, batch_size, num_steps)


def stream_perplexity(model, ids: torch.Tensor, precision: str = "fp32") -> Perplexity:
    """The tutorial's test evaluation: one unbroken stream (batch 1, every target counted)."""
    return perplexity(model, ids, 1, STREAM_NUM_STEPS, precision)


def unigram_perplexity(train: torch.Tensor, ids: torch.Tensor, vocab_size: int) -> float:
    """Perplexity of `ids`' targets (all but the first token) under the training stream's token
    frequencies alone, add-one smoothed: the level of a model that ignores its input. Both are
    token streams as TokenSplits holds them (1-D int64 on the CPU)."""
    counts = torch.bincount(train, minlength=vocab_size).double() + 1
    log_p = counts.log() - counts.sum().log()
    targets = ids[1:]
    if targets.numel() == 0:
        return math.inf
    return math.exp(-float(log_p[targets].mean()))
