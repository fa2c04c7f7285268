"""Stacked recurrent layers (LSTM, GRU, vanilla RNN) with one state convention.

State is always a tuple of tensors shaped [num_layers, B, H]: (h, c) for LSTM, (h,) for GRU and
RNN, so training and sampling code carry and detach it without knowing the cell.
The modules are PyTorch's own (oneDNN on the CPU, cuDNN on CUDA). An LSTM can instead run
through our own layer (nn/lstm.py) from the same parameters: `lstm_impl` chooses, and "auto"
takes ours where it measured faster (see `uses_native_lstm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lstmkit.device import cpu_has_amx, cpu_has_avx512, cpu_has_native_bf16
from lstmkit.nn.dropout import hash_dropout
from lstmkit.nn.kept import weights_are_kept
from lstmkit.nn.lstm import fused_lstm, lstm_weights, native_kernel

State = tuple[torch.Tensor, ...]
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class LayerHooks:
    """What a stack run layer by layer does between its layers: `between` transforms each
    layer's input after the first (after the module's own dropout), `weight_hh` each layer's
    hidden-to-hidden weights for this window (AWD-LSTM's locked dropout and weight drop)."""
    between: Transform | None = None
    weight_hh: Transform | None = None

_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
CELLS = tuple(_MODULES)  # the cells every model of the package can be built with
LSTM_IMPLS = ("auto", "native", "onednn")
# Where "auto" runs our LSTM layer under bf16, with its compiled kernel (the plain-PyTorch
# fallback loops over time steps in Python): training at every size (1.42x at hidden 200, 1.63x
# at 650, 3.05x at 1500 against oneDNN's bf16 LSTM on a Zen 5, bench/lstm_layer.py).
# Evaluation inside a `weights_kept` block (evaluation passes, scoring, sampling, beam search),
# which casts and packs the weights once, at every size: 1.09x / 1.12x / 1.42x at batch 10,
# 1.31-1.35x for the batch-1 stream, 1.8-5.1x for one token, at hidden 200 / 650 / 1500 on a
# Zen 4 with AVX512-BF16 alone (--kept). A call outside one packs W_hh itself: there on a CPU
# with AMX at every size (1.51x / 1.76x / 1.24x at batch 10 on a Xeon); on one with AVX512-BF16
# alone from this width on, since oneDNN's forward was faster at hidden 650 on a Zen 5 and a
# Zen 4 (0.6-0.87x; at 200 0.98-1.15x). In fp32 oneDNN is faster, except for one step at a time
# inside a block (sampling, beam search), which oneDNN's layer runs slowly at batch 1: the layer
# 1.76x / 1.64x / 7.83x faster at hidden 200 / 650 / 1500, a whole sampled token 1.87x / 1.24x /
# 1.57x, on a Zen 4 (bench/lstm_layer.py --kept --batch 1, bench/sampling.py).
NATIVE_EVAL_MIN_HIDDEN = 1024


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


def run_recurrent(rnn: nn.RNNBase, inputs: torch.Tensor, state: State,
                  lstm_impl: str = "auto", hooks: LayerHooks | None = None
                  ) -> tuple[torch.Tensor, State]:
    """The stack over batch-first `inputs`; with `hooks`, layer by layer (see LayerHooks)."""
    run = _run if hooks is None else _layer_by_layer(hooks)
    if inputs.device.type == "cpu" and _bf16_autocast_without_native_bf16():
        # oneDNN has no bf16 recurrent primitive on such CPUs ("could not create a primitive
        # descriptor"): run this layer in fp32 so bf16 models still train and evaluate there.
        with torch.autocast("cpu", enabled=False):
            return run(rnn, inputs.float(), tuple(s.float() for s in state), lstm_impl)
    return run(rnn, inputs, state, lstm_impl)


def uses_native_lstm(rnn: nn.RNNBase, device: torch.device, lstm_impl: str,
                     bf16: bool, training: bool, kept: bool, one_step: bool = False) -> bool:
    """Whether an LSTM runs through our own layer: always with "native" (on the CPU), never
    with "onednn"; with "auto" where it measured faster (see NATIVE_EVAL_MIN_HIDDEN).
    `kept`: the call runs inside a `weights_kept` block; `one_step`: over one time step."""
    if not isinstance(rnn, nn.LSTM) or device.type != "cpu" or lstm_impl == "onednn":
        return False
    if lstm_impl == "native":
        return True
    if not bf16:
        return kept and one_step and not training and cpu_has_avx512() and \
            native_kernel() is not None
    return cpu_has_native_bf16() and native_kernel() is not None and (
        training or kept or cpu_has_amx() or rnn.hidden_size >= NATIVE_EVAL_MIN_HIDDEN)


def describe_lstm_impl(rnn: nn.RNNBase, device: torch.device, lstm_impl: str, bf16: bool
                       ) -> str:
    """For run headers and logs: the recurrent layer a run trains and evaluates with (the same
    for both: a run's evaluation passes hold their weights in a `weights_kept` block)."""
    if not isinstance(rnn, nn.LSTM):
        return f"PyTorch {type(rnn).__name__}"
    if not uses_native_lstm(rnn, device, lstm_impl, bf16, training=True, kept=True):
        return "oneDNN" if device.type == "cpu" else "cuDNN"
    return "lstmkit" if native_kernel() is not None else "lstmkit (plain PyTorch)"


def _bf16_autocast_without_native_bf16() -> bool:
    return torch.is_autocast_enabled("cpu") and not cpu_has_native_bf16()


def is_lstm(rnn: nn.Module) -> bool:
    """nn.LSTM or its int8 counterpart (torch.ao's dynamic LSTM is no subclass of nn.LSTM)."""
    return getattr(rnn, "mode", None) == "LSTM"


def _native_here(rnn: nn.RNNBase, inputs: torch.Tensor, lstm_impl: str) -> bool:
    """`uses_native_lstm` for this call: its device, autocast precision, grad mode, whether
    it runs inside a `weights_kept` block and over one step (batch-first `inputs`)."""
    bf16 = torch.is_autocast_enabled("cpu") and \
        torch.get_autocast_dtype("cpu") == torch.bfloat16
    training = rnn.training and torch.is_grad_enabled()
    return uses_native_lstm(rnn, inputs.device, lstm_impl, bf16, training, weights_are_kept(),
                            one_step=inputs.size(1) == 1)


def _run(rnn: nn.RNNBase, inputs: torch.Tensor, state: State, lstm_impl: str
         ) -> tuple[torch.Tensor, State]:
    if is_lstm(rnn):
        if _native_here(rnn, inputs, lstm_impl):
            outputs, (h, c) = fused_lstm(inputs, (state[0], state[1]), lstm_weights(rnn),
                                         rnn.dropout, rnn.training)
        else:
            outputs, (h, c) = rnn(inputs, (state[0], state[1]))
        return outputs, (h, c)
    outputs, h = rnn(inputs, state[0])
    return outputs, (h,)


_WEIGHT_NAMES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
# PyTorch's own single-layer recurrences, called as its modules call them (torch._VF), so a
# layer can run on weights computed for the window (weight drop).
_FUNCTIONS = {"LSTM": torch._VF.lstm, "GRU": torch._VF.gru, "RNN_TANH": torch._VF.rnn_tanh,
              "RNN_RELU": torch._VF.rnn_relu}


def _layer_by_layer(hooks: LayerHooks):
    def run(rnn: nn.RNNBase, inputs: torch.Tensor, state: State, lstm_impl: str
            ) -> tuple[torch.Tensor, State]:
        native = is_lstm(rnn) and _native_here(rnn, inputs, lstm_impl)
        x, finals = inputs, [[] for _ in state]
        for layer in range(rnn.num_layers):
            if layer > 0:
                x = hash_dropout(x, rnn.dropout, rnn.training)
                x = hooks.between(x) if hooks.between else x
            w_ih, w_hh, b_ih, b_hh = (getattr(rnn, f"{name}_l{layer}") for name in _WEIGHT_NAMES)
            w_hh = hooks.weight_hh(w_hh) if hooks.weight_hh else w_hh
            layer_state = tuple(s[layer:layer + 1] for s in state)
            if native:
                x, layer_state = fused_lstm(x, layer_state, [(w_ih, w_hh, b_ih, b_hh)], 0.0,
                                            rnn.training)
            else:
                x, layer_state = _one_layer(rnn, x, layer_state, [w_ih, w_hh, b_ih, b_hh])
            for parts, s in zip(finals, layer_state, strict=True):
                parts.append(s)
        return x, tuple(torch.cat(parts) for parts in finals)
    return run


def _one_layer(rnn: nn.RNNBase, x: torch.Tensor, state: State, weights: list[torch.Tensor]
               ) -> tuple[torch.Tensor, State]:
    """One layer of `rnn`'s kind on `weights`, as nn.LSTM/GRU/RNN would run it."""
    function = _FUNCTIONS[rnn.mode]
    args = (weights, True, 1, 0.0, rnn.training, False, True)
    if rnn.mode == "LSTM":
        out, h, c = function(x, (state[0], state[1]), *args)
        return out, (h, c)
    out, h = function(x, state[0], *args)
    return out, (h,)


# init_recurrent_'s lstm_biases: the LSTM bias vectors that keep their uniform draw.
_KEPT_BIASES = {"one": ("bias_ih",), "two": ("bias_ih", "bias_hh"), "zero": ()}


def init_recurrent_(rnn: nn.RNNBase, init_scale: float, forget_bias: float,
                    lstm_biases: str = "one") -> None:
    """Uniform init in [-init_scale, init_scale].

    PyTorch's LSTM keeps two bias vectors (b_ih + b_hh) where the LSTM equations have one.
    `lstm_biases` says which keep their draw: one (b_ih; b_hh zeroed, so the gate bias starts
    U(-s, s) like every other weight), two (both, as Zaremba's Torch code and PyTorch's own init
    start them) or zero (neither, as the TF tutorial's BasicLSTMCell starts its one bias).
    Every parameter is drawn first, so the weights are the same whichever is chosen.
    `forget_bias` is then added to the forget-gate slice (PyTorch's gate order is i, f, g, o).
    """
    kept = _KEPT_BIASES[lstm_biases]
    for name, param in rnn.named_parameters():
        nn.init.uniform_(param, -init_scale, init_scale)
        if isinstance(rnn, nn.LSTM) and name.startswith("bias") and not name.startswith(kept):
            nn.init.zeros_(param)
    if isinstance(rnn, nn.LSTM) and forget_bias:
        hidden = rnn.hidden_size
        with torch.no_grad():
            for layer in range(rnn.num_layers):
                getattr(rnn, f"bias_ih_l{layer}")[hidden:2 * hidden] += forget_bias
