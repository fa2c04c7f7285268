from collections import Counter

import pytest

from lstmkit.errors import UserError
from lstmkit.lm.data import encode
from lstmkit.vocab import Vocab


def test_order_is_count_descending_then_token_ascending():
    vocab = Vocab.from_counts(Counter({"b": 2, "a": 2, "c": 5, "<unk>": 1, "d": 1}))
    assert vocab.tokens == ("c", "a", "b", "<unk>", "d")
    assert vocab.unk == "<unk>"


def test_unknown_word_maps_to_unk_when_present():
    vocab = Vocab.from_counts(Counter(["x", "<unk>"]))
    assert list(encode(vocab, [["x", "never-seen"]], "f.txt", "word")) == [
        vocab.index["x"], vocab.index["<unk>"]]


def test_unknown_word_without_unk_names_file_and_line():
    vocab = Vocab.from_counts(Counter(["x", "y"]))
    assert vocab.unk is None
    with pytest.raises(UserError, match=r"^f\.txt:2: unknown word 'zz' \(the model's vocab"):
        encode(vocab, [["x"], ["y", "zz"]], "f.txt", "word")


def test_size_cap_keeps_most_frequent_and_adds_unk():
    vocab = Vocab.from_counts(Counter({"a": 5, "b": 4, "c": 3, "d": 2}), max_size=3)
    assert vocab.tokens == ("a", "b", "<unk>")
    assert vocab.decode(encode(vocab, [["a", "d"]], "f.txt", "word")) == ["a", "<unk>"]


def test_round_trip_through_dict():
    vocab = Vocab.from_counts(Counter("hello world"), unk=None)
    again = Vocab.from_dict(vocab.to_dict())
    assert again == vocab and again.index == vocab.index
