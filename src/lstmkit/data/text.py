"""Reading text files safely: one clear error for a missing, empty or non-UTF-8 file."""

from __future__ import annotations

from pathlib import Path

from lstmkit.errors import UserError


def read_text(path: str | Path) -> str:
    """The whole file as text; missing, unreadable, empty or non-UTF-8 files raise UserError."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{path}: file not found")
    if path.is_dir():
        raise UserError(f"{path}: is a directory, expected a text file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read ({err.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    return text


def read_word_lines(path: str | Path, eos: str | None) -> list[list[str]]:
    """Whitespace-split tokens of each line; each line break becomes `eos` (if given)."""
    text = read_text(path)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new one
    tail = [eos] if eos else []
    return [line.split() + tail for line in lines]
