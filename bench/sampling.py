"""Sampling speed: milliseconds per token of lstmkit's sampler against a hand-written loop.

At each preset's shape (vocabulary 10,000, random weights: the speed does not depend on them),
tokens are drawn one at a time at batch 1, the shape of `lstmkit sample` and `lstmkit serve`:

- `lstmkit`: lstmkit's sampler (lm/generate.py), whose tokens share one kept block
  (nn/kept.py: the weights cast and packed once per sample), as `lstmkit sample`, `lstmkit
  serve` and the API's generators run;
- `lstmkit_unkept`: the same with nothing kept (each token casting and packing the weights,
  as before the sampler held them), to show what keeping them gives;
- `plain`: what a user writes by hand: nn.Embedding -> nn.LSTM -> nn.Linear, softmax,
  torch.multinomial, token by token under torch.no_grad(); for bf16 under one
  `torch.autocast` held for the whole sample (its cache casts the weights once: the strongest
  simple baseline).

Each in fp32 and, on a CPU with native bf16 products, in bf16. The runners take turns after a
warm-up, the order reversed every other repetition; one JSON line per preset with the median
milliseconds per token, the ratios against `plain` in the same precision and the machine.

    python bench/sampling.py
    python bench/sampling.py --presets medium --tokens 200 --repeats 9
"""

from __future__ import annotations

import argparse
import contextvars
import json
import statistics
import time

import torch

from lstmkit.device import cpu_has_native_bf16
from lstmkit.lm import generate
from lstmkit.lm.config import preset
from lstmkit.lm.model import build_language_model
from lstmkit.nn.recurrent import uses_native_lstm
from throughput import machine, parse_args

VOCAB = 10_000


def lstmkit_sampler(model, precision: str, kept: bool):
    def sample(length: int, generator: torch.Generator) -> None:
        held = generate.kept_weights_context
        if not kept:  # a context without a block: every token casts and packs afresh
            generate.kept_weights_context = contextvars.copy_context
        try:
            for _ in generate.sample_batch_ids(model, [0], length, 1, 1.0, None, generator,
                                               None, precision):
                pass
        finally:
            generate.kept_weights_context = held
    return sample


def plain_sampler(model, precision: str):
    embedding, rnn, decoder = model.embedding, model.rnn, model.decoder

    @torch.no_grad()
    def sample(length: int, generator: torch.Generator) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            ids, state = torch.zeros(1, 1, dtype=torch.long), None
            for _ in range(length):
                out, state = rnn(embedding(ids), state)
                probs = torch.softmax(decoder(out[:, -1]).float(), dim=-1)
                ids = torch.multinomial(probs, 1, generator=generator)
    return sample


def bench_preset(name: str, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    config = preset(name)
    model = build_language_model(config, VOCAB).eval()
    precisions = ["fp32", "bf16"] if cpu_has_native_bf16() else ["fp32"]
    runners = {}
    for precision in precisions:
        runners[f"lstmkit_{precision}"] = lstmkit_sampler(model, precision, kept=True)
        runners[f"lstmkit_unkept_{precision}"] = lstmkit_sampler(model, precision, kept=False)
        runners[f"plain_{precision}"] = plain_sampler(model, precision)
    tokens = args.large_tokens if name == "large" else args.tokens
    times: dict[str, list[float]] = {key: [] for key in runners}
    order = list(runners)
    for sample in runners.values():
        for _ in range(args.warmup):
            sample(tokens, torch.Generator().manual_seed(0))
    for r in range(args.repeats):
        for key in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            runners[key](tokens, torch.Generator().manual_seed(r))
            times[key].append((time.perf_counter() - start) / tokens * 1e3)
    ms = {key: statistics.median(ts) for key, ts in times.items()}
    ratios = {f"{key} vs plain_{key.rsplit('_', 1)[1]}": ms[f"plain_{key.rsplit('_', 1)[1]}"]
              / ms[key] for key in runners if not key.startswith("plain")}
    recurrent = {f"{kept}_{p}": "lstmkit" if uses_native_lstm(
        model.rnn, torch.device("cpu"), config.lstm_impl, p == "bf16", training=False,
        kept=kept == "kept", one_step=True) else "oneDNN"
        for kept in ("kept", "unkept") for p in precisions}  # what a token runs in
    return {"bench": "sampling", "preset": name, "hidden": config.hidden_size, "vocab": VOCAB,
            "tokens": tokens, "repeats": args.repeats, "ms_per_token": ms,
            "speedup": ratios, "recurrent_layer": recurrent,
            "all_ms_per_token": {k: [round(t, 4) for t in ts] for k, ts in times.items()},
            "machine": machine()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", nargs="+", default=["small", "medium", "large"])
    p.add_argument("--tokens", type=int, default=100, help="tokens per sample")
    p.add_argument("--large-tokens", type=int, default=30, help="tokens per sample for large")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--warmup", type=int, default=1)
    args = parse_args(p, argv)
    for name in args.presets:
        print(json.dumps(bench_preset(name, args)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
