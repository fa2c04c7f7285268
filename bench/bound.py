"""How fast a preset's step could be on this machine: its matrix products and nothing else.

A step of the word-level LSTM is mostly matrix products (per layer: the window's input
projection and one recurrent product per time step; the softmax layer's logits; in training
the same again twice over for the gradients). This script counts their FLOPs and times them
with torch.mm in the chosen precision, in the order and shapes one step runs them, and reports
two ceilings in words/s:

- `products`: the step's products alone, as torch.mm runs them here (no gate math, dropout,
  loss, optimizer or copies): what a step with every other cost removed would reach;
- `peak`: the step's FLOPs at the best rate torch.mm reached here on any of those shapes or a
  large square product: nothing that does these FLOPs can beat it.

With `--throughput FILE` (bench/throughput.py's JSON lines from the same machine) it divides
each ceiling by the measured baselines' words/s: the largest gain over them any implementation
of the same model could show here.

    python bench/bound.py --presets small medium large \
        --throughput results/bench-zen5-avx512bf16/throughput-bf16.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass

import torch

from lstmkit.lm.config import preset
from throughput import machine, parse_args

VOCAB = 10_000  # PTB's


@dataclass(frozen=True)
class Product:
    """left [m, k] @ right [k, n], run `times` times in a step."""
    m: int
    k: int
    n: int
    times: int = 1

    @property
    def flops(self) -> int:
        return 2 * self.m * self.k * self.n * self.times


def step_products(hidden: int, layers: int, batch: int, steps: int, train: bool
                  ) -> list[Product]:
    """The products of one step over a [batch, steps] window (input size = hidden)."""
    rows, gates = batch * steps, 4 * hidden
    forward = [Product(rows, hidden, gates), Product(batch, hidden, gates, steps)] * layers
    forward.append(Product(rows, hidden, VOCAB))  # logits
    if not train:
        return forward
    backward = [Product(rows, VOCAB, hidden), Product(hidden, rows, VOCAB)]  # softmax layer
    backward += [Product(batch, gates, hidden, steps),  # d h, step by step
                 Product(rows, gates, hidden),  # d input
                 Product(gates, rows, hidden), Product(gates, rows, hidden)] * layers  # dW
    return forward + backward


def seconds(product: Product, dtype: torch.dtype, repeats: int) -> float:
    """Median time of `product` run product.times times in a row."""
    left = torch.randn(product.m, product.k).to(dtype)
    right = torch.randn(product.k, product.n).to(dtype)
    out = torch.empty(product.m, product.n, dtype=dtype)
    torch.mm(left, right, out=out)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(product.times):
            torch.mm(left, right, out=out)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bound(name: str, dtype: torch.dtype, repeats: int) -> dict:
    config = preset(name)
    if name not in ("small", "medium", "large"):  # PTB's word-level, untied LSTM models
        raise SystemExit(f"bound.py counts the tutorial's presets small, medium and large, "
                         f"not {name}")
    shapes = {
        "train": (config.batch_size, config.num_steps, True),
        "eval": (config.eval_batch_size, config.eval_num_steps, False),
    }
    square = Product(2048, 2048, 2048)
    best_rate = square.flops / seconds(square, dtype, repeats)
    result: dict = {"preset": name, "precision": str(dtype).removeprefix("torch.")}
    for kind, (batch, steps, train) in shapes.items():
        products = step_products(config.hidden_size, config.num_layers, batch, steps, train)
        timed = [(p, seconds(p, dtype, repeats)) for p in products]
        best_rate = max(best_rate, *(p.flops / t for p, t in timed))
        flops = sum(p.flops for p in products)
        words = batch * steps
        result[kind] = {"window": f"{batch} x {steps}",
                        "mflop_per_word": round(flops / words / 1e6, 2),
                        "products_ms": round(sum(t for _, t in timed) * 1e3, 2),
                        "products_words_per_sec": round(words / sum(t for _, t in timed)),
                        "flops": flops, "words": words}
    result["peak_gflops"] = round(best_rate / 1e9, 1)
    for kind in shapes:
        entry = result[kind]
        entry["peak_words_per_sec"] = round(entry.pop("words") / (entry.pop("flops") / best_rate))
    return result


def against(result: dict, measured: dict) -> None:
    """Adds each ceiling over the measured words/s of lstmkit and the baselines."""
    for kind, key in (("train", "train_words_per_sec"), ("eval", "eval_words_per_sec")):
        for who, words_per_sec in measured.get(key, {}).items():
            for ceiling in ("products", "peak"):
                ratio = result[kind][f"{ceiling}_words_per_sec"] / words_per_sec
                result[kind][f"{ceiling}_over_{who}"] = round(ratio, 2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    p.add_argument("--precision", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--throughput", help="bench/throughput.py's JSON lines, same machine")
    args = parse_args(p, argv)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    measured = {}
    if args.throughput:
        with open(args.throughput) as lines:
            for line in lines:
                if line.startswith("{"):
                    record = json.loads(line)
                    if record.get("precision") == args.precision \
                            and record.get("cell", "lstm") == "lstm":
                        measured[record["preset"]] = record
    where = machine()
    for name in args.presets:
        result = bound(name, dtype, args.repeats)
        against(result, measured.get(name, {}))
        print(json.dumps({**result, "machine": where}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
