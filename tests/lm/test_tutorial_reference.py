"""Training end to end against an independent transcription of the TensorFlow PTB tutorial's
loop, in plain PyTorch.

The tutorial's training is short to state: the stream cut into batch_size rows, windows of
num_steps with the state carried (zero at each epoch's start), cost = summed cross-entropy /
batch_size, the gradient's global norm clipped, SGD at learning_rate * lr_decay **
max(epoch - max_epoch, 0). Run from the same starting weights, that must end where lstmkit's
training ends and score valid and test as lstmkit reports them: a difference in batching,
state, the cost's scale, clipping or the schedule (which no component test sees) would show.
Dropout is off (keep_prob 1) so that both runs are deterministic; its masks are checked in
tests/nn/test_dropout.py and tests/nn/test_lstm.py.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from lstmkit.lm import api
from lstmkit.lm.config import preset
from lstmkit.lm.data import load_ptb
from lstmkit.lm.model import build_language_model
from lstmkit.lm.runs import load_lm
from lstmkit.reporting import Console


class TutorialModel(nn.Module):
    """Embedding -> stacked LSTM -> linear: the tutorial's model without dropout."""

    def __init__(self, vocab_size: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.rnn = nn.LSTM(hidden, hidden, layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, ids, state=None):
        outputs, state = self.rnn(self.embedding(ids), state)
        return self.decoder(outputs), state


def rows_of(ids: torch.Tensor, count: int) -> torch.Tensor:
    length = ids.numel() // count
    return ids[:count * length].view(count, length)


@torch.no_grad()
def tutorial_perplexity(model: TutorialModel, ids: torch.Tensor, rows: int) -> float:
    """Every row in one pass (the state carried through it), every target counted."""
    data = rows_of(ids, rows)
    logits, _ = model(data[:, :-1])
    nll = F.cross_entropy(logits.flatten(0, 1), data[:, 1:].flatten(), reduction="sum")
    return math.exp(nll.item() / data[:, 1:].numel())


def tutorial_training(config, splits, start: dict[str, torch.Tensor]):
    """The tutorial's loop; returns the model, valid perplexity per epoch, test perplexity on
    one stream, and how many steps were clipped."""
    model = TutorialModel(len(splits.vocab), config.hidden_size, config.num_layers)
    model.load_state_dict(start)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    rows, steps = rows_of(splits.train, config.batch_size), config.num_steps
    valid, clipped = [], 0
    for epoch in range(1, config.max_max_epoch + 1):
        decay = config.lr_decay ** max(epoch - config.max_epoch, 0)
        optimizer.param_groups[0]["lr"] = config.learning_rate * decay
        state = None
        for i in range((rows.size(1) - 1) // steps):
            x, y = rows[:, i * steps:(i + 1) * steps], rows[:, i * steps + 1:(i + 1) * steps + 1]
            logits, state = model(x, state)
            state = tuple(s.detach() for s in state)
            cost = F.cross_entropy(logits.flatten(0, 1), y.flatten(),
                                   reduction="sum") / config.batch_size
            optimizer.zero_grad()
            cost.backward()
            norm = nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            clipped += int(norm > config.max_grad_norm)
            optimizer.step()
        valid.append(tutorial_perplexity(model, splits.valid, config.eval_batch_size))
    return model, valid, tutorial_perplexity(model, splits.test, 1), clipped


@pytest.mark.parametrize("lstm_impl", ["onednn", "native"])
def test_training_ends_where_the_tutorials_loop_ends(ptb_dir, tmp_path, lstm_impl):
    config = dataclasses.replace(
        preset("test"), hidden_size=16, num_layers=2, num_steps=7, batch_size=4,
        max_epoch=1, max_max_epoch=3, lr_decay=0.5, max_grad_norm=1.0, eval_batch_size=3,
        precision="fp32", device="cpu", lstm_impl=lstm_impl)
    splits = load_ptb(ptb_dir)
    torch.manual_seed(config.seed)  # as training seeds its fresh model
    start = build_language_model(config, len(splits.vocab)).state_dict()

    result = api.train_ptb(config, ptb_dir, tmp_path / "run", console=Console(enabled=False))
    model, valid, test, clipped = tutorial_training(config, splits, start)

    assert 0 < clipped, "clipping must take part for the comparison to cover it"
    ours = load_lm(tmp_path / "run").model.state_dict()
    assert ours.keys() == start.keys() == model.state_dict().keys()
    for name, weight in model.state_dict().items():
        assert not torch.allclose(weight, start[name]), f"{name} did not train"
        torch.testing.assert_close(ours[name], weight, rtol=1e-4, atol=1e-5, msg=name)
    reported = [epoch["valid_perplexity"] for epoch in result.history]
    assert reported == pytest.approx(valid, rel=1e-5)
    assert valid[-1] < valid[0]
    assert result.test_perplexity == pytest.approx(test, rel=1e-5)
