"""An LSTM stack for training and evaluation on the CPU, faster than torch.nn.LSTM (oneDNN).

`fused_lstm(x, state, lstm_weights(rnn), rnn.dropout, rnn.training)` computes what
`rnn(x, state)` computes for a batch-first `torch.nn.LSTM`, from the same parameters, so a model
keeps its nn.LSTM module (and every checkpoint's parameter names) and only swaps the call.

Per layer: the input projection of the whole window is one product (x W_ih^T); the time loop,
forward and backward, runs in C++ (kernels/lstm_cell.cpp): per step one product h W_hh^T
(oneDNN's brgemm micro-kernel, fp32 accumulation) with the gate math fused in while the step's
gates sit in L1. Backward yields the gate gradients of all steps, and the weight gradients and
d input are again one product each (dgates^T x, dgates^T h, dgates W_ih).

Precision: without autocast everything is fp32. Under `torch.autocast("cpu", dtype=bfloat16)`
the products take bf16 operands (the weights cast once per call, once per `weights_kept` block
(nn/kept.py), or kept by the training step: nn/bf16_copies.py) with fp32 accumulation; the gate
math, the cell state c, the saved gate activations and the bias gradient stay fp32; h is stored in
bf16 (it only feeds products and the next layer). The outputs are then bf16, as nn.LSTM's are
under autocast; the final state (h_n, c_n) is always fp32 (nn.LSTM returns bf16 there), so a
state carried to the next window loses nothing: two windows of T steps give what one window of
2T gives. Any state dtype is accepted as input.

Without the native kernel (no compiler, a failed build, or LSTMKIT_KERNELS=0) the same function
runs as plain PyTorch ops with the same math (a Python loop over steps: slower, not different).
"""

from __future__ import annotations

from types import ModuleType

import torch
from torch import nn

from lstmkit.device import cpu_has_native_bf16
from lstmkit.nn import kernels
from lstmkit.nn.bf16_copies import (
    Bf16Copies,
    active_copies,
    gradient_for_autograd,
    weight_for_products,
)
from lstmkit.nn.dropout import hash_dropout
from lstmkit.nn.kept import kept

BLOCK = 64  # hidden units per block of the per-step products (a multiple of 16; 64 measured
#             fastest of 16/32/64 for training at hidden 200 and 650, single thread)

LayerWeights = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]


def lstm_weights(rnn: nn.LSTM) -> list[LayerWeights]:
    """[(weight_ih, weight_hh, bias_ih, bias_hh)] per layer of a batch-first nn.LSTM."""
    if rnn.bidirectional or rnn.proj_size or not rnn.bias or not rnn.batch_first:
        raise ValueError("fused_lstm supports batch-first, unidirectional LSTMs with biases "
                         "and no projection")
    return [tuple(getattr(rnn, f"{name}_l{layer}")  # type: ignore[misc]
                  for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
            for layer in range(rnn.num_layers)]


def fused_lstm(inputs: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor],
               weights: list[LayerWeights], dropout: float, training: bool,
               generator: torch.Generator | None = None
               ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """A batch-first LSTM stack: inputs [B, T, I], state (h0, c0) each [L, B, H].

    Returns (outputs [B, T, H], (h_n, c_n) each [L, B, H]). Dropout with probability `dropout`
    acts on each layer's output that feeds the next layer, in training only (as nn.LSTM);
    `generator` makes its masks reproducible. Outputs are bf16 under CPU bf16 autocast (else
    the inputs' dtype, fp32); h_n and c_n are fp32.
    """
    h0, c0 = state
    layers = len(weights)
    if inputs.dim() != 3 or h0.dim() != 3 or c0.dim() != 3 or h0.size(0) != layers:
        raise ValueError(f"expected inputs [B, T, I] and state [{layers}, B, H]; got "
                         f"{tuple(inputs.shape)}, {tuple(h0.shape)}, {tuple(c0.shape)}")
    compute = _compute_dtype(inputs)
    backend = _backend(inputs, compute)
    with torch.autocast(inputs.device.type, enabled=False):
        x = inputs.transpose(0, 1).to(compute).contiguous()  # time-major [T, B, I]
        grad = torch.is_grad_enabled() and any(
            t.requires_grad for t in (inputs, h0, c0, *(w for layer in weights for w in layer)))
        hs, cs = [], []
        for layer, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights):
            if layer > 0 and dropout > 0 and training:
                x = _dropout(x, dropout, generator)
            x, h_n, c_n = _Layer.apply(x, h0[layer].float(), c0[layer].float(), w_ih, w_hh,
                                       b_ih, b_hh, compute, backend, grad)
            hs.append(h_n)
            cs.append(c_n)
        outputs = x.transpose(0, 1).contiguous()
    return outputs, (torch.stack(hs), torch.stack(cs))


