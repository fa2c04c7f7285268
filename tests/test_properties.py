"""Property-based round trips (hypothesis): vocabulary, tokenising, the 90/5/5 split, batching.

Derandomized with no example database, so every run tries the same examples: CI cannot flake,
and nothing is written into the working tree.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from lstmkit.errors import UserError
from lstmkit.lm.batching import batch_rows, bptt_windows, epoch_size
from lstmkit.lm.data import encode, split_contiguous, tokenize
from lstmkit.lm.generate import Detokenizer
from lstmkit.vocab import EOS, UNK, Vocab

SETTINGS = settings(max_examples=60, derandomize=True, database=None, deadline=None)

tokens = st.lists(st.text(max_size=6), min_size=1, max_size=40)
# A word: no whitespace of any kind (str.split() splits on all Unicode spaces), never <eos>.
words = st.text(st.characters(blacklist_categories=("Zs", "Zl", "Zp", "Cc", "Cs")),
                min_size=1, max_size=5).filter(lambda w: w.split() == [w] and w != EOS)


@SETTINGS
@given(tokens)
def test_vocab_decode_inverts_encode(stream):
    vocab = Vocab.from_counts(Counter(stream), unk=None)
    assert vocab.decode(encode(vocab, [stream], "text", "word")) == stream


@SETTINGS
@given(tokens)
def test_vocab_is_ordered_by_count_then_token(stream):
    counts = Counter(stream)
    keys = [(-counts[t], t) for t in Vocab.from_counts(counts, unk=None).tokens]
    assert keys == sorted(keys) and len(keys) == len(counts)


@SETTINGS
@given(tokens, st.integers(min_value=2, max_value=10))
def test_capped_vocab_keeps_the_frequent_tokens_and_maps_the_rest_to_unk(stream, cap):
    vocab = Vocab.from_counts(Counter(stream), max_size=cap)
    assert len(vocab) <= max(cap, len(set(stream)))
    decoded = vocab.decode(encode(vocab, [stream], "text", "word"))
    assert decoded == [t if t in vocab else UNK for t in stream]
    if len(set(stream) - {UNK}) > cap:
        assert len(vocab) == cap and vocab.unk == UNK


@SETTINGS
@given(tokens)
def test_vocab_survives_the_json_of_a_checkpoint(stream):
    vocab = Vocab.from_counts(Counter(stream), max_size=5)
    again = Vocab.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert again == vocab and again.index == vocab.index


@SETTINGS
@given(st.text(max_size=80))
def test_char_tokens_join_back_to_the_text(text):
    assert "".join(t for line in tokenize(text, "char") for t in line) == text


@SETTINGS
@given(st.lists(st.lists(words, max_size=6), min_size=1, max_size=8))
def test_word_text_survives_tokenise_encode_decode_detokenise(lines):
    text = "".join(" ".join(line) + "\n" for line in lines)
    stream = [t for line in tokenize(text, "word") for t in line]
    vocab = Vocab.from_counts(Counter(stream), unk=None)
    pieces = Detokenizer("word")
    decoded = vocab.decode(encode(vocab, [stream], "text", "word"))
    assert "".join(pieces.text_of(t) for t in decoded) == text


texts = st.lists(st.text("ab c\t\u00e9", max_size=10), min_size=20, max_size=60).map("\n".join)


@SETTINGS
@given(texts, st.sampled_from(["char", "word"]))
def test_the_90_5_5_split_loses_and_reorders_nothing(text, level):
    lines = tokenize(text, level)
    try:
        parts = split_contiguous(lines, "text", level)
    except UserError:
        assume(False)  # too short to split: refused with a message, tested elsewhere
    whole = [t for line in lines for t in line]
    assert [t for part in parts for line in part.lines for t in line] == whole
    assert all(sum(map(len, part.lines)) >= 2 for part in parts)


shapes = st.tuples(st.integers(1, 8), st.integers(1, 10), st.integers(0, 120)).filter(
    lambda s: s[2] // s[0] >= 2)  # (batch_size, num_steps, extra tokens); rows of >= 2 tokens


def _stream(shape):
    batch_size, _, extra = shape
    return torch.arange(2 * batch_size + extra)


@SETTINGS
@given(shapes)
def test_rows_are_the_stream_cut_into_equal_contiguous_pieces(shape):
    ids = _stream(shape)
    rows = batch_rows(ids, shape[0])
    assert torch.equal(rows.flatten(), ids[: rows.numel()])
    assert ids.numel() - rows.numel() < shape[0], "only a tail shorter than a row is dropped"


@SETTINGS
@given(shapes)
def test_windows_reassemble_the_rows_and_targets_are_inputs_shifted_by_one(shape):
    batch_size, num_steps, _ = shape
    rows = batch_rows(_stream(shape), batch_size)
    windows = list(bptt_windows(rows, num_steps, include_tail=True))
    assert torch.equal(torch.cat([x for x, _ in windows], dim=1), rows[:, :-1])
    assert torch.equal(torch.cat([y for _, y in windows], dim=1), rows[:, 1:])
    for x, y in windows:
        assert x.shape == y.shape and x.size(1) <= num_steps
        assert torch.equal(x[:, 1:], y[:, :-1])


@SETTINGS
@given(shapes, st.integers(0, 50))
def test_an_epoch_has_epoch_size_full_windows_and_start_skips_exactly(shape, start):
    batch_size, num_steps, _ = shape
    ids = _stream(shape)
    rows = batch_rows(ids, batch_size)
    full = list(bptt_windows(rows, num_steps))
    assert len(full) == epoch_size(ids.numel(), batch_size, num_steps)
    assert all(x.size(1) == num_steps for x, _ in full)
    later = list(bptt_windows(rows, num_steps, start=start))
    assert len(later) == max(len(full) - start, 0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(later, full[start:], strict=True))


def test_too_short_a_stream_is_refused_not_cut_to_nothing():
    with pytest.raises(UserError, match="too few for batch_size 4"):
        batch_rows(torch.arange(7), 4)
