"""The recurrent language model of Zaremba et al. (2014) / the TensorFlow PTB tutorial.

    ids [B, T] -> embedding [B, T, H] -> dropout -> recurrent stack (dropout between layers)
        -> dropout -> linear [H, V] + bias -> logits [B, T, V]

Dropout (probability 1 - keep_prob) touches only non-recurrent connections.

AWD-LSTM's regularisers (Merity et al. 2017), each off unless its config field is set: a
decoder tied to the embedding matrix; embedding dropout (whole word types); locked
(variational) dropout on the embedding output, between layers and on the top output; weight
drop on the hidden-to-hidden weights; AR and TAR penalties on the top layer's output.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from lstmkit.lm.config import LMConfig
from lstmkit.nn.dropout import (
    Dropout,
    embedding_dropout,
    hash_dropout,
    locked_dropout,
    weight_drop,
)
from lstmkit.nn.embedding import Embedding
from lstmkit.nn.kept import kept_linear
from lstmkit.nn.recurrent import (
    LayerHooks,
    State,
    describe_lstm_impl,
    init_recurrent_,
    is_lstm,
    make_recurrent,
    run_recurrent,
)
from lstmkit.nn.softmax import linear_cross_entropy


@dataclass(frozen=True)
class LMShape:
    """What the model's parameters depend on (saved with every checkpoint)."""
    vocab_size: int
    hidden_size: int
    num_layers: int
    cell: str = "lstm"
    tied: bool = False  # the decoder's weight is the embedding matrix (saved once)
    embedding_size: int = 0  # 0: hidden_size

    @classmethod
    def of(cls, config: LMConfig, vocab_size: int) -> LMShape:
        return cls(vocab_size, config.hidden_size, config.num_layers, config.cell,
                   config.tie_weights, config.embedding_size)

    @property
    def embedding_width(self) -> int:
        return self.embedding_size or self.hidden_size

    def layer_sizes(self) -> list[tuple[int, int]]:
        """(input, hidden) size of each recurrent layer: hidden_size, but a tied model's top
        layer has the embedding's size (it feeds the decoder that shares the matrix)."""
        hidden = [self.hidden_size] * self.num_layers
        if self.tied:
            hidden[-1] = self.embedding_width
        return list(zip([self.embedding_width, *hidden[:-1]], hidden, strict=True))

    @property
    def output_size(self) -> int:
        """The top layer's size (what the decoder reads)."""
        return self.embedding_width if self.tied else self.hidden_size

    @property
    def state_size(self) -> int:
        """Width of the state tensors [num_layers, B, state_size]: the widest layer's (a
        narrower layer's state is zero-padded)."""
        if self.num_layers == 1:
            return self.output_size
        return max(self.hidden_size, self.output_size)


@dataclass(frozen=True)
class Regularisers:
    """The training-time regularisers' rates and weights (LMConfig's fields of those names)."""
    locked_dropout_input: float = 0.0
    locked_dropout_hidden: float = 0.0
    locked_dropout_output: float = 0.0
    embedding_dropout: float = 0.0
    weight_drop: float = 0.0
    ar: float = 0.0
    tar: float = 0.0

    @classmethod
    def of(cls, config: LMConfig) -> Regularisers:
        return cls(**{name: getattr(config, name) for name in cls.__dataclass_fields__})

    def layer_hooks(self, training: bool) -> LayerHooks | None:
        """Hooks for a layer-by-layer run, or None where the stack runs whole."""
        if not training or not (self.locked_dropout_hidden or self.weight_drop):
            return None
        between = weight = None
        if self.locked_dropout_hidden:
            def between(x: torch.Tensor) -> torch.Tensor:
                return locked_dropout(x, self.locked_dropout_hidden)
        if self.weight_drop:
            def weight(w: torch.Tensor) -> torch.Tensor:
                return weight_drop(w, self.weight_drop)
        return LayerHooks(between, weight)


