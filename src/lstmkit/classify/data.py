"""Labelled sentences for the classifier: the three file formats, the seeded split, tokens, ids.

Formats (`read_labelled`), each giving texts with labels 1 (positive) / 0 (negative):

    DIR/rt-polarity.pos + DIR/rt-polarity.neg   one text a line per class (also *.pos + *.neg)
    DIR/reviews.txt + DIR/labels.txt            line-aligned; labels positive/negative or 1/0
    FILE.tsv or FILE.csv                        header row; text and label columns by name

Files that are not valid UTF-8 are read as Latin-1 and the fallback is reported in `notes`.
Every defect is a UserError naming the file and line.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lstmkit.errors import UserError
from lstmkit.files import exists, is_dir
from lstmkit.text import read_text_or_latin1, without_bom
from lstmkit.vocab import UNK, Vocab

PAD = "<pad>"  # id 0: fills batch rows past a text's end (see model.py)
POSITIVE, NEGATIVE = 1, 0
_LABELS = {"1": POSITIVE, "positive": POSITIVE, "pos": POSITIVE,
           "0": NEGATIVE, "negative": NEGATIVE, "neg": NEGATIVE}
_DELIMITERS = {".tsv": "\t", ".csv": ","}
# One text is a sentence or a review (MR: < 300 characters, IMDB: < 14,000). A longer line is a
# wrong file or a lost line break, and padding a batch to it could exhaust memory: refused.
MAX_TEXT_CHARS = 100_000


@dataclass(frozen=True)
class LabelledTexts:
    texts: tuple[str, ...]
    labels: tuple[int, ...]
    source: str  # where they came from, for messages
    notes: tuple[str, ...] = field(default=(), compare=False)  # e.g. Latin-1 fallbacks

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int], source: str) -> LabelledTexts:
        return LabelledTexts(tuple(self.texts[i] for i in indices),
                             tuple(self.labels[i] for i in indices), source, self.notes)

    def fingerprint(self) -> str:
        """SHA-256 of texts and labels: tells whether a split is re-made from the same data."""
        digest = hashlib.sha256()
        for text, label in zip(self.texts, self.labels, strict=True):
            digest.update(f"{label}\t{text}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class Splits:
    train: LabelledTexts
    valid: LabelledTexts
    test: LabelledTexts
    how: str  # one line for the console, e.g. "seeded 80/10/10 split (seed 1)"


# --------------------------------------------------------------------------- reading formats

def read_labelled(path: str | Path, text_column: str = "text", label_column: str = "label"
                  ) -> LabelledTexts:
    """Any of the three formats, chosen by what `path` is (see the module docstring)."""
    path = Path(path)
    if not exists(path, "data path"):
        raise UserError(f"{path}: data not found")
    if is_dir(path):
        if (text_column, label_column) != ("text", "label"):
            raise UserError(f"{path}: a directory has no columns; --text-column and "
                            f"--label-column apply to a .tsv/.csv file")
        if exists(path / "reviews.txt") or exists(path / "labels.txt"):
            return read_aligned(path / "reviews.txt", path / "labels.txt")
        pos, neg = _class_files(path)
        return read_per_class(pos, neg)
    if path.suffix.lower() in _DELIMITERS:
        return read_table(path, text_column, label_column)
    raise UserError(f"{path}: cannot tell the data format; give a directory with "
                    f"rt-polarity.pos + rt-polarity.neg (or *.pos + *.neg), a directory with "
                    f"reviews.txt + labels.txt, or a .tsv/.csv file with a header")


def read_per_class(pos_path: str | Path, neg_path: str | Path) -> LabelledTexts:
    """Two files of one text a line: every line of `pos_path` is positive, of `neg_path` not."""
    texts: list[str] = []
    labels: list[int] = []
    notes: list[str] = []
    for path, label in ((Path(pos_path), POSITIVE), (Path(neg_path), NEGATIVE)):
        lines = _text_lines(path, notes)
        texts.extend(lines)
        labels.extend([label] * len(lines))
    return LabelledTexts(tuple(texts), tuple(labels), f"{pos_path} + {neg_path}", tuple(notes))


def read_aligned(reviews_path: str | Path, labels_path: str | Path) -> LabelledTexts:
    """reviews.txt and labels.txt: line i of one is labelled by line i of the other."""
    reviews_path, labels_path = Path(reviews_path), Path(labels_path)
    notes: list[str] = []
    texts = _text_lines(reviews_path, notes)
    label_lines = _lines(labels_path, notes)
    if len(label_lines) != len(texts):
        shorter, longer = ((labels_path, reviews_path) if len(label_lines) < len(texts)
                           else (reviews_path, labels_path))
        count = min(len(label_lines), len(texts))
        raise UserError(f"{longer}:{count + 1}: has no matching line in {shorter} "
                        f"({len(texts)} reviews but {len(label_lines)} labels)")
    labels = [parse_label(value, f"{labels_path}:{number}")
              for number, value in enumerate(label_lines, start=1)]
    return LabelledTexts(tuple(texts), tuple(labels), f"{reviews_path} + {labels_path}",
                         tuple(notes))


def read_table(path: str | Path, text_column: str = "text", label_column: str = "label"
               ) -> LabelledTexts:
    """A .tsv or .csv file with a header row; the text and label columns are found by name."""
    path = Path(path)
    notes: list[str] = []
    decoded = read_text_or_latin1(path)
    if decoded.fallback_note(path):
        notes.append(decoded.fallback_note(path))
    delimiter = _DELIMITERS.get(path.suffix.lower(), ",")
    # TSV fields are not quoted (quotes are text, as in MR's `" conan "`); CSV follows RFC 4180.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(decoded.text, newline=""), delimiter=delimiter,
                        quoting=quoting)
    try:
        header = [name.strip() for name in next(reader)]
    except StopIteration:
        raise UserError(f"{path}: file is empty") from None
    columns = {}
    for name in (text_column, label_column):
        if name not in header:
            raise UserError(f"{path}:1: no column {name!r} in the header (columns: "
                            f"{', '.join(header)})")
        columns[name] = header.index(name)
    need = max(columns.values()) + 1
    texts: list[str] = []
    labels: list[int] = []
    try:
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if len(row) < need:
                raise UserError(f"{where}: {len(row)} field(s) but the header has "
                                f"{len(header)}")
            text = row[columns[text_column]].strip()
            if not text:
                raise UserError(f"{where}: empty text in column {text_column!r}")
            check_text_length(text, where)
            texts.append(text)
            labels.append(parse_label(row[columns[label_column]], where))
    except csv.Error as err:
        raise UserError(f"{path}:{reader.line_num}: malformed {path.suffix[1:]} ({err})") from None
    if not texts:
        raise UserError(f"{path}: has a header but no rows")
    return LabelledTexts(tuple(texts), tuple(labels), str(path), tuple(notes))


def parse_label(value: str, where: str) -> int:
    label = _LABELS.get(value.strip().lower())
    if label is None:
        raise UserError(f"{where}: label {value.strip()!r} is neither positive "
                        f"(1, positive, pos) nor negative (0, negative, neg)")
    return label


def read_lines_to_score(path: str | Path) -> tuple[list[str], str | None]:
    """Lines of a file for `predict`, and a note if it was read as Latin-1."""
    decoded = read_text_or_latin1(path)
    return _score_lines(decoded.text, str(path)), decoded.fallback_note(path)


def decode_lines_to_score(raw: bytes, name: str) -> tuple[list[str], str | None]:
    """The same for bytes read from a stream such as stdin (which may be empty)."""
    raw = without_bom(raw)
    try:
        return _score_lines(raw.decode("utf-8"), name), None
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        return (_score_lines(raw.decode("latin-1"), name),
                f"{name}:{line}: not valid UTF-8, read the whole input as Latin-1")


def check_text_length(text: str, where: str) -> None:
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"{where}: a text of {len(text):,} characters, over the limit of "
                        f"{MAX_TEXT_CHARS:,} (one text a line: is a line break missing?)")


def _score_lines(text: str, where: str) -> list[str]:
    # Blank lines are kept, so output line i always answers input line i.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    for number, line in enumerate(lines, start=1):
        check_text_length(line, f"{where}:{number}")
    return [line.rstrip("\r") for line in lines]


def _class_files(directory: Path) -> tuple[Path, Path]:
    pos, neg = sorted(directory.glob("*.pos")), sorted(directory.glob("*.neg"))
    if len(pos) == 1 and len(neg) == 1:
        return pos[0], neg[0]
    if len(pos) > 1 or len(neg) > 1:
        raise UserError(f"{directory}: several *.pos or *.neg files; expected one of each")
    raise UserError(f"{directory}: no data found (expected rt-polarity.pos + rt-polarity.neg, "
                    f"*.pos + *.neg, or reviews.txt + labels.txt)")


def _lines(path: Path, notes: list[str]) -> list[str]:
    decoded = read_text_or_latin1(path)
    if decoded.fallback_note(path):
        notes.append(decoded.fallback_note(path))
    lines = decoded.text.split("\n")  # not splitlines(): Latin-1 text may hold \x85 or \x0c
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    return [line.rstrip("\r") for line in lines]


def _text_lines(path: Path, notes: list[str]) -> list[str]:
    lines = _lines(path, notes)
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise UserError(f"{path}:{number}: empty line (every line must hold one text)")
        check_text_length(line, f"{path}:{number}")
    return [line.strip() for line in lines]


# --------------------------------------------------------------------------- splitting

def make_splits(data: LabelledTexts, valid: LabelledTexts | None, test: LabelledTexts | None,
                valid_fraction: float, test_fraction: float, seed: int) -> Splits:
    """Use the explicit valid/test data when given; cut what is missing from `data`, seeded."""
    if valid is not None and test is not None:
        return Splits(data, valid, test, "explicit train/valid/test data")
    fractions = (0.0 if valid is not None else valid_fraction,
                 0.0 if test is not None else test_fraction)
    train_ids, valid_ids, test_ids = split_indices(data.labels, *fractions, seed=seed)
    train = data.subset(train_ids, f"{data.source} (train part)")
    parts = [f"{round(100 * (1 - sum(fractions)))}"]
    if valid is None:
        valid = data.subset(valid_ids, f"{data.source} (valid part)")
        parts.append(f"{round(100 * valid_fraction)}")
    if test is None:
        test = data.subset(test_ids, f"{data.source} (test part)")
        parts.append(f"{round(100 * test_fraction)}")
    names = "/".join(n for n, keep in (("train", True), ("valid", fractions[0] > 0),
                                       ("test", fractions[1] > 0)) if keep)
    return Splits(train, valid, test,
                  f"seeded {'/'.join(parts)} {names} split of {len(data)} texts (seed {seed}), "
                  f"stratified by label")


def split_indices(labels: Sequence[int], valid_fraction: float, test_fraction: float,
                  seed: int) -> tuple[list[int], list[int], list[int]]:
    """Indices of train/valid/test: each label's texts shuffled and cut in the same proportions.

    Depends only on the labels, the fractions and the seed, so a saved model can re-make the
    split it was tested on.
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for label in sorted(set(labels)):
        members = np.flatnonzero(np.asarray(labels) == label)
        members = members[rng.permutation(len(members))].tolist()
        n_valid = round(len(members) * valid_fraction)
        n_test = round(len(members) * test_fraction)
        parts[2].extend(members[:n_test])
        parts[1].extend(members[n_test:n_test + n_valid])
        parts[0].extend(members[n_test + n_valid:])
    for part in parts:
        part.sort()  # file order within a split; batches are shuffled while training
    if not parts[0]:
        raise UserError(f"too little data to split: {len(labels)} texts leave none to train on")
    if (valid_fraction and not parts[1]) or (test_fraction and not parts[2]):
        raise UserError(f"too little data to split: {len(labels)} texts give an empty "
                        f"{'valid' if not parts[1] else 'test'} part")
    return parts


