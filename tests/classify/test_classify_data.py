"""Classifier data: the three formats, Latin-1 fallback, the seeded split, tokens and vocabulary."""

from __future__ import annotations

import pytest
import torch

from classify_corpus import sentences, write_aligned, write_per_class, write_table
from conftest import shared_data
from lstmkit.classify.data import (
    PAD,
    build_vocab,
    encode_texts,
    make_splits,
    pad_batch,
    read_labelled,
    split_indices,
    tokenize,
)
from lstmkit.classify.vectors import load_word_vectors
from lstmkit.errors import UserError
from lstmkit.vocab import UNK


def expected(count=60, seed=0):
    data = sentences(count, seed)
    return [t.strip() for t, _ in data], [lab for _, lab in data]


@pytest.mark.parametrize("layout", ["per_class", "tsv", "csv", "aligned"])
def test_every_format_reads_the_same_texts_and_labels(tmp_path, layout):
    path = {"per_class": lambda: write_per_class(tmp_path / "mr"),
            "tsv": lambda: write_table(tmp_path / "d.tsv"),
            "csv": lambda: write_table(tmp_path / "d.csv", delimiter=","),
            "aligned": lambda: write_aligned(tmp_path / "al")}[layout]()
    data = read_labelled(path)
    texts, labels = expected()
    assert list(data.texts) == texts
    assert list(data.labels) == labels
    assert data.notes == ()


def test_csv_quoted_text_with_commas_and_columns_chosen_by_name(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('stars,review,sentiment\n5,"good, even great",pos\n1,"bad ""really""",NEG\n',
                    encoding="utf-8")
    data = read_labelled(path, text_column="review", label_column="sentiment")
    assert data.texts == ("good, even great", 'bad "really"')
    assert data.labels == (1, 0)


def test_a_csv_saved_with_a_byte_order_mark_finds_its_first_column(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_text("text,label\ngood fun,1\ndull,0\n", encoding="utf-8-sig")
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    data = read_labelled(path)
    assert data.texts == ("good fun", "dull") and data.labels == (1, 0) and data.notes == ()


def test_aligned_labels_accept_one_and_zero(tmp_path):
    (tmp_path / "reviews.txt").write_text("fine\nbad\n", encoding="utf-8")
    (tmp_path / "labels.txt").write_text("1\r\n0\r\n", encoding="utf-8")
    assert read_labelled(tmp_path).labels == (1, 0)


def test_latin1_file_is_read_and_the_fallback_reported(tmp_path):
    (tmp_path / "x.pos").write_bytes("a café\nnaïve charm\n".encode("latin-1"))
    (tmp_path / "x.neg").write_text("dull\n", encoding="utf-8")
    data = read_labelled(tmp_path)
    assert data.texts == ("a café", "naïve charm", "dull")
    assert data.notes == (f"{tmp_path / 'x.pos'}:1: not valid UTF-8, read the whole file as "
                          f"Latin-1",)


@pytest.mark.parametrize("files, message", [
    ({"a.pos": "", "a.neg": "x\n"}, r"^{d}/a\.pos: file is empty$"),
    ({"a.pos": "ok\n\nfine\n", "a.neg": "x\n"},
     r"^{d}/a\.pos:2: empty line \(every line must hold one text\)$"),
    ({"reviews.txt": "a\nb\nc\n", "labels.txt": "1\n0\nmaybe\n"},
     r"^{d}/labels\.txt:3: label 'maybe' is neither positive \(1, positive, pos\) nor "
     r"negative \(0, negative, neg\)$"),
    ({"reviews.txt": "a\nb\nc\n", "labels.txt": "1\n0\n"},
     r"^{d}/reviews\.txt:3: has no matching line in {d}/labels\.txt \(3 reviews but 2 "
     r"labels\)$"),
    ({"reviews.txt": "a\n", "labels.txt": "1\n0\n"},
     r"^{d}/labels\.txt:2: has no matching line in {d}/reviews\.txt \(1 reviews but 2 "
     r"labels\)$"),
    ({"t.tsv": "review\tlabel\nnice\t1\n"},
     r"^{d}/t\.tsv:1: no column 'text' in the header \(columns: review, label\)$"),
    ({"t.tsv": "text\tlabel\nnice\t1\nbad\n"},
     r"^{d}/t\.tsv:3: 1 field\(s\) but the header has 2$"),
    ({"t.csv": "text,label\nnice,1\nbad,-1\n"}, r"^{d}/t\.csv:3: label '-1' is neither positive"),
    ({"t.csv": ""}, r"^{d}/t\.csv: file is empty$"),
    ({"t.csv": "text,label\n"}, r"^{d}/t\.csv: has a header but no rows$"),
    ({"notes.md": "x"}, r"^{d}/notes\.md: cannot tell the data format"),
    ({}, r"^{d}: no data found \(expected rt-polarity\.pos \+ rt-polarity\.neg"),
])
def test_bad_input_is_one_line_naming_file_and_line(tmp_path, files, message):
    for name, content in files.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
    tables = [tmp_path / name for name in files if name.endswith((".tsv", ".csv", ".md"))]
    with pytest.raises(UserError, match=message.format(d=tmp_path)) as err:
        read_labelled(tables[0] if tables else tmp_path)
    assert "\n" not in str(err.value)


def test_split_is_determined_by_the_seed_and_stratified():
    labels = [1] * 500 + [0] * 300
    first = split_indices(labels, 0.1, 0.1, seed=3)
    assert first == split_indices(labels, 0.1, 0.1, seed=3)
    assert first != split_indices(labels, 0.1, 0.1, seed=4)
    train, valid, test = first
    assert (len(train), len(valid), len(test)) == (640, 80, 80)
    assert sorted(train + valid + test) == list(range(800))
    assert sum(labels[i] for i in test) == 50  # 10% of each class


def test_explicit_valid_and_test_data_are_used_as_given(tmp_path):
    pool = read_labelled(write_table(tmp_path / "train.tsv", count=40))
    valid = read_labelled(write_table(tmp_path / "valid.tsv", count=5, seed=1))
    test = read_labelled(write_table(tmp_path / "test.tsv", count=6, seed=2))
    splits = make_splits(pool, valid, test, 0.1, 0.1, seed=0)
    assert (splits.train, splits.valid, splits.test) == (pool, valid, test)
    only_test = make_splits(pool, None, test, 0.1, 0.1, seed=0)
    assert (len(only_test.train), len(only_test.valid), only_test.test) == (72, 8, test)
    assert only_test.how.startswith("seeded 90/10 train/valid split of 80 texts (seed 0)")


def test_tokenizer_lowercases_and_splits_punctuation_and_clitics():
    assert tokenize("It doesn't WORK, the film's end!") == [
        "it", "does", "n't", "work", ",", "the", "film", "'s", "end", "!"]
    assert tokenize("Keep Case", lowercase=False) == ["Keep", "Case"]


def test_vocabulary_has_pad_and_unk_first_then_counts_above_min_count():
    vocab = build_vocab([["b", "a", "b", "c"], ["a", "b", "d"]], min_count=2)
    assert vocab.tokens == (PAD, UNK, "b", "a")
    assert build_vocab([["b", "a", "b", "c"]], max_size=3).tokens == (PAD, UNK, "b")
    ids = encode_texts(vocab, [["a", "zzz", "b"], []], max_length=2)
    assert [t.tolist() for t in ids] == [[3, 1], [1]]


def test_pad_batch_fills_the_end_with_pad_and_reports_lengths():
    ids, lengths = pad_batch([torch.tensor([5, 6, 7]), torch.tensor([8])])
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]]
    assert lengths.tolist() == [3, 1]