class LanguageModel(nn.Module):
    def __init__(self, shape: LMShape, keep_prob: float = 1.0, lstm_impl: str = "auto",
                 regularisers: Regularisers = Regularisers()) -> None:
        super().__init__()
        self.shape = shape
        self.lstm_impl = lstm_impl  # which LSTM layer runs (nn/recurrent.py); not a parameter
        self.regularisers = regularisers  # train-time only; not parameters either
        drop = 1.0 - keep_prob
        sizes = shape.layer_sizes()
        self.embedding = Embedding(shape.vocab_size, shape.embedding_width)
        self.input_dropout = Dropout(drop)
        # One stack where every layer has one size; otherwise the layers below and, as a stack
        # of its own, a top layer of the embedding's size (AWD-LSTM's tied model).
        uniform = len({hidden for _, hidden in sizes}) == 1
        below = shape.num_layers if uniform else shape.num_layers - 1
        self.rnn = make_recurrent(shape.cell, sizes[0][0], sizes[0][1], below, dropout=drop)
        self.rnn_top = None if uniform else make_recurrent(shape.cell, *sizes[-1], 1, 0.0)
        self.layer_dropout = drop  # between the two stacks, as between the layers of one
        self.output_dropout = Dropout(drop)
        self.decoder = nn.Linear(shape.output_size, shape.vocab_size)
        if shape.tied:
            self.decoder.weight = self.embedding.weight
            # safetensors refuses two names for one storage: checkpoints hold the matrix once
            # (as embedding.weight) and loading ties it again.
            self.register_state_dict_post_hook(_drop_tied_copy)
            self.register_load_state_dict_pre_hook(_retie)

    def tied(self) -> bool:
        """Whether the decoder reads the embedding matrix (an int8 decoder never does)."""
        return getattr(self.decoder, "weight", None) is self.embedding.weight

    def set_keep_prob(self, keep_prob: float) -> None:
        """Dropout on the non-recurrent connections: probability 1 - keep_prob."""
        drop = 1.0 - keep_prob
        self.input_dropout.p = self.output_dropout.p = self.layer_dropout = drop
        self.rnn.dropout = drop if self.rnn.num_layers > 1 else 0.0

    def init_weights(self, init_scale: float, forget_bias: float = 0.0,
                     scheme: str = "uniform") -> None:
        """`scheme` uniform: every weight U(-init_scale, init_scale), the LSTM's second bias
        zero; tutorial: the same, both LSTM biases zero (TF's BasicLSTMCell); zaremba: the same,
        both LSTM biases uniform (Zaremba's Torch code); awd: AWD-LSTM's, the output bias 0 and
        each recurrent layer of H units U(-1/sqrt(H), 1/sqrt(H)), as PyTorch's own LSTM
        starts. The draws are the same for the first three: only the biases differ."""
        for param in (self.embedding.weight, self.decoder.weight, self.decoder.bias):
            nn.init.uniform_(param, -init_scale, init_scale)
        if scheme == "awd":
            nn.init.zeros_(self.decoder.bias)
        for rnn in self.recurrent_stacks():
            scale = rnn.hidden_size ** -0.5 if scheme == "awd" else init_scale
            init_recurrent_(rnn, scale, forget_bias, _LSTM_BIASES[scheme])

    def recurrent_stacks(self) -> list[nn.Module]:
        """The recurrent stacks bottom-up: `rnn`, and `rnn_top` where the top layer has
        another size."""
        return [self.rnn] if self.rnn_top is None else [self.rnn, self.rnn_top]

    def describe_recurrent(self, device: torch.device, bf16: bool) -> str:
        """For run headers: the recurrent layer that runs (a narrower top layer, a tied
        model's, is the same cell and runs in the same layer: the choice is not by size)."""
        return describe_lstm_impl(self.rnn, device, self.lstm_impl, bf16)

    def zero_state(self, batch_size: int) -> State:
        weight = self.embedding.weight  # never quantised (lm.quantize), unlike the decoder
        shape = (self.shape.num_layers, batch_size, self.shape.state_size)
        count = 2 if is_lstm(self.rnn) else 1
        return tuple(torch.zeros(shape, device=weight.device, dtype=weight.dtype)
                     for _ in range(count))

    def hidden(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """Top-layer outputs [B, T, H] (after output dropout) and the state after the window."""
        dropped, _, state = self._top_outputs(ids, state)
        return dropped, state

    def _top_outputs(self, ids: torch.Tensor, state: State
                     ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """The top layer's outputs after and before output dropout, and the next state."""
        reg, training = self.regularisers, self.training
        x = self.embedding(ids)
        x = embedding_dropout(x, ids, self.shape.vocab_size, reg.embedding_dropout, training)
        x = locked_dropout(self.input_dropout(x), reg.locked_dropout_input, training)
        outputs, state = self._recurrent(x, state,
                                         reg.layer_hooks(training and torch.is_grad_enabled()))
        dropped = locked_dropout(self.output_dropout(outputs), reg.locked_dropout_output,
                                 training)
        return dropped, outputs, state

    def _recurrent(self, x: torch.Tensor, state: State, hooks: LayerHooks | None
                   ) -> tuple[torch.Tensor, State]:
        if self.rnn_top is None:
            return run_recurrent(self.rnn, x, state, self.lstm_impl, hooks)
        below, width = self.rnn.num_layers, self.shape.state_size
        lower = tuple(s[:below, :, :self.rnn.hidden_size].contiguous() for s in state)
        x, lower = run_recurrent(self.rnn, x, lower, self.lstm_impl, hooks)
        x = hash_dropout(x, self.layer_dropout, self.training)
        x = hooks.between(x) if hooks is not None and hooks.between else x
        top = tuple(s[below:, :, :self.rnn_top.hidden_size].contiguous() for s in state)
        x, top = run_recurrent(self.rnn_top, x, top, self.lstm_impl, hooks)
        return x, tuple(torch.cat([_padded(a, width), _padded(b, width).to(a.dtype)])
                        for a, b in zip(lower, top, strict=True))

    def forward(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        outputs, state = self.hidden(ids, state)
        return self.logits(outputs), state

    def logits(self, outputs: torch.Tensor) -> torch.Tensor:
        """The output layer on top-layer outputs (its cast weights held in a kept block)."""
        return kept_linear(outputs, self.decoder)

    def window_nll(self, ids: torch.Tensor, targets: torch.Tensor, state: State
                   ) -> tuple[torch.Tensor, State]:
        """Summed negative log-likelihood of `targets` [B, T] (a scalar) and the next state."""
        outputs, state = self.hidden(ids, state)
        return self._nll(outputs, targets), state

    def window_loss(self, ids: torch.Tensor, targets: torch.Tensor, state: State
                    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """`window_nll`'s NLL, the AR/TAR penalty of the window (None without them) and the
        next state.

        AR and TAR are means over the window's elements, weighted as AWD-LSTM weights them
        against its mean loss per token; training's cost sums the loss over the window's
        steps, so the penalty comes multiplied by the window's length."""
        dropped, raw, state = self._top_outputs(ids, state)
        nll = self._nll(dropped, targets)
        reg = self.regularisers
        if not self.training or not (reg.ar or reg.tar):
            return nll, None, state
        penalty = nll.new_zeros(())
        if reg.ar:
            penalty = penalty + reg.ar * dropped.float().pow(2).mean()
        if reg.tar and raw.size(1) > 1:
            penalty = penalty + reg.tar * (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        return nll, penalty * ids.size(1), state

    def _nll(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if not isinstance(self.decoder, nn.Linear):
            # An int8 decoder (lm.quantize) keeps packed weights the fused softmax cannot read.
            logits = self.decoder(outputs).reshape(-1, self.shape.vocab_size).float()
            return F.cross_entropy(logits, targets.reshape(-1), reduction="sum")
        return linear_cross_entropy(outputs.reshape(-1, outputs.size(-1)), self.decoder.weight,
                                    self.decoder.bias, targets.reshape(-1))


# Which of PyTorch's two LSTM bias vectors each init scheme starts uniform (init_recurrent_).
_LSTM_BIASES = {"uniform": "one", "tutorial": "zero", "zaremba": "two", "awd": "two"}


def _padded(state: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(state, (0, width - state.size(-1)))


def _drop_tied_copy(module: LanguageModel, state: dict[str, Any], prefix: str,
                    local_metadata: Any) -> None:
    if module.tied():
        state.pop(prefix + "decoder.weight", None)


def _retie(module: LanguageModel, state: dict[str, Any], prefix: str, *args: Any) -> None:
    if module.tied() and prefix + "embedding.weight" in state:
        state[prefix + "decoder.weight"] = state[prefix + "embedding.weight"]


GATES = {"lstm": 4, "gru": 3, "rnn": 1}  # weight blocks per layer of each cell


def parameter_count(shape: LMShape) -> int:
    """The model's parameters, computed without building it (Python ints: never overflow)."""
    gates, hidden, layers = GATES.get(shape.cell, 4), shape.hidden_size, shape.num_layers
    top = shape.output_size

    def layer(inputs: int, width: int) -> int:  # W_ih, W_hh, two biases
        return gates * width * (inputs + width + 2)

    # Counted without listing the layers: a config may ask for more than memory can list.
    if layers == 1:
        recurrent = layer(shape.embedding_width, top)
    else:
        recurrent = (layer(shape.embedding_width, hidden) + (layers - 2) * layer(hidden, hidden)
                     + layer(hidden, top))
    embedding = shape.vocab_size * shape.embedding_width
    decoder = 0 if shape.tied else shape.vocab_size * shape.output_size
    return embedding + decoder + shape.vocab_size + recurrent


def build_language_model(config: LMConfig, vocab_size: int) -> LanguageModel:
    model = LanguageModel(LMShape.of(config, vocab_size), keep_prob=config.keep_prob,
                          lstm_impl=config.lstm_impl, regularisers=Regularisers.of(config))
    model.init_weights(config.init_scale, config.forget_bias, config.init)
    return model