# --------------------------------------------------------------------------- tokens and ids

# Words, with clitics split off as in the Penn Treebank ("does n't", "film 's"), and every
# other non-space character as a token of its own (punctuation carries sentiment: "!", "?").
_TOKEN = re.compile(r"\w+(?=n't\b)|n't\b|'\w+|\w+|[^\w\s]")


def tokenize(text: str, lowercase: bool = True) -> list[str]:
    return _TOKEN.findall(text.lower() if lowercase else text)


def build_vocab(token_lists: Sequence[Sequence[str]], min_count: int = 1, max_size: int = 0
                ) -> Vocab:
    """<pad> (id 0) and <unk> (id 1), then training words by count; rare ones go to <unk>."""
    counts = Counter(token for tokens in token_lists for token in tokens)
    kept = Counter({t: c for t, c in counts.items() if c >= min_count and t not in (PAD, UNK)})
    words = Vocab.from_counts(kept, unk=None).tokens  # the count-then-token order of vocab.py
    if max_size:
        words = words[: max_size - 2]
    return Vocab((PAD, UNK, *words), unk=UNK)


def encode_texts(vocab: Vocab, token_lists: Sequence[Sequence[str]], max_length: int = 0
                 ) -> list[torch.Tensor]:
    """One id tensor per text, cut to its first `max_length` tokens (0: all of them).

    A text without tokens (a blank line given to `predict`) becomes a single <unk>: the model
    needs at least one step to read.
    """
    unk_id = vocab.index[UNK]
    encoded = []
    for tokens in token_lists:
        if max_length:
            tokens = tokens[:max_length]
        ids = [vocab.index.get(token, unk_id) for token in tokens] or [unk_id]
        encoded.append(torch.tensor(ids, dtype=torch.long))
    return encoded


def pad_batch(sequences: Sequence[torch.Tensor], pad_id: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [B, T] (T = longest; shorter rows filled with `pad_id` at the end) and lengths [B]."""
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    ids = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
    return ids, lengths


@dataclass(frozen=True)
class EncodedSplit:
    """A split ready for the model: one id tensor per text and the labels as floats."""
    ids: list[torch.Tensor]
    labels: torch.Tensor  # [N] float, 1.0 positive

    def __len__(self) -> int:
        return len(self.ids)


def encode_split(vocab: Vocab, data: LabelledTexts, lowercase: bool, max_length: int
                 ) -> EncodedSplit:
    tokens = [tokenize(text, lowercase) for text in data.texts]
    return EncodedSplit(encode_texts(vocab, tokens, max_length),
                        torch.tensor(data.labels, dtype=torch.float32))
