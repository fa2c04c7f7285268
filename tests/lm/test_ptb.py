import pytest

from conftest import shared_data
from lstmkit.errors import UserError
from lstmkit.lm.data import load_ptb, resolve_ptb_dir


def test_real_ptb_token_and_type_counts():
    corpus = load_ptb(shared_data("ptb"))
    assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
    assert len(corpus.vocab) == 10_000
    # Most frequent first: "the", then <unk>, then <eos> (the TF reader's ids 0, 1, 2).
    assert corpus.vocab.tokens[:3] == ("the", "<unk>", "<eos>")


def test_each_line_break_becomes_eos(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(" a b \n b <unk> \n")
    corpus = load_ptb(tmp_path)
    assert corpus.vocab.decode(corpus.train) == ["a", "b", "<eos>", "b", "<unk>", "<eos>"]


def test_unseen_words_of_valid_map_to_unk(ptb_dir):
    (ptb_dir / "ptb.valid.txt").write_text(" the zebra \n")
    corpus = load_ptb(ptb_dir)
    assert corpus.vocab.decode(corpus.valid) == ["the", "<unk>", "<eos>"]


def test_unseen_word_without_unk_is_an_error_naming_file_and_line(tmp_path):
    for split in ("train", "valid", "test"):
        (tmp_path / f"ptb.{split}.txt").write_text(" a b \n")
    (tmp_path / "ptb.test.txt").write_text(" a \n a zebra \n")
    with pytest.raises(UserError, match=r"ptb\.test\.txt:2: unknown word 'zebra'"):
        load_ptb(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b"", "file is empty"),
    (b"   \n\n", "file is empty"),
    (b" ok \n caf\xe9 \n", "ptb.valid.txt:2: not valid UTF-8 (byte 0xe9 at offset 9)"),
])
def test_bad_split_file_is_one_line_naming_it(ptb_dir, content, message):
    (ptb_dir / "ptb.valid.txt").write_bytes(content)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_ptb(ptb_dir)


def test_missing_split_file(ptb_dir):
    (ptb_dir / "ptb.test.txt").unlink()
    with pytest.raises(UserError, match=r"ptb\.test\.txt: file not found"):
        load_ptb(ptb_dir)


def test_data_dir_from_environment_or_its_ptb_subdirectory(ptb_dir, monkeypatch):
    monkeypatch.setenv("LSTMKIT_DATA", str(ptb_dir.parent))
    assert resolve_ptb_dir(None) == ptb_dir
    assert resolve_ptb_dir(ptb_dir) == ptb_dir


def test_no_data_given_says_how_to_get_it():
    with pytest.raises(UserError,
                       match=r"pass --data-dir DIR .* set LSTMKIT_DATA, or add --download"):
        resolve_ptb_dir(None)


def test_data_dir_without_ptb_files(tmp_path):
    with pytest.raises(UserError, match=r"no ptb\.train\.txt here"):
        resolve_ptb_dir(tmp_path)
    with pytest.raises(UserError, match="data directory not found"):
        resolve_ptb_dir(tmp_path / "absent")
