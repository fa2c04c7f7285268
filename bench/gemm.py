"""Matrix-product speed, fp32 against bf16, at the softmax layer's shapes and a square one.

The language model's speed is bounded by these products (see the README's speed section), so
their fp32/bf16 ratio on a machine is the ceiling of what bf16 can buy there. One JSON line
per shape: median GFLOP/s of each variant over interleaved repetitions, their ratios to fp32
(torch.mm), and the machine. `fp32_onednn` runs the fp32 product through oneDNN's matmul
instead of torch.mm's BLAS.

    python bench/gemm.py                      # small preset's shapes: 400 rows, 200 -> 10,000
    python bench/gemm.py --rows 700 --hidden 650
    python bench/gemm.py --rows 700 --hidden 650 --variants fp32 fp32_onednn --repeats 21
    python bench/gemm.py --rows 700 --hidden 650 --layouts --repeats 11

`--layouts` times the softmax layer's three bf16 products as training runs them in either
layout of the logits: [N, V] (logits = h @ W.T, d hidden = G @ W, d weight = G.T @ h) and
[V, N] (logits^T = W @ h.T, d hidden = G^T.T @ W, d weight = G^T @ h; nn/softmax.py), and
d hidden in the [V, N] layout from a transposed copy of the weight (`VN_Wt`: d hidden^T =
W^T @ G^T, both operands row-major; training keeps no such copy, see docs/speed.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lstmkit.nn.products import onednn_mm_t
from throughput import machine, parse_args


def products(rows: int, hidden: int, vocab: int) -> dict[str, tuple]:
    """name -> (left shape, right shape, transpose right): the softmax layer's three products
    (forward logits, d hidden, d weight) and a square reference."""
    return {
        "logits = h @ W.T": ((rows, hidden), (vocab, hidden), True),
        "d_hidden = G @ W": ((rows, vocab), (vocab, hidden), False),
        "d_weight = G.T @ h": ((vocab, rows), (rows, hidden), False),
        "square 1024": ((1024, 1024), (1024, 1024), False),
    }


def onednn_product(left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """left @ right through oneDNN's matmul as lstmkit calls it, not torch.mm's BLAS."""
    return onednn_mm_t(left, right.t())


# variant -> (dtype of the operands, the product)
VARIANTS = {"fp32": (torch.float32, torch.mm), "bf16": (torch.bfloat16, torch.mm),
            "fp32_onednn": (torch.float32, onednn_product)}


def median_seconds(product, left: torch.Tensor, right: torch.Tensor, repeats: int) -> float:
    product(left, right)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        product(left, right)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_product(left_shape, right_shape, transposed: bool, repeats: int,
                  variants: list[str]) -> dict:
    torch.manual_seed(0)
    left = torch.randn(*left_shape)
    right = torch.randn(*right_shape)
    flops = 2 * left_shape[0] * left_shape[1] * (right_shape[0] if transposed else right_shape[1])
    times: dict[str, list[float]] = {name: [] for name in variants}
    operands = {name: (left.to(VARIANTS[name][0]), right.to(VARIANTS[name][0]))
                for name in variants}
    for r in range(repeats):  # alternate, so a noisy neighbour slows all alike
        for name in variants if r % 2 == 0 else variants[::-1]:
            a, b = operands[name]
            times[name].append(median_seconds(VARIANTS[name][1], a, b.t() if transposed else b, 3))
    gflops = {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}
    result = {f"{name}_gflops": round(rate, 1) for name, rate in gflops.items()}
    for name in variants:
        if name != "fp32" and "fp32" in gflops:
            result[f"{name}_over_fp32"] = round(gflops[name] / gflops["fp32"], 2)
    return result


def layout_products(rows: int, hidden: int, vocab: int) -> dict[str, dict]:
    """product -> {layout: (product, left, right)} in bf16, operands laid out as each layout
    keeps them (G: d logits [N, V]; Gt: the same as [V, N])."""
    torch.manual_seed(0)
    h, w = torch.randn(rows, hidden).bfloat16(), torch.randn(vocab, hidden).bfloat16()
    g = torch.randn(rows, vocab).bfloat16()
    gt = g.t().contiguous()
    return {
        "logits": {"NV": (h, w.t()), "VN": (w, h.t())},
        "d_hidden": {"NV": (g, w), "VN": (gt.t(), w), "VN_Wt": (w.t().contiguous(), gt)},
        "d_weight": {"NV": (g.t(), h), "VN": (gt, h)},
    }


def bench_layouts(rows: int, hidden: int, vocab: int, repeats: int) -> list[dict]:
    out = []
    for name, layouts in layout_products(rows, hidden, vocab).items():
        left, right = layouts["NV"]
        flops = 2 * left.size(0) * left.size(1) * right.size(1)
        times: dict[str, list[float]] = {layout: [] for layout in layouts}
        order = list(layouts)
        for r in range(repeats):  # alternate, so a noisy neighbour slows both alike
            for layout in order if r % 2 == 0 else order[::-1]:
                times[layout].append(median_seconds(torch.mm, *layouts[layout], 3))
        ms = {layout: statistics.median(t) * 1e3 for layout, t in times.items()}
        out.append({"product": name, "rows": rows, "hidden": hidden, "vocab": vocab,
                    "dtype": "bf16", **{f"{k}_ms": round(v, 3) for k, v in ms.items()},
                    **{f"{k}_gflops": round(flops / v / 1e6, 1) for k, v in ms.items()},
                    **{f"{k}_over_NV": round(ms["NV"] / v, 2) for k, v in ms.items()
                       if k != "NV"}})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400, help="tokens per step (batch x num_steps)")
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--variants", nargs="+", default=["fp32", "bf16"], choices=list(VARIANTS),
                   help="fp32 and bf16: torch.mm; fp32_onednn: oneDNN's matmul in fp32")
    p.add_argument("--layouts", action="store_true",
                   help="the softmax layer's bf16 products with the logits as [N, V] and [V, N]")
    args = parse_args(p, argv)
    where = machine()
    if args.layouts:
        for line in bench_layouts(args.rows, args.hidden, args.vocab, args.repeats):
            print(json.dumps({**line, "machine": where}), flush=True)
        return 0
    for name, (left, right, transposed) in products(args.rows, args.hidden, args.vocab).items():
        result = bench_product(left, right, transposed, args.repeats, args.variants)
        print(json.dumps({"product": name, "left": list(left), "right": list(right),
                          **result, "machine": where}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
