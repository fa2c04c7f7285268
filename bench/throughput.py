"""Training and evaluation words/s: lstmkit's path against hand-written PyTorch baselines.

The baselines are what a user writes by hand: nn.Embedding -> nn.LSTM -> nn.Linear,
F.cross_entropy, SGD, clip_grad_norm_, with the same preset, data, batch shape and seed:
`plain_fp32`, and on a CPU with native bf16 products also `plain_bf16`, the same code under
`torch.autocast("cpu", dtype=torch.bfloat16)` (one line more, the strongest simple baseline).
All run in this one process, interleaved after warm-up, the order rotating every repetition,
so a noisy machine slows all alike; we report medians, ratios of medians, and the quartiles
of the ratios paired within each repetition (their spread is the machine's noise). The process
keeps freed memory for reuse (lstmkit.allocator, as the lstmkit command does) unless
--default-allocator: under glibc's defaults the baselines' speed swings by up to 3x between
processes with where their buffers land. Python's garbage collector leaves the objects that
exist before the first measurement out of its scans (gc.freeze), for every runner alike, as the
lstmkit command does while it trains. One JSON line per preset and cell, naming the CPU's
instruction sets and the implementation that ran.

    python bench/throughput.py --presets small medium large --data-dir ../shared/data/ptb
    python bench/throughput.py --presets small --cells lstm gru --data-dir ../shared/data/ptb
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from lstmkit.allocator import keep_freed_memory
from lstmkit.device import cpu_has_native_bf16, cpuinfo, resolve_precision
from lstmkit.fields import apply_overrides
from lstmkit.lm.batching import batch_rows, bptt_windows
from lstmkit.lm.config import preset
from lstmkit.lm.evaluate import STREAM_NUM_STEPS
from lstmkit.lm.model import build_language_model
from lstmkit.lm.optim import clipped_step, gradient_norm, make_optimizer, row_sparse_ok
from lstmkit.lm.train import keeps_bf16_copies
from lstmkit.nn import softmax
from lstmkit.nn.bf16_copies import Bf16Copies
from lstmkit.nn.embedding import collect_row_grads
from lstmkit.nn.kept import weights_kept
from lstmkit.nn.recurrent import detach_state

RNN_MODULES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
ALLOCATOR = {"kept": False}  # whether main() tuned malloc for this process


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


def baseline_runner(config, vocab_size, precision="fp32"):
    """The hand-written model; `precision` bf16 wraps its forward passes in bf16 autocast."""
    mixed = (torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16"
             else contextlib.nullcontext())
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
        with mixed:
            logits, new = model(x, detached(state[0]))
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1)) * \
                config.num_steps
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
        with mixed:
            logits, carried = model(x, carried)
            F.cross_entropy(logits.reshape(-1, vocab_size).float(), y.reshape(-1),
                            reduction="sum").item()
        return tuple(t.float() for t in carried) if isinstance(carried, tuple) else \
            carried.float()

    return train_step, eval_step


def lstmkit_runner(config, vocab_size, cast_weights=False):
    from lstmkit.device import autocast

    model = build_language_model(config, vocab_size)
    params = list(model.parameters())
    opt = make_optimizer(config, model)
    device = torch.device("cpu")
    row_grads = collect_row_grads(model.embedding) if row_sparse_ok(config) and \
        not model.tied() else None  # as the trainer (one process)
    copies = Bf16Copies(params) if not cast_weights and \
        keeps_bf16_copies(config, model, device, distributed=False) else None
    in_use = copies.in_use if copies is not None else contextlib.nullcontext
    state = [model.zero_state(config.batch_size)]

    def train_step(x, y):
        model.train()
        with autocast(config.precision, device), in_use():
            nll, new = model.window_nll(x, y, detach_state(state[0]))
        cost = nll / config.batch_size
        opt.zero_grad(set_to_none=True)
        if row_grads is not None:
            row_grads.clear()
        if copies is not None:
            copies.clear_grads()
        cost.backward()
        clipped_step(opt, gradient_norm(params, row_grads, copies), config.max_grad_norm,
                     row_grads=row_grads, copies=copies)  # as the trainer
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

    eval_step.pass_scope = weights_kept
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
    """One evaluation pass over `windows`: lstmkit's in one `weights_kept` block, as
    lstmkit.lm.evaluate.perplexity runs it (`step.pass_scope`)."""
    start = time.perf_counter()
    words, carried = 0, None
    with getattr(step, "pass_scope", contextlib.nullcontext)():
        for x, y in windows:
            carried = step(x, y, carried)
            words += x.numel()
    return words / (time.perf_counter() - start)


def bench_preset(name, cell, args, ids, vocab_size) -> dict:
    config = apply_overrides(preset(name), {"precision": args.precision, "cell": cell}, "bench")
    resolved = resolve_precision(config.precision, torch.device("cpu"))
    torch.manual_seed(0)
    runners = {"lstmkit": lstmkit_runner(config, vocab_size, args.cast_weights),
               "plain_fp32": baseline_runner(config, vocab_size, "fp32")}
    if cpu_has_native_bf16():
        runners["plain_bf16"] = baseline_runner(config, vocab_size, "bf16")
    if args.also_lstm_impl:  # lstmkit with the other LSTM layer, interleaved like the rest
        other = dataclasses.replace(config, lstm_impl=args.also_lstm_impl)
        runners[f"lstmkit_{args.also_lstm_impl}"] = lstmkit_runner(other, vocab_size,
                                                                   args.cast_weights)
    rows = batch_rows(ids, config.batch_size)
    windows = list(bptt_windows(rows, config.num_steps))
    eval_rows = batch_rows(ids, config.eval_batch_size)
    eval_windows = list(bptt_windows(eval_rows, config.eval_num_steps))
    # The batch-1 test stream, in lstmkit's chunks for all (the chunk length sets only speed).
    stream_windows = list(bptt_windows(batch_rows(ids[:20_001], 1), STREAM_NUM_STEPS))
    n = args.large_steps if name == "large" else args.steps
    ne = max(n // 2, 1)
    timings = {kind: {k: [] for k in runners} for kind in ("train", "eval", "stream")}
    for train_step, eval_step in runners.values():  # warm-up
        timed_train(train_step, windows[:args.warmup])
        timed_eval(eval_step, eval_windows[:args.warmup])
        timed_eval(eval_step, stream_windows[:args.warmup])
    order = list(runners)
    for rep in range(args.repeats):
        chunk = windows[(rep * n) % max(len(windows) - n, 1):][:n]
        echunk = eval_windows[(rep * ne) % max(len(eval_windows) - ne, 1):][:ne]
        for who in order[rep % len(order):] + order[:rep % len(order)]:
            train_step, eval_step = runners[who]
            timings["train"][who].append(timed_train(train_step, chunk))
            timings["eval"][who].append(timed_eval(eval_step, echunk))
            timings["stream"][who].append(timed_eval(eval_step, stream_windows[:n * 2]))
    result = {"preset": name, "cell": cell, "precision": resolved,
              "implementation": implementation(config, args.cast_weights)}
    if args.also_lstm_impl:
        result[f"implementation_lstmkit_{args.also_lstm_impl}"] = implementation(
            other, args.cast_weights)
    for kind, runs in timings.items():
        med = {k: statistics.median(v) for k, v in runs.items()}
        result[f"{kind}_words_per_sec"] = {k: round(v) for k, v in med.items()}
        for base in (k for k in med if k != "lstmkit"):
            result[f"{kind}_ratio_vs_{base}"] = round(med["lstmkit"] / med[base], 2)
            result[f"{kind}_paired_ratio_quartiles_vs_{base}"] = paired_quartiles(
                runs["lstmkit"], runs[base])
    result.update({
        "eval_shape": f"batch {config.eval_batch_size} x {config.eval_num_steps} steps",
        "stream_shape": f"batch 1 x {STREAM_NUM_STEPS} steps",
        "repeats": args.repeats, "steps_per_repeat": n, "machine": machine()})
    return result


def paired_quartiles(ours: list[float], base: list[float]) -> list[float]:
    """Quartiles of ours / base within each repetition (the two ran back to back): how far
    a machine's drift moves the ratio. Quartiles either side of 1.0 mean a tie here."""
    ratios = [a / b for a, b in zip(ours, base, strict=True)]
    if len(ratios) < 2:
        return [round(ratios[0], 2)] * 3
    q1, q2, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
    return [round(q1, 2), round(q2, 2), round(q3, 2)]


