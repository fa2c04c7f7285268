"""Pretrained word vectors from a GloVe or word2vec text file, looked up for a vocabulary.

    GloVe:     the 0.418 0.24968 -0.41242 ...        (a word, then D numbers, per line)
    word2vec:  400000 300                            (an optional "count dimension" first line)
               the 0.418 0.24968 -0.41242 ...

Only the vocabulary's words are kept, so a large file costs a pass but little memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lstmkit.errors import UserError
from lstmkit.files import is_file
from lstmkit.vocab import Vocab


@dataclass(frozen=True)
class PretrainedVectors:
    weights: torch.Tensor  # [V, D]: found words from the file, others left as given
    found: int  # vocabulary words that the file has
    dimension: int


def load_word_vectors(path: str | Path, vocab: Vocab, init: torch.Tensor | None = None,
                      skip: tuple[str, ...] = ()) -> PretrainedVectors:
    """Rows of `init` ([V, D], or zeros) replaced by the file's vectors for the vocabulary.

    An exact match wins; otherwise the lower-cased file word fills a still-missing entry, so
    cased word2vec files serve a lower-cased vocabulary. `skip` lists tokens never filled.
    """
    path = Path(path)
    if not is_file(path, "word-vector file"):
        raise UserError(f"{path}: word-vector file not found (or not a regular file)")
    weights: torch.Tensor | None = None
    exact: set[int] = set()
    filled: set[int] = set()
    dimension = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            parts = raw.decode("utf-8", errors="replace").rstrip("\r\n").rstrip().split(" ")
            if not parts or parts == [""]:
                continue
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec header: count and dimension
            if not dimension:
                dimension = len(parts) - 1
                if dimension < 1:
                    raise UserError(f"{path}:{number}: expected a word and its numbers")
                if init is not None and init.shape[1] != dimension:
                    raise UserError(f"{path}: vectors have {dimension} dimensions but the "
                                    f"embedding has {init.shape[1]}")
                weights = (init.clone() if init is not None
                           else torch.zeros(len(vocab), dimension))
            if len(parts) - 1 > dimension and not _is_number(parts[-dimension - 1]):
                continue  # a word with spaces in it (GloVe 840B has some): never one of ours
            if len(parts) - 1 != dimension:
                raise UserError(f"{path}:{number}: {len(parts) - 1} numbers after the word, "
                                f"expected {dimension}")
            word = parts[0]
            index = vocab.index.get(word)
            is_exact = index is not None
            if index is None:
                index = vocab.index.get(word.lower())
            if index is None or index in exact or (not is_exact and index in filled) \
                    or vocab.tokens[index] in skip:
                continue
            try:
                vector = torch.tensor([float(p) for p in parts[1:]])
            except ValueError:
                raise UserError(f"{path}:{number}: not a number in the vector of "
                                f"{word!r}") from None
            if not bool(torch.isfinite(vector).all()):
                raise UserError(f"{path}:{number}: the vector of {word!r} holds nan or inf")
            weights[index] = vector
            filled.add(index)
            if is_exact:
                exact.add(index)
    if weights is None:
        raise UserError(f"{path}: file is empty (no word vectors)")
    return PretrainedVectors(weights, len(filled), dimension)


def vector_dimension(path: str | Path) -> int:
    """The dimension of the vectors in a GloVe/word2vec text file (from its first vector)."""
    path = Path(path)
    if not is_file(path, "word-vector file"):
        raise UserError(f"{path}: word-vector file not found (or not a regular file)")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            parts = raw.decode("utf-8", errors="replace").split()
            if not parts:
                continue
            if number == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                return int(parts[1])
            if len(parts) < 2:
                raise UserError(f"{path}:{number}: expected a word and its numbers")
            return len(parts) - 1
    raise UserError(f"{path}: file is empty (no word vectors)")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
