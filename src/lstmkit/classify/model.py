"""The sentence classifier: embedding -> recurrent layers of given sizes -> last real step -> logit.

    ids [B, T], lengths [B]
      -> embedding [B, T, E] -> dropout(embed_dropout)
      -> layer 1 (cell, size S1) [B, T, S1] -> dropout
      -> layer 2 (cell, size S2) [B, T, S2] -> dropout ...   (one module per layer: sizes differ)
      -> output at each text's last real step [B, S_last]    (bidirectional: forward at the last
         step, backward at the first, concatenated)
      -> linear -> one logit [B]                              (sigmoid of it = P(positive))

Rows are padded with <pad> (id 0) at the end. With `packed` the recurrent layers never see the
padding (pack_padded_sequence); without it they run over it, but a forward layer's output at the
last real step cannot depend on later steps, so the logits are the same unless bidirectional.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lstmkit.classify.config import ClassifierConfig
from lstmkit.nn.recurrent import make_recurrent

_BIDIRECTIONAL = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


@dataclass(frozen=True)
class ClassifierShape:
    """What the parameters depend on (saved with every checkpoint)."""
    vocab_size: int
    embed_size: int
    layer_sizes: tuple[int, ...]
    cell: str = "lstm"
    bidirectional: bool = False

    @classmethod
    def of(cls, config: ClassifierConfig, vocab_size: int) -> ClassifierShape:
        return cls(vocab_size, config.embed_size, tuple(config.layer_sizes), config.cell,
                   config.bidirectional)

    def to_dict(self) -> dict:
        return {"vocab_size": self.vocab_size, "embed_size": self.embed_size,
                "layer_sizes": list(self.layer_sizes), "cell": self.cell,
                "bidirectional": self.bidirectional}

    @classmethod
    def from_dict(cls, data: dict) -> ClassifierShape:
        return cls(**{**data, "layer_sizes": tuple(data["layer_sizes"])})


class SentimentClassifier(nn.Module):
    def __init__(self, shape: ClassifierShape, embed_dropout: float = 0.0, dropout: float = 0.0,
                 packed: bool = True) -> None:
        super().__init__()
        self.shape, self.packed = shape, packed
        directions = 2 if shape.bidirectional else 1
        self.embedding = nn.Embedding(shape.vocab_size, shape.embed_size, padding_idx=0)
        self.embed_dropout = nn.Dropout(embed_dropout)
        inputs = [shape.embed_size] + [size * directions for size in shape.layer_sizes[:-1]]
        self.layers = nn.ModuleList(
            _layer(shape.cell, n_in, size, shape.bidirectional)
            for n_in, size in zip(inputs, shape.layer_sizes, strict=True))
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(shape.layer_sizes[-1] * directions, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Logits [B] for ids [B, T] whose rows are real for their first `lengths` steps."""
        B, T = ids.shape
        x = self.embed_dropout(self.embedding(ids))  # [B, T, E]
        for layer in self.layers:
            if self.packed:
                packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True,
                                              enforce_sorted=False)
                x, _ = pad_packed_sequence(layer(packed)[0], batch_first=True, total_length=T)
            else:
                x, _ = layer(x)
            x = self.dropout(x)  # [B, T, S * directions]
        rows = torch.arange(B, device=ids.device)
        last = (lengths - 1).to(ids.device)
        if not self.shape.bidirectional:
            return self.output(x[rows, last]).squeeze(-1)
        size = self.shape.layer_sizes[-1]
        forward_end = x[rows, last, :size]  # the forward direction has read the whole text
        backward_end = x[:, 0, size:]  # so has the backward one, arriving at step 0
        return self.output(torch.cat([forward_end, backward_end], dim=-1)).squeeze(-1)


def _layer(cell: str, input_size: int, hidden_size: int, bidirectional: bool) -> nn.RNNBase:
    if bidirectional:
        return _BIDIRECTIONAL[cell](input_size, hidden_size, batch_first=True, bidirectional=True)
    return make_recurrent(cell, input_size, hidden_size, num_layers=1, dropout=0.0)


def build_classifier(config: ClassifierConfig, vocab_size: int) -> SentimentClassifier:
    return SentimentClassifier(ClassifierShape.of(config, vocab_size), config.embed_dropout,
                               config.dropout, config.packed)
