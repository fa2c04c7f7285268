"""Plain-text corpora: tokenising at word and char level, the contiguous 90/5/5 split, the
vocabulary (with its size cap), and training from text files through the command line."""

import json
import re
from collections import Counter

import pytest
import torch

from conftest import progress_lines, resumed_at, shared_data, write_plain_text
from lstmkit.cli import main
from lstmkit.errors import UserError
from lstmkit.lm.data import build_vocab, load_text_corpus, tokenize
from lstmkit.lm.runs import load_lm
from lstmkit.vocab import EOS, UNK


def test_char_tokens_keep_every_character_and_newline_is_a_token():
    assert tokenize("ab\n\nc", "char") == [["a", "b", "\n"], ["\n"], ["c"]]
    assert tokenize("ab\n", "char") == [["a", "b", "\n"]]  # the final newline ends line 1
    assert "".join(t for line in tokenize("x y\tz\n é\n", "char") for t in line) == "x y\tz\n é\n"


def test_word_tokens_are_whitespace_split_with_eos_per_line_as_ptb():
    assert tokenize(" the cat \n\nsat", "word") == [["the", "cat", EOS], [EOS], ["sat", EOS]]
    assert tokenize("a b\n", "word") == [["a", "b", EOS]]


def test_char_vocabulary_is_the_training_characters_by_count_then_character():
    vocab = build_vocab(tokenize("abba\ncab\n", "char"))
    assert vocab.tokens == ("a", "b", "\n", "c") and vocab.unk is None


def test_one_file_is_split_contiguously_90_5_5_at_char_level(text_file):
    text = text_file.read_text(encoding="utf-8")
    corpus = load_text_corpus("char", data_file=text_file)
    sizes = [corpus.train.numel(), corpus.valid.numel(), corpus.test.numel()]
    assert sum(sizes) == len(text)
    assert sizes == pytest.approx([0.9 * len(text), 0.05 * len(text), 0.05 * len(text)], abs=1)
    stream = torch.cat([corpus.train, corpus.valid, corpus.test])
    assert "".join(corpus.vocab.decode(stream)) == text, "in order, nothing lost or shuffled"
    assert set(corpus.vocab.tokens) == set(text[: corpus.train.numel()])
    assert load_text_corpus("char", data_file=text_file).vocab == corpus.vocab  # deterministic


def test_word_level_split_falls_on_line_boundaries(text_file):
    corpus = load_text_corpus("word", data_file=text_file)
    eos = corpus.vocab.index[EOS]
    for split in (corpus.train, corpus.valid, corpus.test):
        assert split[-1] == eos, "each split is whole lines"
    total = corpus.train.numel() + corpus.valid.numel() + corpus.test.numel()
    assert total == sum(len(line) for line in tokenize(text_file.read_text(), "word"))
    assert abs(corpus.train.numel() / total - 0.9) < 0.02


def test_vocab_size_cap_maps_the_rarest_words_to_unk(tmp_path):
    train = tmp_path / "train.txt"
    train.write_text("a a a b b c\nd a b\n")  # counts: a 4, b 3, <eos> 2, c 1, d 1
    other = tmp_path / "other.txt"
    other.write_text("c d zebra a\n")
    corpus = load_text_corpus("word", train_file=train, valid_file=other, test_file=other,
                              vocab_size=4)
    assert corpus.vocab.tokens == ("a", "b", EOS, UNK) and corpus.vocab.unk == UNK
    unk = corpus.vocab.index[UNK]
    assert corpus.train.tolist().count(unk) == 2  # c and d
    assert corpus.valid.tolist() == [unk, unk, unk, 0, corpus.vocab.index[EOS]]


def test_unknown_character_in_a_held_out_file_names_file_line_and_character(tmp_path):
    train, valid = tmp_path / "train.txt", tmp_path / "valid.txt"
    train.write_text("abc\nabc\n")
    valid.write_text("abc\nab\u00e9\n")
    with pytest.raises(UserError) as err:
        load_text_corpus("char", train_file=train, valid_file=valid, test_file=train)
    assert str(err.value).startswith(f"{valid}:2: unknown character '\u00e9'")
    capped = load_text_corpus("char", train_file=train, valid_file=valid, test_file=train,
                              vocab_size=3)  # a, b + <unk>: c and é become <unk>
    assert capped.vocab.tokens[-1] == UNK and capped.valid.numel() == 8


