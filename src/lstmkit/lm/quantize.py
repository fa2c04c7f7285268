"""int8 inference on the CPU: PyTorch's dynamic quantisation of a trained language model.

The weights of the recurrent layers (LSTM, GRU) and of the output layer are stored as int8
with one scale per tensor; each product quantises its activations on the fly, multiplies in
int8 and accumulates in int32, so nothing needs calibrating. The embedding stays fp32 (a
lookup, no product). A vanilla RNN has no dynamic int8 kernel in PyTorch: only its output layer
is quantised, which is most of the work anyway (the [H, V] product).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from lstmkit.errors import UserError

QUANTIZE = ("int8",)
_QUANTIZABLE = {nn.Linear, nn.LSTM, nn.GRU}


def check_quantize(quantize: str | None, device: torch.device, precision: str | None) -> None:
    """int8 inference runs on the CPU, in fp32 around the int8 products."""
    if quantize is None:
        return
    if quantize not in QUANTIZE:
        raise UserError(f"quantize must be one of {', '.join(QUANTIZE)}, got {quantize!r}")
    if device.type != "cpu":
        raise UserError(f"--quantize {quantize} is for CPU inference: use --device cpu")
    if precision not in (None, "auto", "fp32"):
        raise UserError(f"--quantize {quantize} keeps activations in fp32: give no --precision "
                        f"(or fp32), not {precision}")


def quantize_model(model: nn.Module, quantize: str | None, recurrent: bool = True
                   ) -> nn.Module:
    """A copy of `model` with int8 recurrent and output layers (the model itself when None);
    `recurrent` False leaves the recurrent layers fp32 (bench/int8.py compares both)."""
    if quantize is None:
        return model
    with torch.no_grad(), warnings.catch_warnings():
        # torch.ao's eager quantisation warns that it is deprecated in favour of torchao (not
        # a dependency here); it still works and is what measured within 1% on PTB.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        layers = _QUANTIZABLE if recurrent else {nn.Linear}
        return torch.ao.quantization.quantize_dynamic(model.eval(), layers, dtype=torch.qint8)


def is_quantized(module: nn.Module) -> bool:
    """True for a dynamically quantised layer (its weight is packed, not a parameter)."""
    return type(module).__module__.startswith("torch.ao.nn.quantized")
