"""Matrix-product speed, fp32 against bf16, at the softmax layer's shapes and a square one.

The language model's speed is bounded by these products (see the README's speed section), so
their fp32/bf16 ratio on a machine is the ceiling of what bf16 can buy there. One JSON line
per shape: median GFLOP/s of each precision over interleaved repetitions, their ratio, and
the machine.

    python bench/gemm.py                      # small preset's shapes: 400 rows, 200 -> 10,000
    python bench/gemm.py --rows 700 --hidden 650
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

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


def median_seconds(left: torch.Tensor, right: torch.Tensor, repeats: int) -> float:
    torch.mm(left, right)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(left, right)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_product(left_shape, right_shape, transposed: bool, repeats: int) -> dict:
    torch.manual_seed(0)
    left = torch.randn(*left_shape)
    right = torch.randn(*right_shape)
    flops = 2 * left_shape[0] * left_shape[1] * (right_shape[0] if transposed else right_shape[1])
    times = {"fp32": [], "bf16": []}
    operands = {"fp32": (left, right), "bf16": (left.bfloat16(), right.bfloat16())}
    for _ in range(repeats):  # alternate, so a noisy neighbour slows both alike
        for name, (a, b) in operands.items():
            times[name].append(median_seconds(a, b.t() if transposed else b, 3))
    gflops = {name: flops / statistics.median(t) / 1e9 for name, t in times.items()}
    return {"fp32_gflops": round(gflops["fp32"], 1), "bf16_gflops": round(gflops["bf16"], 1),
            "bf16_over_fp32": round(gflops["bf16"] / gflops["fp32"], 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=400, help="tokens per step (batch x num_steps)")
    p.add_argument("--hidden", type=int, default=200)
    p.add_argument("--vocab", type=int, default=10_000)
    p.add_argument("--repeats", type=int, default=7)
    args = parse_args(p, argv)
    where = machine()
    for name, (left, right, transposed) in products(args.rows, args.hidden, args.vocab).items():
        result = bench_product(left, right, transposed, args.repeats)
        print(json.dumps({"product": name, "left": list(left), "right": list(right),
                          **result, "machine": where}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
