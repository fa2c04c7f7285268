"""A small generated sentiment corpus (learnable in seconds) in each input format."""

from __future__ import annotations

import random
from pathlib import Path

POSITIVE_WORDS = ["great", "wonderful", "moving", "funny", "brilliant"]
NEGATIVE_WORDS = ["dull", "awful", "boring", "clumsy", "tedious"]
FILLER = ["the", "film", "movie", "plot", "is", "was", "a", "very", "and", "story", "acting"]


def sentences(count: int, seed: int = 0) -> list[tuple[str, int]]:
    """`count` texts per class; the label is carried by one sentiment word among fillers."""
    rng = random.Random(seed)
    out = []
    for label, words in ((1, POSITIVE_WORDS), (0, NEGATIVE_WORDS)):
        for _ in range(count):
            tokens = [rng.choice(FILLER) for _ in range(rng.randint(2, 9))]
            tokens.insert(rng.randint(0, len(tokens)), rng.choice(words))
            out.append((" ".join(tokens) + rng.choice([" .", " !", ""]), label))
    return out


def write_per_class(directory: Path, count: int = 60, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = sentences(count, seed)
    for label, name in ((1, "rt-polarity.pos"), (0, "rt-polarity.neg")):
        lines = [text for text, lab in data if lab == label]
        (directory / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return directory


def write_table(path: Path, count: int = 60, seed: int = 0, delimiter: str = "\t") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [f"id{delimiter}label{delimiter}text"]
    for i, (text, label) in enumerate(sentences(count, seed)):
        rows.append(f"{i}{delimiter}{label}{delimiter}{text}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return path


def write_aligned(directory: Path, count: int = 60, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    data = sentences(count, seed)
    (directory / "reviews.txt").write_text("\n".join(t for t, _ in data) + "\n", encoding="utf-8")
    (directory / "labels.txt").write_text(
        "\n".join("positive" if lab else "negative" for _, lab in data) + "\n", encoding="utf-8")
    return directory
