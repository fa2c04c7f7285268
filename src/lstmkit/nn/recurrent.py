"""Stacked recurrent layers (LSTM, GRU, vanilla RNN) with one state convention.

State is always a tuple of tensors shaped [num_layers, B, H]: (h, c) for LSTM, (h,) for GRU and
RNN, so training and sampling code carry and detach it without knowing the cell.
On CUDA these are PyTorch's own cuDNN-backed modules.
"""

from __future__ import annotations

import torch
from torch import nn

from lstmkit.device import cpu_has_native_bf16

State = tuple[torch.Tensor, ...]

_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CELLS = tuple(_MODULES)  # the cells every model of the package can be built with


def make_recurrent(cell: str, input_size: int, hidden_size: int, num_layers: int,
                   dropout: float) -> nn.RNNBase:
    """Batch-first stack; `dropout` acts only between layers (never on the recurrent state)."""
    return _MODULES[cell](input_size, hidden_size, num_layers=num_layers, batch_first=True,
                          dropout=dropout if num_layers > 1 else 0.0)


def zero_state(rnn: nn.RNNBase, batch_size: int, device: torch.device | None = None,
               dtype: torch.dtype = torch.float32) -> State:
    shape = (rnn.num_layers, batch_size, rnn.hidden_size)
    count = 2 if is_lstm(rnn) else 1
    return tuple(torch.zeros(shape, device=device, dtype=dtype) for _ in range(count))


def detach_state(state: State) -> State:
    """Cut the graph at the window boundary (truncated BPTT) but keep the values."""
    return tuple(s.detach() for s in state)


def run_recurrent(rnn: nn.RNNBase, inputs: torch.Tensor, state: State
                  ) -> tuple[torch.Tensor, State]:
    if inputs.device.type == "cpu" and _bf16_autocast_without_native_bf16():
        # oneDNN has no bf16 recurrent primitive on such CPUs ("could not create a primitive
        # descriptor"): run this layer in fp32 so bf16 models still train and evaluate there.
        with torch.autocast("cpu", enabled=False):
            return _run(rnn, inputs.float(), tuple(s.float() for s in state))
    return _run(rnn, inputs, state)


def _bf16_autocast_without_native_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and not cpu_has_native_bf16()


def is_lstm(rnn: nn.Module) -> bool:
    """nn.LSTM or its int8 counterpart (torch.ao's dynamic LSTM is no subclass of nn.LSTM)."""
    return getattr(rnn, "mode", None) == "LSTM"


def _run(rnn: nn.RNNBase, inputs: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
    if is_lstm(rnn):
        outputs, (h, c) = rnn(inputs, (state[0], state[1]))
        return outputs, (h, c)
    outputs, h = rnn(inputs, state[0])
    return outputs, (h,)


def init_recurrent_(rnn: nn.RNNBase, init_scale: float, forget_bias: float) -> None:
    """Uniform init in [-init_scale, init_scale].

    PyTorch keeps two bias vectors (b_ih + b_hh) where the LSTM equations have one; for the LSTM
    b_hh is zeroed so the effective bias is U(-s, s) as in the tutorial, and `forget_bias` is
    added to the forget-gate slice (PyTorch's gate order is i, f, g, o).
    """
    for name, param in rnn.named_parameters():
        nn.init.uniform_(param, -init_scale, init_scale)
        if isinstance(rnn, nn.LSTM) and name.startswith("bias_hh"):
            nn.init.zeros_(param)
    if isinstance(rnn, nn.LSTM) and forget_bias:
        hidden = rnn.hidden_size
        with torch.no_grad():
            for layer in range(rnn.num_layers):
                getattr(rnn, f"bias_ih_l{layer}")[hidden:2 * hidden] += forget_bias
