"""fused_lstm against torch.nn.LSTM (oneDNN): one window through a 2-layer stack (batch 20).

For each PTB shape (hidden, steps) = (200, 20), (650, 35), (1500, 35): forward + backward in
training mode and forward only in eval mode (no grad), of nn.LSTM and of ours, in fp32 and
under bf16 autocast. After a warm-up the variants run in turn, in an order that alternates
each repetition, so a noisy neighbour slows all alike; one JSON line per (shape, mode, impl,
precision) with the median milliseconds and the machine.

    PYTHONPATH=src python bench/lstm_layer.py
    PYTHONPATH=src python bench/lstm_layer.py --shapes 650x35 --repeats 21
    PYTHONPATH=src python bench/lstm_layer.py --precisions fp32   # a CPU without native bf16
    PYTHONPATH=src python bench/lstm_layer.py --modes eval --batch 1   # the stream's shape
    PYTHONPATH=src python bench/lstm_layer.py --modes eval --batch 10 --kept   # as evaluate runs
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import torch
from torch import nn

from lstmkit.nn.kept import weights_kept
from lstmkit.nn.lstm import fused_lstm, lstm_weights, native_kernel
from throughput import machine, parse_args

LAYERS = 2


def make_step(impl: str, precision: str, mode: str, rnn: nn.LSTM, x: torch.Tensor, state):
    weights = lstm_weights(rnn)

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            if impl == "nn.LSTM":
                out, (h, c) = rnn(x, state)
            else:
                out, (h, c) = fused_lstm(x, state, weights, rnn.dropout, rnn.training)
        return out, h, c

    if mode == "eval":
        def step():
            with torch.no_grad():
                run()
    else:
        def step():
            out, h, c = run()
            (out.float().sum() + h.float().sum() + c.float().sum()).backward()
            for p in rnn.parameters():
                p.grad = None
            x.grad = None
    return step


def bench_shape(hidden: int, steps: int, mode: str, repeats: int, warmup: int,
                precisions: list[str], batch: int = 20, kept: bool = False) -> list[dict]:
    torch.manual_seed(0)
    rnn = nn.LSTM(hidden, hidden, LAYERS, batch_first=True)
    rnn.train(mode == "train")
    x = torch.randn(batch, steps, hidden, requires_grad=mode == "train")
    state = (torch.zeros(LAYERS, batch, hidden), torch.zeros(LAYERS, batch, hidden))
    variants = [(impl, prec) for prec in precisions for impl in ("nn.LSTM", "ours")]
    fns = {v: make_step(*v, mode, rnn, x, state) for v in variants}
    times: dict[tuple[str, str], list[float]] = {v: [] for v in variants}
    # --kept: every call inside one weights_kept block, as one evaluation pass runs its windows
    with weights_kept() if kept else contextlib.nullcontext():
        for fn in fns.values():
            for _ in range(warmup):
                fn()
        for r in range(repeats):
            for v in variants if r % 2 == 0 else variants[::-1]:
                start = time.perf_counter()
                fns[v]()
                times[v].append(time.perf_counter() - start)
    rows = []
    for (impl, prec), ts in times.items():
        rows.append({"shape": f"{hidden}x{steps}", "hidden": hidden, "steps": steps,
                     "layers": LAYERS, "batch": batch, "mode": mode, "impl": impl,
                     "precision": prec, "kept": kept,
                     "ms": round(statistics.median(ts) * 1e3, 2)})
    for prec in precisions:
        base = statistics.median(times[("nn.LSTM", prec)])
        ours = statistics.median(times[("ours", prec)])
        for row in rows:
            if row["impl"] == "ours" and row["precision"] == prec:
                row["speedup"] = round(base / ours, 2)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["200x20", "650x35", "1500x35"],
                   help="HIDDENxSTEPS")
    p.add_argument("--modes", nargs="+", default=["train", "eval"], choices=["train", "eval"])
    p.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                   help="bf16 only where it is native: elsewhere it is emulated, 10-100x slower")
    p.add_argument("--batch", type=int, default=20,
                   help="rows (20: training; evaluation runs 10, the stream 1)")
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--kept", action="store_true",
                   help="eval: all calls in one weights_kept block (an evaluation pass)")
    args = parse_args(p, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    where = {**machine(), "kernel": "native" if native_kernel() is not None else "plain"}
    for shape in args.shapes:
        hidden, steps = (int(v) for v in shape.split("x"))
        for mode in args.modes:
            for row in bench_shape(hidden, steps, mode, args.repeats, args.warmup,
                                   args.precisions, args.batch, args.kept and mode == "eval"):
                print(json.dumps({**row, **where}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
