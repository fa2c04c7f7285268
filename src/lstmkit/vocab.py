"""Token vocabulary: ids are positions in a count-ordered token list, saved inside checkpoints."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from lstmkit.errors import UserError

EOS = "<eos>"
UNK = "<unk>"


@dataclass(frozen=True)
class Vocab:
    tokens: tuple[str, ...]
    unk: str | None = None  # token that stands in for unknown ones, if the vocabulary has one
    index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {token: i for i, token in enumerate(self.tokens)}
        if len(index) != len(self.tokens):
            raise UserError("vocabulary has duplicate tokens")
        if self.unk is not None and self.unk not in index:
            raise UserError(f"vocabulary's unknown-token {self.unk!r} is not in it")
        object.__setattr__(self, "index", index)

    @classmethod
    def from_counts(cls, counts: Counter, max_size: int | None = None,
                    unk: str | None = UNK) -> Vocab:
        """Order by count (descending), ties by the token (ascending), as the PTB reader does.

        With `max_size`, the rarest tokens are cut and `unk` is added (if absent) to stand in.
        """
        ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        tokens = [token for token, _ in ordered]
        if max_size is not None and len(tokens) > max_size:
            keep = [t for t in tokens if t != unk][: max_size - 1] if unk else tokens[:max_size]
            tokens = keep + ([unk] if unk and unk not in keep else [])
        has_unk = unk is not None and unk in tokens
        return cls(tuple(tokens), unk if has_unk else None)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[int(i)] for i in ids]

    def to_dict(self) -> dict:
        return {"tokens": list(self.tokens), "unk": self.unk}

    @classmethod
    def from_dict(cls, data: dict) -> Vocab:
        """A saved vocabulary; anything but a list of strings (and an optional unk string) is
        refused."""
        tokens, unk = data.get("tokens") if isinstance(data, dict) else None, None
        if isinstance(data, dict):
            unk = data.get("unk")
        if not (isinstance(tokens, list) and tokens and all(isinstance(t, str) for t in tokens)
                and (unk is None or isinstance(unk, str))):
            raise UserError("vocabulary is not a list of tokens")
        return cls(tuple(tokens), unk)

