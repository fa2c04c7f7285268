"""The language model's data: PTB or any UTF-8 text, at the word or the character level.

    word level: whitespace-split tokens, each line break becomes <eos> (as PTB)
    char level: every character is a token, the line break "\\n" included (no <eos>)

The vocabulary comes from the training split only, ordered as `Vocab.from_counts` orders it
(count descending, ties by the token); `vocab_size` keeps the most frequent tokens and maps the
rest to <unk>. One file is split 90/5/5 into train/valid/test *contiguously by position*
(first 90% of the tokens, next 5%, last 5%), never shuffled: the text is one stream whose
continuity truncated BPTT relies on, and shuffled pieces would leak near-copies of training
context into valid/test. So the split is deterministic and needs no seed. Word-level splits
fall on line boundaries (whole sentences, each ending in <eos>); char-level splits fall at
exact character positions.

PTB (Mikolov's simple-examples) is three such files, `ptb.{train,valid,test}.txt`, read at the
word level like any other: the one reader for training, evaluation and scoring.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lstmkit.errors import UserError
from lstmkit.files import exists, is_dir
from lstmkit.text import read_text
from lstmkit.vocab import EOS, UNK, Vocab

LEVELS = ("word", "char")
SPLIT_FRACTIONS = (0.90, 0.05, 0.05)
SPLITS = ("train", "valid", "test")
DATA_ENV = "LSTMKIT_DATA"

Lines = list[list[str]]  # tokens of each line of a text, line breaks included


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise UserError(f"level must be one of {', '.join(LEVELS)}, got {level!r}")
    return level


def token_name(level: str) -> str:
    return "character" if level == "char" else "word"


def tokenize(text: str, level: str) -> Lines:
    """The tokens of each line of `text`; the stream is these lists concatenated.

    A final line break ends the last line; it does not start an empty one. Word level: the
    last line gets its <eos> even without a final line break (as the PTB reader does).
    """
    check_level(level)
    lines = text.split("\n")
    if level == "word":
        if lines and lines[-1] == "":
            lines.pop()
        return [[*line.split(), EOS] for line in lines]
    out = [[*line, "\n"] for line in lines[:-1]]
    if lines[-1]:
        out.append(list(lines[-1]))
    return out


def build_vocab(lines: Lines, vocab_size: int | None = None) -> Vocab:
    """Vocabulary of the training lines; with `vocab_size`, the rarest are cut to <unk>."""
    if vocab_size is not None and vocab_size < 2:
        raise UserError(f"vocab_size must be at least 2 (a token and {UNK}), got {vocab_size}")
    return Vocab.from_counts(Counter(t for line in lines for t in line), max_size=vocab_size)


def encode(vocab: Vocab, lines: Lines, where: str, level: str, first_line: int = 1
           ) -> np.ndarray:
    """One id stream; an unknown token (no <unk> to map it to) is reported as where:line."""
    index = vocab.index
    unk_id = index[vocab.unk] if vocab.unk is not None else None
    ids: list[int] = []
    for number, line in enumerate(lines, start=first_line):
        for token in line:
            found = index.get(token, unk_id)
            if found is None:
                raise UserError(
                    f"{where}:{number}: unknown {token_name(level)} {token!r} (the model's "
                    f"vocabulary of {len(vocab)} has no {UNK} to stand in for it)")
            ids.append(found)
    return np.asarray(ids, dtype=np.int64)


@dataclass(frozen=True)
class TokenSplits:
    """Encoded train/valid/test id streams and the vocabulary they were encoded with."""
    vocab: Vocab
    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    level: str = "word"
    description: str = ""  # where the splits came from, for the training log


@dataclass(frozen=True)
class _Part:
    lines: Lines
    where: str  # file name for messages
    first_line: int  # line number of lines[0] in that file


def load_text_corpus(level: str, data_file: str | Path | None = None,
                     train_file: str | Path | None = None, valid_file: str | Path | None = None,
                     test_file: str | Path | None = None, vocab_size: int | None = None
                     ) -> TokenSplits:
    """Either one `data_file` split 90/5/5, or three files `train_file`/`valid_file`/`test_file`.
    """
    check_level(level)
    explicit = (train_file, valid_file, test_file)
    if data_file is not None and any(f is not None for f in explicit):
        raise UserError("give either a data file (split 90/5/5) or train/valid/test files, "
                        "not both")
    if data_file is not None:
        parts = split_contiguous(tokenize(read_text(data_file), level), str(data_file), level)
        description = f"{data_file} split contiguously 90/5/5"
    else:
        missing = [name for name, f in zip(("train", "valid", "test"), explicit, strict=True)
                   if f is None]
        if len(missing) == 3:
            raise UserError("no text data given: a data file, or train, valid and test files")
        if missing:
            raise UserError(f"the {' and '.join(missing)} file{'s' if len(missing) > 1 else ''}"
                            f" missing: give all three of train, valid and test files")
        parts = tuple(_Part(tokenize(read_text(f), level), str(f), 1) for f in explicit)
        description = f"train {train_file}, valid {valid_file}, test {test_file}"
    vocab = build_vocab(parts[0].lines, vocab_size)
    streams = [encode(vocab, p.lines, p.where, level, p.first_line) for p in parts]
    for name, ids, part in zip(("train", "valid", "test"), streams, parts, strict=True):
        if ids.size < 2:
            raise UserError(f"{part.where}: the {name} split has {ids.size} "
                            f"{token_name(level)}s; it needs at least 2")
    train, valid, test = (torch.from_numpy(ids) for ids in streams)
    return TokenSplits(vocab, train, valid, test, level, description)


def split_contiguous(lines: Lines, where: str, level: str) -> tuple[_Part, _Part, _Part]:
    """Cut the token stream at 90% and 95% of its length (see the module docstring)."""
    lengths = np.fromiter((len(line) for line in lines), dtype=np.int64, count=len(lines))
    total = int(lengths.sum())
    targets = [round(total * SPLIT_FRACTIONS[0]),
               round(total * (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]))]
    if level == "word":
        # End each split at the first line boundary at or after its target position.
        ends = np.cumsum(lengths)
        cuts = [(min(int(np.searchsorted(ends, t)) + 1, len(lines)), 0) for t in targets]
    else:
        cuts = [_char_position(lengths, t) for t in targets]
    pieces = []
    start = (0, 0)  # (line index, offset within that line)
    for end in [*cuts, (len(lines), 0)]:
        pieces.append(_slice(lines, start, end, where))
        start = end
    if any(sum(len(line) for line in p.lines) < 2 for p in pieces):
        what = (f"{total} words on {len(lines)} line(s) cannot be split 90/5/5 at line "
                f"boundaries" if level == "word" else f"{total} characters are too few to "
                f"split 90/5/5")
        raise UserError(f"{where}: {what} (each split needs at least 2 {token_name(level)}s); "
                        f"give separate train/valid/test files")
    return pieces[0], pieces[1], pieces[2]


def _char_position(lengths: np.ndarray, position: int) -> tuple[int, int]:
    """(line index, offset) of token number `position` in the stream."""
    ends = np.cumsum(lengths)
    line = int(np.searchsorted(ends, position, side="right"))
    before = int(ends[line - 1]) if line > 0 else 0
    return line, position - before


def _slice(lines: Lines, start: tuple[int, int], end: tuple[int, int], where: str) -> _Part:
    (l0, o0), (l1, o1) = start, end
    if l0 == l1:
        piece = [lines[l0][o0:o1]] if l0 < len(lines) else []
    else:
        piece = [lines[l0][o0:], *lines[l0 + 1:l1]]
        if l1 < len(lines) and o1:
            piece.append(lines[l1][:o1])
    return _Part(piece, where, l0 + 1)


def encode_text(vocab: Vocab, text: str, level: str, where: str
                ) -> tuple[torch.Tensor, list[int]]:
    """Ids of `text` tokenised as the model's training data was, and the tokens of each line."""
    lines = tokenize(text, level)
    return torch.from_numpy(encode(vocab, lines, where, level)), [len(line) for line in lines]