def test_glove_and_word2vec_text_files_fill_vocabulary_rows(tmp_path):
    vocab = build_vocab([["good", "bad", "film"]])
    glove = tmp_path / "glove.txt"
    glove.write_text("good 1 2 3\nunrelated 9 9 9\nBad 4 5 6\n. . . 1 1 1\nbad 7 8 9\n",
                     encoding="utf-8")  # ". . .": a word with spaces, as GloVe 840B has
    word2vec = tmp_path / "w2v.txt"
    word2vec.write_text("2 3\nGood 1 2 3\nbad 7 8 9\n", encoding="utf-8")
    for path in (glove, word2vec):
        init = torch.full((len(vocab), 3), -1.0)
        loaded = load_word_vectors(path, vocab, init=init, skip=(PAD,))
        assert loaded.found == 2 and loaded.dimension == 3
        assert loaded.weights[vocab.index["good"]].tolist() == [1, 2, 3]
        assert loaded.weights[vocab.index["bad"]].tolist() == [7, 8, 9]  # exact beats "Bad"
        assert loaded.weights[vocab.index["film"]].tolist() == [-1, -1, -1]
    bad = tmp_path / "bad.txt"
    bad.write_text("good 1 2 3\nbad 4 5\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.txt:2: 2 numbers after the word, expected 3$"):
        load_word_vectors(bad, vocab)
    bad.write_text("good 1 2 3\nbad 4 5 6 7\n", encoding="utf-8")  # a number too many
    with pytest.raises(UserError, match=r"bad\.txt:2: 4 numbers after the word, expected 3$"):
        load_word_vectors(bad, vocab)
    bad.write_text("good 1 2 3\nbad 4 nan 6\nfilm inf 0 0\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"bad\.txt:2: the vector of 'bad' holds nan or inf$"):
        load_word_vectors(bad, vocab)


def test_movie_review_data_has_5331_texts_per_class_and_a_stable_split():
    data = read_labelled(shared_data("mr"))
    assert data.labels.count(1) == 5331 and data.labels.count(0) == 5331
    splits = make_splits(data, None, None, 0.1, 0.1, seed=1)
    assert (len(splits.train), len(splits.valid), len(splits.test)) == (8530, 1066, 1066)
    again = make_splits(read_labelled(shared_data("mr")), None, None, 0.1, 0.1, seed=1)
    assert again.test.texts == splits.test.texts
