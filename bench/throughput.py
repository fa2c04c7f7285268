"""Training and evaluation words/s: lstmkit's path against a hand-written PyTorch baseline.

The baseline is what a user writes by hand: nn.Embedding -> nn.LSTM -> nn.Linear in fp32,
F.cross_entropy, SGD, clip_grad_norm_, with the same preset, data, batch shape and seed.
Both run in this one process, interleaved (A B A B ...) after warm-up, so a noisy shared
machine slows both alike; we report medians and the ratio of medians. One JSON line per preset.

    python bench/throughput.py --presets small medium --data-dir ../shared/data/ptb
    python bench/throughput.py --presets small --cells lstm gru --data-dir ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from lstmkit.device import cpu_has_native_bf16, resolve_precision
from lstmkit.lm.batching import batch_rows, bptt_windows
from lstmkit.lm.config import apply_overrides, preset
from lstmkit.lm.evaluate import STREAM_NUM_STEPS
from lstmkit.lm.model import build_language_model
from lstmkit.nn.recurrent import detach_state

RNN_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}


class HandWrittenLM(nn.Module):
    def __init__(self, vocab_size: int, hidden: int, layers: int, dropout: float,
                 cell: str = "lstm") -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, hidden)
        self.rnn = RNN_MODULES[cell](hidden, hidden, layers, dropout=dropout, batch_first=True)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, vocab_size)

    def forward(self, x, state):
        out, state = self.rnn(self.drop(self.embedding(x)), state)
        return self.fc(self.drop(out)), state


def baseline_runner(config, vocab_size):
    model = HandWrittenLM(vocab_size, config.hidden_size, config.num_layers, 1 - config.keep_prob,
                          config.cell)
    for p in model.parameters():
        nn.init.uniform_(p, -config.init_scale, config.init_scale)
    opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate)

    def zeros(rows):  # (h, c) for an LSTM, h alone for GRU and RNN
        shape = (config.num_layers, rows, config.hidden_size)
        return (torch.zeros(shape), torch.zeros(shape)) if config.cell == "lstm" else \
            torch.zeros(shape)

    def detached(s):
        return tuple(t.detach() for t in s) if isinstance(s, tuple) else s.detach()

    state = [zeros(config.batch_size)]

    def train_step(x, y):
        model.train()
        logits, new = model(x, detached(state[0]))
        loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1)) * config.num_steps
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        opt.step()
        state[0] = new
        return loss.item()

    @torch.no_grad()
    def eval_step(x, y, carried):
        model.eval()
        if carried is None:
            carried = zeros(x.size(0))
        logits, carried = model(x, carried)
        F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1), reduction="sum").item()
        return carried

    return train_step, eval_step


def lstmkit_runner(config, vocab_size):
    from lstmkit.device import autocast

    model = build_language_model(config, vocab_size)
    opt = torch.optim.SGD(model.parameters(), lr=config.learning_rate)
    state = [model.zero_state(config.batch_size)]
    device = torch.device("cpu")

    def train_step(x, y):
        model.train()
        with autocast(config.precision, device):
            nll, new = model.window_nll(x, y, detach_state(state[0]))
        cost = nll / config.batch_size
        opt.zero_grad(set_to_none=True)
        cost.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        opt.step()
        state[0] = new
        return cost.item()

    @torch.no_grad()
    def eval_step(x, y, carried):
        model.eval()
        carried = carried if carried is not None else model.zero_state(x.size(0))
        with autocast(config.precision, device):
            nll, carried = model.window_nll(x, y, carried)
        nll.item()
        return carried

    return train_step, eval_step


def corpus(data_dir: str | None, tokens: int = 200_000) -> tuple[torch.Tensor, int]:
    if data_dir and os.path.exists(os.path.join(data_dir, "ptb.train.txt")):
        from lstmkit.lm.data import load_ptb
        c = load_ptb(data_dir)
        return c.train[:tokens], len(c.vocab)
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 10_000, (tokens,), generator=g), 10_000


def timed_train(step, windows) -> float:
    start = time.perf_counter()
    words = 0
    for x, y in windows:
        step(x, y)
        words += x.numel()
    return words / (time.perf_counter() - start)


def timed_eval(step, windows) -> float:
    start = time.perf_counter()
    words, carried = 0, None
    for x, y in windows:
        carried = step(x, y, carried)
        words += x.numel()
    return words / (time.perf_counter() - start)


def bench_preset(name, cell, args, ids, vocab_size) -> dict:
    config = apply_overrides(preset(name), {"precision": args.precision, "cell": cell}, "bench")
    resolved = resolve_precision(config.precision, torch.device("cpu"))
    torch.manual_seed(0)
    runners = {"lstmkit": lstmkit_runner(config, vocab_size),
               "baseline": baseline_runner(config, vocab_size)}
    rows = batch_rows(ids, config.batch_size)
    windows = list(bptt_windows(rows, config.num_steps))
    eval_rows = batch_rows(ids, config.eval_batch_size)
    eval_windows = list(bptt_windows(eval_rows, config.eval_num_steps))
    # The batch-1 test stream, in lstmkit's chunks for both (the chunk length sets only speed).
    stream_windows = list(bptt_windows(batch_rows(ids[:20_001], 1), STREAM_NUM_STEPS))
    n, ne = args.steps, max(args.steps // 2, 1)
    train = {k: [] for k in runners}
    evals = {k: [] for k in runners}
    streams = {k: [] for k in runners}
    for train_step, eval_step in runners.values():  # warm-up
        timed_train(train_step, windows[:args.warmup])
        timed_eval(eval_step, eval_windows[:args.warmup])
        timed_eval(eval_step, stream_windows[:args.warmup])
    for rep in range(args.repeats):
        chunk = windows[(rep * n) % max(len(windows) - n, 1):][:n]
        echunk = eval_windows[(rep * ne) % max(len(eval_windows) - ne, 1):][:ne]
        for who, (train_step, eval_step) in runners.items():
            train[who].append(timed_train(train_step, chunk))
            evals[who].append(timed_eval(eval_step, echunk))
            streams[who].append(timed_eval(eval_step, stream_windows[:args.steps]))
    med = {k: statistics.median(v) for k, v in train.items()}
    emed = {k: statistics.median(v) for k, v in evals.items()}
    smed = {k: statistics.median(v) for k, v in streams.items()}
    return {
        "preset": name, "cell": cell, "precision": resolved,
        "train_words_per_sec": {k: round(v) for k, v in med.items()},
        "train_ratio": round(med["lstmkit"] / med["baseline"], 2),
        "eval_words_per_sec": {k: round(v) for k, v in emed.items()},
        "eval_ratio": round(emed["lstmkit"] / emed["baseline"], 2),
        "eval_shape": f"batch {config.eval_batch_size} x {config.eval_num_steps} steps",
        "stream_words_per_sec": {k: round(v) for k, v in smed.items()},
        "stream_ratio": round(smed["lstmkit"] / smed["baseline"], 2),
        "stream_shape": f"batch 1 x {STREAM_NUM_STEPS} steps",
        "repeats": args.repeats, "steps_per_repeat": n,
        "machine": machine(),
    }


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    isa = ("avx512" if torch.cpu._is_avx512_supported() else
           "avx2" if torch.cpu._is_avx2_supported() else "other")
    return {"cpu": cpu, "isa": isa, "native_bf16": cpu_has_native_bf16(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small", "medium"])
    p.add_argument("--data-dir", default=os.environ.get("LSTMKIT_DATA"))
    p.add_argument("--precision", default="auto",
                   help="lstmkit's precision (auto: bf16 where the CPU has native bf16)")
    p.add_argument("--cells", nargs="+", default=["lstm"], choices=sorted(RNN_MODULES),
                   help="recurrent cell (the baseline uses the same PyTorch module)")
    p.add_argument("--steps", type=int, default=30, help="training windows per repetition")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    args = p.parse_args(argv)
    ids, vocab_size = corpus(args.data_dir)
    for name in args.presets:
        for cell in args.cells:
            print(json.dumps(bench_preset(name, cell, args, ids, vocab_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
