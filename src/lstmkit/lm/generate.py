"""Sampling and scoring with a language model: plain functions of a model and token ids.

Sampling (char-rnn style), one token at a time, batch 1:

    context ids (start token + prime) -> model -> logits of the next token [V]
    repeat `length` times:
        logits / temperature -> keep the top_k largest -> softmax -> draw with `generator`
        -> yield the id -> feed it back (state carried)

Temperature 0 takes the argmax (greedy decoding, no randomness); the same generator seed gives
the same tokens. `top_p` (nucleus sampling) keeps the smallest set of most likely tokens whose
probability reaches p. Several samples are drawn as rows of one batch, so one seed gives the
same K texts. Beam search keeps the `beam` most likely continuations and ranks them by
log-probability per token (length-normalised), so continuations that stop early compete fairly.

Scoring is the evaluator's batch-1 stream (evaluate.stream_perplexity): token
0 is context only, every later token is predicted from all before it, so the summed NLL of a
file equals `lstmkit evaluate --stream` on it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from lstmkit.device import autocast
from lstmkit.errors import UserError
from lstmkit.fields import SEED_LIMIT
from lstmkit.lm.evaluate import STREAM_NUM_STEPS
from lstmkit.nn.kept import kept_weights_context, weights_kept
from lstmkit.vocab import EOS


def check_sampling(length: int, temperature: float, top_k: int | None,
                   top_p: float | None = None) -> None:
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise UserError(f"sample length must be an integer >= 0, got {length!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature must be a number >= 0 (0: greedy), got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int)
                              or top_k < 1):
        raise UserError(f"top-k must be an integer >= 1, got {top_k!r}")
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float))
                              or not 0 < top_p <= 1):
        raise UserError(f"top-p must be a number in (0, 1], got {top_p!r}")


def check_count(what: str, value: int) -> None:
    """`num_samples` and `beam`: how many texts to return, a whole number >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UserError(f"{what} must be an integer >= 1, got {value!r}")


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
                generator: torch.Generator, top_p: float | None = None) -> int:
    """Pick the next id from `logits` [V] (on the CPU, float)."""
    return int(choose_next_batch(logits.unsqueeze(0), temperature, top_k, generator, top_p)[0])


def choose_next_batch(logits: torch.Tensor, temperature: float, top_k: int | None,
                      generator: torch.Generator, top_p: float | None = None) -> torch.Tensor:
    """Pick one id per row of `logits` [K, V] (on the CPU, float): [K] ids."""
    if temperature == 0:
        return torch.argmax(logits, dim=1)
    # Shifted so the largest is 0 (softmax is unchanged): however small the temperature, the
    # division then gives 0 or -inf, never inf - inf (NaN); double: / 1e-30 stays finite.
    logits = logits.double()
    scaled = (logits - logits.max(dim=1, keepdim=True).values) / temperature
    if top_k is not None and top_k < scaled.size(1):
        # Exactly k survive, even when logits tie at the k-th value.
        kept = torch.topk(scaled, top_k, dim=1).indices
        mask = torch.full_like(scaled, -math.inf)
        scaled = mask.scatter(1, kept, scaled.gather(1, kept))
    probs = torch.softmax(scaled, dim=1)
    if top_p is not None and top_p < 1:
        probs = probs * nucleus_mask(probs, top_p)  # draw_rows renormalises
    return draw_rows(probs, generator)