def _compute_dtype(inputs: torch.Tensor) -> torch.dtype:
    """bf16 under bf16 autocast, else fp32 (bf16/fp16 inputs are computed in fp32)."""
    device = inputs.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        if dtype != torch.bfloat16:
            raise ValueError(f"fused_lstm supports bf16 autocast only, not {dtype}")
        return dtype
    if inputs.dtype == torch.float64:
        raise ValueError("fused_lstm computes in fp32 or bf16; use nn.LSTM for float64")
    return torch.float32


def _dropout(x: torch.Tensor, p: float, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return hash_dropout(x, p)
    if p >= 1:
        return x * 0
    keep = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    keep.bernoulli_(1 - p, generator=generator)
    return x * keep.div_(1 - p).to(x.dtype)


class _Layer(torch.autograd.Function):
    """One layer over a time-major window: x [T, B, I] -> (h [T, B, H], h_n, c_n) fp32."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, compute, backend, save):
        T, B, inp = x.shape
        H = w_hh.size(1)
        ctx.copies = active_copies() if save else None
        whh = _recurrent_weight(w_hh, compute, ctx.copies)
        wih = weight_for_products(w_ih, compute, ctx.copies)
        packed = None if save or backend is _PlainBackend else \
            _kept_packing(w_hh, whh, compute, backend)
        bias = (b_ih.float() + b_hh.float()).contiguous()
        xproj = torch.mm(x.reshape(T * B, inp), wih.t()).view(T, B, 4 * H)
        hs, h_n, c_n, cs, gates = backend.forward(xproj, bias, whh, h0.contiguous(),
                                                  c0.contiguous(), save, BLOCK, packed)
        if save:
            ctx.save_for_backward(x, wih, whh, hs, cs, gates)
            ctx.dtypes = (x.dtype, w_ih.dtype, w_hh.dtype, b_ih.dtype, b_hh.dtype)
            # The weights themselves only where their gradients may go to their copies.
            ctx.weights = (w_ih, w_hh) if ctx.copies is not None else None
            ctx.backend = backend
        ctx.set_materialize_grads(False)
        return hs[1:, :, :H], h_n, c_n

    @staticmethod
    def backward(ctx, d_out, d_hn, d_cn):
        x, wih, whh, hs, cs, gates = ctx.saved_tensors
        x_dtype, wih_dtype, whh_dtype, bih_dtype, bhh_dtype = ctx.dtypes
        T, B, inp = x.shape
        H = whh.size(1)
        compute = wih.dtype
        with torch.autocast(x.device.type, enabled=False):
            dgates, db, dh0, dc0 = ctx.backend.backward(
                None if d_out is None else d_out.to(compute).contiguous(),
                None if d_hn is None else d_hn.float().contiguous(),
                None if d_cn is None else d_cn.float().contiguous(),
                gates, cs, whh, compute == torch.bfloat16, BLOCK)
            dg = dgates.view(T * B, 4 * H)
            needs = ctx.needs_input_grad
            dx = torch.mm(dg, wih).view(T, B, inp).to(x_dtype) if needs[0] else None
            w_ih, w_hh = ctx.weights or (None, None)
            dw_ih = dw_hh = None
            if needs[3]:
                dw_ih = gradient_for_autograd(torch.mm(dg.t(), x.reshape(T * B, inp)),
                                              wih_dtype, w_ih, ctx.copies)
            if needs[4]:
                h_prev = hs[:-1].reshape(T * B, hs.size(2))[:, :H]
                dw_hh = gradient_for_autograd(torch.mm(dg.t(), h_prev), whh_dtype, w_hh,
                                              ctx.copies)
        return (dx, dh0, dc0, dw_ih, dw_hh, db.to(bih_dtype) if needs[5] else None,
                db.to(bhh_dtype) if needs[6] else None, None, None, None)


def _recurrent_weight(w_hh: torch.Tensor, compute: torch.dtype,
                      copies: Bf16Copies | None = None) -> torch.Tensor:
    """W_hh as the kernel takes it: its kept bf16 copy, fp32 (cast to `compute` while
    packing) or `compute`."""
    copy = copies.copy_of(w_hh) if copies is not None and compute == torch.bfloat16 else None
    if copy is not None:
        return copy
    whh = w_hh.detach()
    if whh.dtype != compute and whh.dtype != torch.float32:
        whh = whh.to(compute)
    return whh.contiguous()


def _kept_packing(w_hh: torch.Tensor, whh: torch.Tensor, compute: torch.dtype,
                  backend: ModuleType) -> torch.Tensor | None:
    """W_hh (prepared as `whh`) packed where a `weights_kept` block keeps it (else None: the
    kernel packs it); W_ih's cast is kept by `weight_for_products`. At hidden 650 the cast and
    the packing took 0.9 of the 1.4 ms a layer spent on one token on a Xeon with AMX
    (bench/lstm_layer.py --batch 1 --shapes 650x1, with and without --kept)."""
    return kept("lstm", (w_hh,), compute,
                lambda: backend.pack_forward(whh, compute == torch.bfloat16, BLOCK))


class _PlainBackend:
    """The kernel's contract (forward/backward of one layer's time loop) in PyTorch ops."""

    @staticmethod
    def forward(xproj, bias, whh, h0, c0, save, block, packed=None):
        T, B, _ = xproj.shape
        H = whh.size(1)
        hs = torch.empty(T + 1, B, H, dtype=xproj.dtype)
        whh = whh.to(xproj.dtype)
        hs[0] = h0
        cs = torch.empty(T + 1, B, H)
        cs[0] = c0
        gates = torch.empty(T, B, 4 * H) if save else None
        h = h0
        for t in range(T):
            pre = torch.mm(hs[t], whh.t()).float() if whh.dtype == torch.float32 else \
                torch.mm(hs[t].float(), whh.float().t())
            pre = pre + xproj[t].float() + bias
            i, f, g, o = pre.chunk(4, dim=1)
            i, f, g, o = i.sigmoid(), f.sigmoid(), g.tanh(), o.sigmoid()
            cs[t + 1] = f * cs[t] + i * g
            h = o * cs[t + 1].tanh()
            hs[t + 1] = h
            if save:
                gates[t] = torch.cat([i, f, g, o], dim=1)
        return hs, h.float().clone(), cs[T].clone(), cs if save else None, gates

    @staticmethod
    def backward(d_out, d_hn, d_cn, gates, cs, whh, bf16, block):
        T, B, H4 = gates.shape
        H = H4 // 4
        compute = torch.bfloat16 if bf16 else torch.float32
        w = whh.to(compute).float()
        dgates = torch.empty(T, B, H4, dtype=compute)
        db = torch.zeros(H4)
        dc = d_cn.clone() if d_cn is not None else torch.zeros(B, H)
        dh_rec = d_hn if d_hn is not None else torch.zeros(B, H)
        for t in range(T - 1, -1, -1):
            dh = dh_rec if d_out is None else dh_rec + d_out[t].float()
            i, f, g, o = gates[t].chunk(4, dim=1)
            tc = cs[t + 1].tanh()
            dct = dc + dh * o * (1 - tc * tc)
            d = torch.cat([dct * g * i * (1 - i), dct * cs[t] * f * (1 - f),
                           dct * i * (1 - g * g), dh * tc * o * (1 - o)], dim=1)
            dc = dct * f
            db += d.sum(0)
            dgates[t] = d
            dh_rec = torch.mm(dgates[t].float(), w)
        return dgates, db, dh_rec.clone(), dc


def _backend(inputs: torch.Tensor, compute: torch.dtype):
    # bf16 runs natively only where the CPU has bf16 products (oneDNN's bf16 brgemm needs
    # them); elsewhere the plain path computes the same function.
    if inputs.device.type == "cpu" and (compute != torch.bfloat16 or cpu_has_native_bf16()):
        kernel = native_kernel()
        if kernel is not None:
            return kernel
    return _PlainBackend


def native_kernel() -> ModuleType | None:
    """The compiled time-loop kernel, checked once after its build; None where unavailable."""
    return kernels.lstm_cell(_self_test)


def _self_test(module: ModuleType) -> None:
    """One tiny layer through the kernel in each precision against the plain path: a torch
    whose oneDNN lacks the brgemm micro-kernel raises here, not in the middle of training."""
    gen = torch.Generator().manual_seed(0)
    T, B, H = 2, 3, 17
    for dtype in (torch.float32, torch.bfloat16) if cpu_has_native_bf16() else (torch.float32,):
        xproj = torch.randn(T, B, 4 * H, generator=gen).to(dtype)
        bias = torch.randn(4 * H, generator=gen)
        whh = torch.randn(4 * H, H, generator=gen).to(dtype)
        h0, c0 = torch.randn(B, H, generator=gen), torch.randn(B, H, generator=gen)
        got = module.forward(xproj, bias, whh, h0, c0, True, BLOCK, None)
        want = _PlainBackend.forward(xproj, bias, whh, h0, c0, True, BLOCK)
        if not torch.allclose(got[1], want[1], atol=2e-2, rtol=0):
            raise RuntimeError(f"kernel self-test failed in {dtype}")
