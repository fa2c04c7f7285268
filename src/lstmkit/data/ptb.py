"""The PTB corpus (Mikolov's simple-examples): three files, vocabulary from train only."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lstmkit.data.text import read_word_lines
from lstmkit.errors import UserError
from lstmkit.vocab import EOS, Vocab, encode_lines

SPLITS = ("train", "valid", "test")
DATA_ENV = "LSTMKIT_DATA"


def split_file(data_dir: Path, split: str) -> Path:
    return data_dir / f"ptb.{split}.txt"


@dataclass(frozen=True)
class Corpus:
    vocab: Vocab
    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def read_split(path: Path, vocab: Vocab) -> np.ndarray:
    return encode_lines(vocab, read_word_lines(path, eos=EOS), str(path))


def load_ptb(data_dir: Path) -> Corpus:
    """Read train/valid/test with the vocabulary built from train."""
    data_dir = Path(data_dir)
    train_lines = read_word_lines(split_file(data_dir, "train"), eos=EOS)
    vocab = Vocab.from_counts(Counter(token for line in train_lines for token in line))
    train = encode_lines(vocab, train_lines, str(split_file(data_dir, "train")))
    valid = read_split(split_file(data_dir, "valid"), vocab)
    test = read_split(split_file(data_dir, "test"), vocab)
    return Corpus(vocab, train, valid, test)


def resolve_ptb_dir(data_dir: str | Path | None) -> Path:
    """The directory holding ptb.*.txt: `--data-dir`, else $LSTMKIT_DATA (it or its ptb/)."""
    given = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not given:
        raise UserError(
            "no PTB data given: pass --data-dir DIR (holding ptb.train.txt, ptb.valid.txt, "
            f"ptb.test.txt), set {DATA_ENV}, or add --download (or run `lstmkit download ptb`)")
    root = Path(given).expanduser()
    if not root.exists():
        raise UserError(f"{root}: data directory not found")
    if not root.is_dir():
        raise UserError(f"{root}: not a directory")
    for candidate in (root, root / "ptb", root / "simple-examples" / "data"):
        if split_file(candidate, "train").exists():
            return candidate
    raise UserError(f"{root}: no ptb.train.txt here (nor in {root / 'ptb'})")
