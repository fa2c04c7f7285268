"""The recurrent language model of Zaremba et al. (2014) / the TensorFlow PTB tutorial.

    ids [B, T] -> embedding [B, T, H] -> dropout -> recurrent stack (dropout between layers)
        -> dropout -> linear [H, V] + bias -> logits [B, T, V]

Dropout (probability 1 - keep_prob) touches only non-recurrent connections.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lstmkit.lm.config import LMConfig
from lstmkit.nn.dropout import Dropout
from lstmkit.nn.recurrent import (
    State,
    init_recurrent_,
    make_recurrent,
    run_recurrent,
    zero_state,
)
from lstmkit.nn.softmax import linear_cross_entropy


@dataclass(frozen=True)
class LMShape:
    """What the model's parameters depend on (saved with every checkpoint)."""
    vocab_size: int
    hidden_size: int
    num_layers: int
    cell: str = "lstm"

    @classmethod
    def of(cls, config: LMConfig, vocab_size: int) -> LMShape:
        return cls(vocab_size, config.hidden_size, config.num_layers, config.cell)


class LanguageModel(nn.Module):
    def __init__(self, shape: LMShape, keep_prob: float = 1.0, lstm_impl: str = "auto") -> None:
        super().__init__()
        self.shape = shape
        self.lstm_impl = lstm_impl  # which LSTM layer runs (nn/recurrent.py); not a parameter
        drop = 1.0 - keep_prob
        self.embedding = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.input_dropout = Dropout(drop)
        self.rnn = make_recurrent(shape.cell, shape.hidden_size, shape.hidden_size,
                                  shape.num_layers, dropout=drop)
        self.output_dropout = Dropout(drop)
        self.decoder = nn.Linear(shape.hidden_size, shape.vocab_size)

    def set_keep_prob(self, keep_prob: float) -> None:
        """Dropout on the non-recurrent connections: probability 1 - keep_prob."""
        drop = 1.0 - keep_prob
        self.input_dropout.p = self.output_dropout.p = drop
        self.rnn.dropout = drop if self.shape.num_layers > 1 else 0.0

    def init_weights(self, init_scale: float, forget_bias: float = 0.0) -> None:
        for param in (self.embedding.weight, self.decoder.weight, self.decoder.bias):
            nn.init.uniform_(param, -init_scale, init_scale)
        init_recurrent_(self.rnn, init_scale, forget_bias)

    def zero_state(self, batch_size: int) -> State:
        weight = self.embedding.weight  # never quantised (lm.quantize), unlike the decoder
        return zero_state(self.rnn, batch_size, weight.device, weight.dtype)

    def hidden(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Top-layer outputs [B, T, H] (after output dropout) and the state after the window."""
        x = self.input_dropout(self.embedding(ids))
        outputs, state = run_recurrent(self.rnn, x, state, self.lstm_impl)
        return self.output_dropout(outputs), state

    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        outputs, state = self.hidden(ids, state)
        return self.decoder(outputs), state

    def window_nll(self, ids: torch.Tensor, targets: torch.Tensor, state: State
                   ) -> tuple[torch.Tensor, State]:
        """Summed negative log-likelihood of `targets` [B, T] (a scalar) and the next state."""
        outputs, state = self.hidden(ids, state)
        if not isinstance(self.decoder, nn.Linear):
            # An int8 decoder (lm.quantize) keeps packed weights the fused softmax cannot read.
            logits = self.decoder(outputs).reshape(-1, self.shape.vocab_size).float()
            return F.cross_entropy(logits, targets.reshape(-1), reduction="sum"), state
        nll = linear_cross_entropy(outputs.reshape(-1, outputs.size(-1)), self.decoder.weight,
                                   self.decoder.bias, targets.reshape(-1))
        return nll, state


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight blocks per layer of each cell


def parameter_count(shape: LMShape) -> int:
    """The model's parameters, computed without building it (Python ints: never overflow)."""
    hidden, gates = shape.hidden_size, GATES.get(shape.cell, 4)
    recurrent = shape.num_layers * gates * hidden * (2 * hidden + 2)  # W_ih, W_hh, two biases
    return shape.vocab_size * hidden * 2 + shape.vocab_size + recurrent


def build_language_model(config: LMConfig, vocab_size: int) -> LanguageModel:
    model = LanguageModel(LMShape.of(config, vocab_size), keep_prob=config.keep_prob,
                          lstm_impl=config.lstm_impl)
    model.init_weights(config.init_scale, config.forget_bias)
    return model
