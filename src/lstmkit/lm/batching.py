r"""Cutting a token stream into batch rows and BPTT windows (the tutorial's "producer").

With batch_size B = 3 and num_steps T = 4, the stream 0 1 2 ... 29 becomes B rows of
batch_len = 30 // 3 = 10 tokens (the tail that does not fill a row is dropped):

    row 0:  0  1  2  3 |  4  5  6  7 |  8  9
    row 1: 10 11 12 13 | 14 15 16 17 | 18 19
    row 2: 20 21 22 23 | 24 25 26 27 | 28 29
           \ window 0 / \ window 1 /

epoch_size = (batch_len - 1) // T = 2 windows. Window i has inputs x = rows[:, i*T:(i+1)*T]
and targets y = rows[:, i*T+1:(i+1)*T+1]. Row b of window i+1 continues row b of window i,
so the recurrent state is carried from one window to the next (and detached: truncated BPTT).
Evaluation may also take the short tail window (here inputs 8, targets 9) so no target is lost.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch

from lstmkit.errors import UserError


def batch_rows(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """[N] stream -> [batch_size, N // batch_size] rows, row b holding a contiguous slice."""
    batch_len = ids.numel() // batch_size
    if batch_len < 2:
        raise UserError(
            f"{ids.numel()} tokens are too few for batch_size {batch_size} (need 2 per row)")
    return ids[: batch_size * batch_len].view(batch_size, batch_len)


def epoch_size(num_tokens: int, batch_size: int, num_steps: int) -> int:
    return (num_tokens // batch_size - 1) // num_steps


def bptt_windows(rows: torch.Tensor, num_steps: int, start: int = 0,
                 include_tail: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (x, y) windows of `rows` from window index `start`: y is x shifted by one token."""
    batch_len = rows.size(1)
    full = (batch_len - 1) // num_steps
    for i in range(start, full):
        lo = i * num_steps
        yield rows[:, lo:lo + num_steps], rows[:, lo + 1:lo + num_steps + 1]
    tail = full * num_steps
    if include_tail and tail < batch_len - 1:
        yield rows[:, tail:batch_len - 1], rows[:, tail + 1:batch_len]


# AWD-LSTM's random window lengths (Merity et al. 2017, section 4.1).
HALF_WINDOW_PROBABILITY = 0.05
LENGTH_SD = 5.0
MIN_LENGTH = 5
MAX_EXTRA = 20  # at most num_steps + 20: a rare long draw would cost memory and time


def random_window_lengths(num_steps: int, batch_len: int, seed: int, epoch: int) -> list[int]:
    """One epoch's window lengths: each drawn around num_steps (num_steps / 2 with probability
    0.05), standard deviation 5, in [5, num_steps + 20], the last cut to what is left.

    A function of (seed, epoch) alone, so a resumed run finds its place by replaying them."""
    rng = random.Random(f"lstmkit-bptt:{seed}:{epoch}")
    lengths, position, end = [], 0, batch_len - 1
    while position < end:
        mean = num_steps / 2 if rng.random() < HALF_WINDOW_PROBABILITY else num_steps
        length = min(max(MIN_LENGTH, int(rng.gauss(mean, LENGTH_SD))), num_steps + MAX_EXTRA)
        length = min(length, end - position)
        lengths.append(length)
        position += length
    return lengths


def windows_of_lengths(rows: torch.Tensor, lengths: list[int], start: int = 0
                       ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Consecutive (x, y) windows of `rows` with the given lengths, from window `start`."""
    lo = sum(lengths[:start])
    for length in lengths[start:]:
        yield rows[:, lo:lo + length], rows[:, lo + 1:lo + length + 1]
        lo += length
