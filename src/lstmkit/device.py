"""Choosing the device and the numeric precision; every other module just receives them."""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

from lstmkit.errors import UserError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present, else the CPU; asking for absent CUDA is a user error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("device cuda requested but no CUDA GPU is available (use --device cpu)")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        raise UserError("precision fp16 needs a CUDA GPU; on the CPU use bf16 or fp32")


def autocast(precision: str, device: torch.device) -> AbstractContextManager:
    """Mixed precision for the forward pass: matrix products in bf16/fp16, losses in fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