def encode_file(vocab: Vocab, path: str | Path, level: str) -> torch.Tensor:
    """Ids of a text file (one PTB split, say) under a saved model's vocabulary."""
    return encode_text(vocab, read_text(path), level, str(path))[0]


def load_ptb(data_dir: str | Path | None) -> TokenSplits:
    """PTB's train/valid/test at the word level, the vocabulary from train (10,000 types)."""
    return load_text_corpus("word", **ptb_files(data_dir))


def ptb_split_file(data_dir: Path, split: str) -> Path:
    return data_dir / f"ptb.{split}.txt"


def ptb_files(data_dir: str | Path | None) -> dict[str, Path]:
    """PTB's three files as `train_file`/`valid_file`/`test_file` for `load_text_corpus`."""
    ptb = resolve_ptb_dir(data_dir)
    return {f"{split}_file": ptb_split_file(ptb, split) for split in SPLITS}


def resolve_ptb_dir(data_dir: str | Path | None) -> Path:
    """The directory holding ptb.*.txt: `--data-dir`, else $LSTMKIT_DATA (it or its ptb/)."""
    given = data_dir if data_dir is not None else os.environ.get(DATA_ENV)
    if not given:
        raise UserError(
            "no PTB data given: pass --data-dir DIR (holding ptb.train.txt, ptb.valid.txt, "
            f"ptb.test.txt), set {DATA_ENV}, or add --download (or run `lstmkit download ptb`)")
    root = Path(given).expanduser()
    if not exists(root, "data directory"):
        raise UserError(f"{root}: data directory not found")
    if not is_dir(root):
        raise UserError(f"{root}: not a directory")
    for candidate in (root, root / "ptb", root / "simple-examples" / "data"):
        if exists(ptb_split_file(candidate, "train"), "data directory"):
            return candidate
    raise UserError(f"{root}: no ptb.train.txt here (nor in {root / 'ptb'})")

