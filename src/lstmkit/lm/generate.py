"""Sampling and scoring with a language model: plain functions of a model and token ids.

Sampling (char-rnn style), one token at a time, batch 1:

    context ids (start token + prime) -> model -> logits of the next token [V]
    repeat `length` times:
        logits / temperature -> keep the top_k largest -> softmax -> draw with `generator`
        -> yield the id -> feed it back (state carried)

Temperature 0 takes the argmax (greedy decoding, no randomness); the same generator seed gives
the same tokens. Scoring is the evaluator's batch-1 stream (evaluate.stream_perplexity): token
0 is context only, every later token is predicted from all before it, so the summed NLL of a
file equals `lstmkit evaluate --stream` on it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lstmkit.device import autocast
from lstmkit.errors import UserError
from lstmkit.fields import SEED_LIMIT
from lstmkit.lm.evaluate import STREAM_NUM_STEPS
from lstmkit.vocab import EOS


def check_sampling(length: int, temperature: float, top_k: int | None) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise UserError(f"sample length must be an integer >= 0, got {length!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise UserError(f"top-k must be an integer >= 1, got {top_k!r}")


def make_generator(seed: int | None) -> torch.Generator:
    """A CPU generator: seeded for repeatable samples, or from fresh entropy when seed is None."""
    generator = torch.Generator()
    if seed is None:
        generator.seed()
        return generator
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < SEED_LIMIT:
        raise UserError(f"seed must be an integer in [0, 2**63), got {seed!r}")
    return generator.manual_seed(seed)


def choose_next(logits: torch.Tensor, temperature: float, top_k: int | None,
                generator: torch.Generator) -> int:
    """Pick the next id from `logits` [V] (on the CPU, float)."""
    if temperature == 0:
        return int(torch.argmax(logits))
    scaled = logits.double() / temperature  # double: logits / 1e-30 is still finite
    if top_k is not None and top_k < scaled.numel():
        # Exactly k survive, even when logits tie at the k-th value.
        kept = torch.topk(scaled, top_k).indices
        mask = torch.full_like(scaled, -math.inf)
        scaled = mask.scatter(0, kept, scaled[kept])
    probs = torch.softmax(scaled, dim=0)
    return int(torch.multinomial(probs, 1, generator=generator))


class Detokenizer:
    """Token strings -> text: characters as they are; words spaced, <eos> as a line break."""

    def __init__(self, level: str) -> None:
        self.level = level
        self.line_start = True

    def text_of(self, token: str) -> str:
        if self.level == "char":
            return token
        if token == EOS:
            self.line_start = True
            return "\n"
        text = token if self.line_start else " " + token
        self.line_start = False
        return text


@torch.no_grad()
def sample_ids(model, context: Sequence[int], length: int, temperature: float = 1.0,
               top_k: int | None = None, generator: torch.Generator | None = None
               ) -> Iterator[int]:
    """Yield `length` ids drawn after `context` (at least one id), as they are drawn."""
    check_sampling(length, temperature, top_k)
    if not context:
        raise ValueError("sampling needs at least one context id")
    generator = generator if generator is not None else make_generator(None)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        state = model.zero_state(1)
        ids = torch.as_tensor(list(context), dtype=torch.long, device=device).view(1, -1)
        logits, state = model(ids, state)  # [1, T, V]
        for _ in range(length):
            next_id = choose_next(logits[0, -1].float().cpu(), temperature, top_k, generator)
            yield next_id
            logits, state = model(torch.tensor([[next_id]], device=device), state)
    finally:
        model.train(was_training)


@torch.no_grad()
def token_nlls(model, ids: torch.Tensor, precision: str = "fp32") -> torch.Tensor:
    """[N - 1] NLL (nats) of ids[1:], each given every earlier id (one stream, batch 1)."""
    if ids.numel() < 2:
        raise UserError(f"{ids.numel()} token(s) are too few to score: the first is context "
                        f"only, so at least 2 are needed")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    ids = ids.to(device).view(1, -1)
    state = model.zero_state(1)
    out = []
    try:
        for lo in range(0, ids.size(1) - 1, STREAM_NUM_STEPS):
            x = ids[:, lo:lo + STREAM_NUM_STEPS]
            y = ids[:, lo + 1:lo + STREAM_NUM_STEPS + 1]
            x = x[:, :y.size(1)]
            with autocast(precision, device):
                logits, state = model(x, state)  # [1, T, V]
            logp = F.log_softmax(logits[0].float(), dim=-1)
            out.append(-logp.gather(1, y[0].unsqueeze(1)).squeeze(1))
    finally:
        model.train(was_training)
    return torch.cat(out).cpu()


@dataclass(frozen=True)
class Score:
    """Log-probability of some tokens: `nll` nats summed over `tokens` predicted tokens."""
    nll: float
    tokens: int

    @property
    def logprob_nats(self) -> float:
        return -self.nll

    @property
    def logprob_bits(self) -> float:
        return -self.nll / math.log(2)

    @property
    def perplexity(self) -> float | None:
        return math.exp(self.nll / self.tokens) if self.tokens else None

    @property
    def bits_per_token(self) -> float | None:
        return self.nll / self.tokens / math.log(2) if self.tokens else None

    def to_dict(self) -> dict[str, Any]:
        return {"tokens": self.tokens, "logprob_nats": self.logprob_nats,
                "logprob_bits": self.logprob_bits, "perplexity": self.perplexity,
                "bits_per_token": self.bits_per_token}


@dataclass(frozen=True)
class TextScore(Score):
    """The whole text's score and, if asked for, each line's share of it (they add up)."""
    lines: tuple[Score, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.lines is not None:
            out["lines"] = [{"line": i, **line.to_dict()}
                            for i, line in enumerate(self.lines, start=1)]
        return out


def score_ids(model, ids: torch.Tensor, line_lengths: Sequence[int] | None = None,
              precision: str = "fp32") -> TextScore:
    """Score the stream `ids`; with `line_lengths` (tokens per line) also each line.

    A line's score is the NLL of its tokens given everything before them (state carried from
    the previous lines), so line scores sum to the total; the stream's first token is
    context only and counts for no line.
    """
    nlls = token_nlls(model, ids, precision).double().numpy()
    total = Score(float(nlls.sum()), int(nlls.size))
    if line_lengths is None:
        return TextScore(total.nll, total.tokens)
    if sum(line_lengths) != ids.numel():
        raise ValueError("line_lengths must add up to the number of ids")
    line_of_target = np.repeat(np.arange(len(line_lengths)), line_lengths)[1:]
    sums = np.bincount(line_of_target, weights=nlls, minlength=len(line_lengths))
    counts = np.bincount(line_of_target, minlength=len(line_lengths))
    lines = tuple(Score(float(n), int(c)) for n, c in zip(sums, counts, strict=True))
    return TextScore(total.nll, total.tokens, lines)