def implementation(config, cast_weights=False) -> dict:
    """Which code ran: precision, the recurrent layer, the softmax kernel or its fallback, how
    the weights reached bf16 products."""
    from lstmkit.lm.train import implementation as runs_on
    model = build_language_model(config, 10)  # the layers chosen do not depend on the vocabulary
    ran = runs_on(config, model, torch.device("cpu"))
    if cast_weights and ran["precision"] == "bf16":
        ran["weights"] = "cast to bf16 every window (--cast-weights)"
    return ran


def machine() -> dict:
    from lstmkit.nn.kernels import cpu_isa

    cpu = platform.processor() or platform.machine()
    if cpuinfo("model name"):  # with family and model: "AMD EPYC" names Zen 3, 4 and 5 alike
        cpu = f"{cpuinfo('model name')} (family {cpuinfo('cpu family')}, model {cpuinfo('model')})"
    return {"cpu": cpu, "isa": cpu_isa(), "native_bf16": cpu_has_native_bf16(),
            "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "allocator": "freed memory kept (lstmkit.allocator)" if ALLOCATOR["kept"]
            else "default", "gc": "frozen" if gc.get_freeze_count() else "default"}


def parse_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """Every benchmark's arguments plus --default-allocator, with malloc set as it says before
    anything is measured (machine() names the choice)."""
    parser.add_argument("--default-allocator", action="store_true",
                        help="leave glibc's malloc as it is (default: keep freed memory, as the "
                             "lstmkit command does; everything measured runs under it)")
    args = parser.parse_args(argv)
    ALLOCATOR["kept"] = not args.default_allocator and keep_freed_memory()
    return args


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    p.add_argument("--data-dir", default=os.environ.get("LSTMKIT_DATA"))
    p.add_argument("--precision", default="auto",
                   help="lstmkit's precision (auto: bf16 where the CPU has native bf16)")
    p.add_argument("--cells", nargs="+", default=["lstm"], choices=sorted(RNN_MODULES),
                   help="recurrent cell (the baseline uses the same PyTorch module)")
    p.add_argument("--steps", type=int, default=30, help="training windows per repetition")
    p.add_argument("--large-steps", type=int, default=4,
                   help="training windows per repetition for large (a window takes seconds)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--logits-rows", action="store_true",
                   help="lstmkit's bf16 training with the logits as [N, V], not [V, N]")
    p.add_argument("--cast-weights", action="store_true",
                   help="lstmkit's bf16 training casting the weights every window and stepping "
                        "from fp32 gradients, without the bf16 copies its SGD step keeps")
    p.add_argument("--also-lstm-impl", choices=("native", "onednn"),
                   help="also time lstmkit with this LSTM layer (--lstm-impl), as a runner of "
                        "its own: ratios against it come out like the baselines'")
    args = parse_args(p, argv)
    softmax.TRANSPOSED_LOGITS = not args.logits_rows
    ids, vocab_size = corpus(args.data_dir)
    gc.freeze()  # what exists now stays out of the collector's scans, as while lstmkit trains
    for name in args.presets:
        for cell in args.cells:
            print(json.dumps(bench_preset(name, cell, args, ids, vocab_size)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
