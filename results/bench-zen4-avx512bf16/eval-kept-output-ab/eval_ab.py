"""Evaluation passes with the softmax layer's bf16 weight kept for the pass (as lstmkit runs
them since 6c15618) against the same passes casting it every window (as before), interleaved.

`small` and `medium` shapes, random weights, 10,000 words, 20,000 random token ids; a pass at
batch 10 x 50 steps and one stream (batch 1 x 100), bf16, 9 repetitions after a warm-up, the
order reversed every other repetition. Prints words/s medians and the ratio.

    python results/bench-zen4-avx512bf16/eval-kept-output-ab/eval_ab.py
"""

import statistics
import time

import torch

from lstmkit.allocator import keep_freed_memory
from lstmkit.lm.config import preset
from lstmkit.lm.evaluate import perplexity
from lstmkit.lm.model import build_language_model
from lstmkit.nn import softmax

keep_freed_memory()
ids = torch.randint(0, 10_000, (20_000,), generator=torch.Generator().manual_seed(0))
kept_cast = softmax.kept_cast


def run(model, batch: int, steps: int, keep: bool) -> float:
    softmax.kept_cast = kept_cast if keep else (lambda weight, dtype: None)
    start = time.perf_counter()
    perplexity(model, ids, batch, steps, "bf16")
    return ids.numel() / (time.perf_counter() - start)


for name in ("small", "medium"):
    torch.manual_seed(0)
    model = build_language_model(preset(name), 10_000).eval()
    for batch, steps in ((10, 50), (1, 100)):
        times = {True: [], False: []}
        for keep in (True, False):
            run(model, batch, steps, keep)
        for r in range(9):
            for keep in (True, False) if r % 2 == 0 else (False, True):
                times[keep].append(run(model, batch, steps, keep))
        kept, cast = statistics.median(times[True]), statistics.median(times[False])
        print(f"{name} batch {batch} x {steps}: kept {kept:,.0f} words/s, cast every window "
              f"{cast:,.0f} words/s, ratio {kept / cast:.3f}", flush=True)