def draw_rows(weights: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One column per row of `weights` [K, V] (>= 0, each row with some weight), drawn with
    probability weight / row sum: [K]. By the inverse of the running sum, one uniform number a
    row (torch.multinomial draws an exponential for every column)."""
    u = torch.rand(weights.size(0), 1, dtype=torch.float64, generator=generator)
    return inverse_cdf(weights.double(), u)


def inverse_cdf(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Per row the first column whose running sum exceeds u x the row's sum (u [K, 1] in
    [0, 1)): a column of weight 0 adds nothing to the sum, so it is never the first."""
    cdf = weights.cumsum(dim=1)
    total = cdf[:, -1:]
    if not bool((torch.isfinite(total) & (total > 0)).all()):
        raise UserError("the model's next-token probabilities are not numbers (NaN or "
                        "infinite logits: are its weights finite?)")
    # u x total can round up to total itself: stay below it, so some column still exceeds it.
    target = torch.minimum(u * total, torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def nucleus_mask(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """[..., V] bool: the smallest set of most likely tokens whose probability reaches `top_p`.

    A token is kept when the mass of the tokens more likely than it is still short of p, so
    the token that crosses p is in and the most likely token always is.
    """
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_probs, dim=-1) - sorted_probs
    keep_sorted = mass_before < top_p
    return torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)


STOP_NAMES = ("eos", "newline")


def stop_text(stop_at: str | None, level: str) -> str | None:
    """The text that ends a sample: `newline` a line break; `eos` the end of a sentence (<eos>,
    written as a line break, for word models; an empty line, the end of a speech or paragraph,
    for char models); anything else is that string itself."""
    if stop_at is None:
        return None
    if not isinstance(stop_at, str) or not stop_at:
        raise UserError(f"stop-at must be eos, newline or a non-empty string, got {stop_at!r}")
    if stop_at == "newline":
        return "\n"
    if stop_at == "eos":
        return "\n" if level == "word" else "\n\n"
    return stop_at


class StopWatch:
    """Follows one sample's text and says when it has just come to contain the stop text."""

    def __init__(self, stop: str | None) -> None:
        self.stop = stop
        self.text = ""

    def add(self, piece: str) -> bool:
        """Take the next piece; True when the text now holds the stop (the piece completes it)."""
        if self.stop is None:
            return False
        # Only the new piece and the few characters before it can complete the stop.
        tail = self.text[max(0, len(self.text) - len(self.stop) + 1):] if len(self.stop) > 1 \
            else ""
        self.text += piece
        return self.stop in tail + piece


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


def sample_ids(model, context: Sequence[int], length: int, temperature: float = 1.0,
               top_k: int | None = None, generator: torch.Generator | None = None,
               top_p: float | None = None, precision: str = "fp32") -> Iterator[int]:
    """Yield `length` ids drawn after `context` (at least one id), as they are drawn."""
    for ids in sample_batch_ids(model, context, length, 1, temperature, top_k, generator, top_p,
                                precision):
        yield int(ids[0])


@torch.no_grad()
def sample_batch_ids(model, context: Sequence[int], length: int, num_samples: int,
                     temperature: float = 1.0, top_k: int | None = None,
                     generator: torch.Generator | None = None, top_p: float | None = None,
                     precision: str = "fp32") -> Iterator[torch.Tensor]:
    """Yield `length` steps of [num_samples] ids, each row an independent sample after
    `context`; the rows share one forward pass per step, in `precision`.

    The steps share one kept block (nn/kept.py) for as long as the generator is open, so the
    weights are cast and packed once per sample, not once per token: they must stay as they
    are until it closes (a load or an in-place change is seen; a fused optimizer's step or a
    change through `.data` is not). Autocast and the block are entered per step: the caller's
    code between tokens runs as it would without them."""
    check_sampling(length, temperature, top_k, top_p)
    check_count("num_samples", num_samples)
    if not context:
        raise ValueError("sampling needs at least one context id")
    generator = generator if generator is not None else make_generator(None)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    held = kept_weights_context()
    try:
        logits, state = held.run(_read_context, model, context, device, precision)
        logits = logits.expand(num_samples, -1)
        state = tuple(s.expand(-1, num_samples, -1).contiguous() for s in state)
        for _ in range(length):
            next_ids = choose_next_batch(logits.float().cpu(), temperature, top_k, generator,
                                         top_p)
            yield next_ids
            logits, state = held.run(_next_logits, model, next_ids.to(device), state,
                                     precision)
    finally:
        model.train(was_training)


def _next_logits(model, ids: torch.Tensor, state: tuple[torch.Tensor, ...], precision: str
                 ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Logits [K, V] after one more token per row (`ids` [K]) and the state after it."""
    with autocast(precision, ids.device):
        out, state = model(ids.view(-1, 1), state)
    return out[:, -1], state


def _read_context(model, context: Sequence[int], device: torch.device, precision: str = "fp32"
                  ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Logits of the token after `context` [1, V] and the state after it (only the last
    step goes through the output layer: a long prime's other logits would cost T x V)."""
    ids = torch.as_tensor(list(context), dtype=torch.long, device=device).view(1, -1)
    with autocast(precision, device):
        outputs, state = model.hidden(ids, model.zero_state(1))
        return model.logits(outputs[:, -1]), state


@dataclass(frozen=True)
class Hypothesis:
    """A beam-search continuation: its ids and their summed log-probability (nats)."""
    ids: tuple[int, ...]
    logprob: float

    @property
    def score(self) -> float:
        """Log-probability per token: the length-normalised rank of a hypothesis."""
        return self.logprob / len(self.ids) if self.ids else 0.0


@torch.no_grad()
@weights_kept()  # `finished` only reads the text
def beam_search(model, context: Sequence[int], length: int, beam: int,
                finished: Callable[[tuple[int, ...]], bool] | None = None,
                precision: str = "fp32") -> list[Hypothesis]:
    """The `beam` best continuations of `context`, at most `length` tokens, best first.

    Each step extends the live hypotheses by every token and keeps the `beam` most likely.
    One that `finished` accepts (it reached a stop) leaves the beam; at the end, the finished
    and the live are ranked together by log-probability per token. With beam 1 and no stop
    this is greedy decoding. The model runs in `precision`.
    """
    check_sampling(length, 0.0, None)
    check_count("beam", beam)
    if not context:
        raise ValueError("beam search needs at least one context id")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        logits, state = _read_context(model, context, device, precision)
        live = [Hypothesis((), 0.0)]
        done: list[Hypothesis] = []
        for _ in range(length):
            live, rows = _extend_beam(live, logits, beam, finished, done)
            if not live:
                break
            picked = torch.as_tensor(rows, dtype=torch.long, device=device)
            state = tuple(s.index_select(1, picked) for s in state)
            last = torch.tensor([h.ids[-1] for h in live], dtype=torch.long, device=device)
            logits, state = _next_logits(model, last, state, precision)
    finally:
        model.train(was_training)
    return sorted(done + live, key=lambda h: h.score, reverse=True)[:beam]


def _extend_beam(live: list[Hypothesis], logits: torch.Tensor, beam: int,
                 finished: Callable[[tuple[int, ...]], bool] | None, done: list[Hypothesis]
                 ) -> tuple[list[Hypothesis], list[int]]:
    """The next live hypotheses and, for each, the row of `live` it extends; those that
    finish go to `done`. 2 x beam candidates are looked at so finishing ones do not leave
    the beam short."""
    logp = F.log_softmax(logits.double().cpu(), dim=1)  # [len(live), V]
    totals = torch.tensor([h.logprob for h in live], dtype=torch.float64).unsqueeze(1) + logp
    count = min(2 * beam, totals.numel())
    best = torch.topk(totals.view(-1), count)
    vocab_size = logp.size(1)
    next_live: list[Hypothesis] = []
    rows: list[int] = []
    for total, flat in zip(best.values.tolist(), best.indices.tolist(), strict=True):
        row, token = divmod(flat, vocab_size)
        hypothesis = Hypothesis((*live[row].ids, token), total)
        if finished is not None and finished(hypothesis.ids):
            done.append(hypothesis)
        elif len(next_live) < beam:
            next_live.append(hypothesis)
            rows.append(row)
        if len(next_live) == beam:
            break
    return next_live, rows


@torch.no_grad()
@weights_kept()
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
class LogLikelihood:
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
class TextScore(LogLikelihood):
    """The whole text's score and, if asked for, each line's share of it (they add up)."""
    lines: tuple[LogLikelihood, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.lines is not None:
            out["lines"] = [{"line": i, **line.to_dict()}
                            for i, line in enumerate(self.lines, start=1)]
        return out


def score_ids(model, ids: torch.Tensor, line_lengths: Sequence[int] | None = None,
              precision: str = "fp32") -> TextScore:
    """LogLikelihood the stream `ids`; with `line_lengths` (tokens per line) also each line.

    A line's score is the NLL of its tokens given everything before them (state carried from
    the previous lines), so line scores sum to the total; the stream's first token is
    context only and counts for no line.
    """
    nlls = token_nlls(model, ids, precision).double().numpy()
    total = LogLikelihood(float(nlls.sum()), int(nlls.size))
    if line_lengths is None:
        return TextScore(total.nll, total.tokens)
    if sum(line_lengths) != ids.numel():
        raise ValueError("line_lengths must add up to the number of ids")
    line_of_target = np.repeat(np.arange(len(line_lengths)), line_lengths)[1:]
    sums = np.bincount(line_of_target, weights=nlls, minlength=len(line_lengths))
    counts = np.bincount(line_of_target, minlength=len(line_lengths))
    lines = tuple(LogLikelihood(float(n), int(c)) for n, c in zip(sums, counts, strict=True))
    return TextScore(total.nll, total.tokens, lines)
