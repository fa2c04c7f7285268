"""Perplexity and words/s of a saved model on a PTB split: fp32 against int8 (dynamic
quantisation, lm.quantize) and bf16 autocast, all in this one process.

Each repeat evaluates fp32, int8, int8 for the output layer only, bf16 in turn
(interleaved, so a noisy shared machine slows all alike) after one warm-up window each; we
print every pass, then one JSON line with the perplexities and the median words/s.

    python bench/int8.py --model runs/small --data-dir ../shared/data/ptb --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lstmkit.lm.data import encode_file, ptb_files
from lstmkit.lm.evaluate import perplexity
from lstmkit.lm.quantize import quantize_model
from lstmkit.lm.runs import load_lm
from throughput import machine, parse_args

VARIANTS = ("fp32", "int8", "int8-output", "bf16")  # int8-output: only the output layer int8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=1, help="1: the tutorial's stream")
    parser.add_argument("--num-steps", type=int, default=100)
    parser.add_argument("--limit", type=int, help="only the first N tokens (a quick check)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: batch-1 steps are too small to split, "
                             "and split they wait on the busiest core of a shared machine)")
    args = parse_args(parser)
    torch.set_num_threads(args.threads)

    loaded = load_lm(args.model, "cpu")
    ids = encode_file(loaded.vocab, ptb_files(args.data_dir)[f"{args.split}_file"], loaded.level)
    ids = ids[:args.limit] if args.limit else ids
    models = {"fp32": loaded.model.eval(), "int8": quantize_model(loaded.model, "int8"),
              "int8-output": quantize_model(loaded.model, "int8", recurrent=False),
              "bf16": loaded.model.eval()}
    precision = {"fp32": "fp32", "int8": "fp32", "int8-output": "fp32", "bf16": "bf16"}
    for name in VARIANTS:  # warm-up: kernels, oneDNN primitives, the softmax extension
        perplexity(models[name], ids[:2 * args.num_steps], 1, args.num_steps, precision[name])
    speeds: dict[str, list[float]] = {name: [] for name in VARIANTS}
    ppl: dict[str, float] = {}
    for repeat in range(args.repeats):
        for name in VARIANTS:
            start = time.perf_counter()
            result = perplexity(models[name], ids, args.batch_size, args.num_steps,
                                precision[name])
            seconds = time.perf_counter() - start
            speeds[name].append(result.tokens / seconds)
            ppl[name] = result.value
            print(f"repeat {repeat + 1} {name}: perplexity {result.value:.3f}, "
                  f"{result.tokens / seconds:,.0f} words/s ({seconds:.1f} s)", flush=True)
    medians = {name: statistics.median(s) for name, s in speeds.items()}
    print(json.dumps({
        "model": str(args.model), "split": args.split, "tokens": int(ids.numel()),
        "shape": f"batch {args.batch_size} x {args.num_steps}", "machine": machine(),
        "perplexity": ppl,
        "int8_perplexity_change_percent": 100 * (ppl["int8"] / ppl["fp32"] - 1),
        "median_words_per_s": {k: round(v) for k, v in medians.items()},
        "speedup_vs_fp32": {k: round(v / medians["fp32"], 2) for k, v in medians.items()},
    }))


if __name__ == "__main__":
    main()