@pytest.mark.parametrize("kwargs, message", [
    ({}, "no text data given"),
    ({"train_file": "good"}, "the valid and test files missing"),
    ({"data_file": "good", "test_file": "good"}, "either a data file (split 90/5/5) or"),
    ({"data_file": "missing"}, "{missing}: file not found"),
    ({"data_file": "empty"}, "{empty}: file is empty"),
    ({"data_file": "latin1"}, "{latin1}:2: not valid UTF-8"),
    ({"data_file": "tiny"}, "{tiny}: 3 characters are too few to split 90/5/5"),
    ({"data_file": "good", "vocab_size": 1}, "vocab_size must be at least 2"),
])
def test_bad_text_data_is_one_clear_error(tmp_path, kwargs, message):
    files = {name: tmp_path / f"{name}.txt" for name in ("good", "missing", "empty", "latin1",
                                                         "tiny")}
    write_plain_text(files["good"])
    files["empty"].write_text(" \n")
    files["latin1"].write_bytes(b"ok\ncaf\xe9\n")
    files["tiny"].write_text("ab\n")
    kwargs = {k: files[v] if isinstance(v, str) else v for k, v in kwargs.items()}
    with pytest.raises(UserError) as err:
        load_text_corpus("char", **kwargs)
    assert message.format(**files) in str(err.value) and "\n" not in str(err.value)


def test_tinyshakespeare_split_sizes_and_65_characters():
    corpus = load_text_corpus("char", data_file=shared_data("tinyshakespeare", "input.txt"))
    sizes = (corpus.train.numel(), corpus.valid.numel(), corpus.test.numel())
    assert sizes == (1003855, 55769, 55770)
    assert len(corpus.vocab) == 65 and corpus.vocab.tokens[0] == " "


CHAR_FAST = ["--preset", "char", "--level", "char", "--hidden-size", "24", "--batch-size", "4",
             "--num-steps", "20", "--eval-batch-size", "2", "--eval-num-steps", "20"]


def test_char_training_saves_level_and_character_vocabulary(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *CHAR_FAST, "--data-file", str(text_file), "--save-path", str(run),
                 "--max-max-epoch", "2"]) == 0
    out = capsys.readouterr().out
    assert "char-level data:" in out and "split contiguously 90/5/5" in out
    assert re.search(r"Valid Perplexity: [0-9.]+ \(loss [0-9.]+ nats/char\)", out)
    loaded = load_lm(run)
    text = text_file.read_text()
    train_part = text[: round(0.9 * len(text))]
    assert loaded.level == "char" and loaded.config.optimizer == "adam"
    assert loaded.vocab.tokens == tuple(sorted(Counter(train_part),
                                               key=lambda c: (-Counter(train_part)[c], c)))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    epochs = [r for r in records if r["event"] == "epoch"]
    assert epochs[1]["valid_loss"] < epochs[0]["valid_loss"]


def test_adam_char_run_resumes_to_the_same_parameters_as_one_run(text_file, tmp_path, capsys):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    data = ["--data-file", str(text_file)]
    assert main(["train", *CHAR_FAST, *data, "--save-path", str(straight),
                 "--max-max-epoch", "2", "--max-epoch", "1"]) == 0
    assert main(["train", *CHAR_FAST, *data, "--save-path", str(resumed),
                 "--max-max-epoch", "1", "--max-epoch", "1"]) == 0
    capsys.readouterr()
    # Level and vocabulary come from the run: only the data and the new length are given.
    assert main(["train", "--resume", "--save-path", str(resumed), *data,
                 "--max-max-epoch", "2"]) == 0
    out = capsys.readouterr().out
    assert resumed_at(out) == (2, 0) and progress_lines(out) == 10, "epoch 2 only"
    a, b = load_lm(straight), load_lm(resumed)
    assert all(torch.equal(a.model.state_dict()[k], b.model.state_dict()[k])
               for k in a.model.state_dict())
    assert b.level == "char"


def test_word_model_on_a_plain_text_file_with_a_vocabulary_cap(text_file, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "test", "--hidden-size", "8", "--batch-size", "4",
                 "--num-steps", "5", "--data-file", str(text_file), "--vocab-size", "8",
                 "--save-path", str(run)]) == 0
    loaded = load_lm(run)
    assert loaded.level == "word" and len(loaded.vocab) == 8 and loaded.vocab.unk == UNK


def test_ptb_files_can_train_a_char_model(ptb_dir, tmp_path):
    run = tmp_path / "run"
    assert main(["train", *CHAR_FAST, "--data-dir", str(ptb_dir), "--save-path", str(run),
                 "--max-max-epoch", "1"]) == 0
    assert load_lm(run).level == "char" and "<eos>" not in load_lm(run).vocab
