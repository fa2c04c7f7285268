"""Reading text files safely: one clear error for a missing, empty or non-UTF-8 file, for
anything that is not a regular file, and for a file over MAX_TEXT_BYTES (2 GiB)."""

from __future__ import annotations

import codecs
from dataclasses import dataclass
from pathlib import Path

from lstmkit.errors import UserError
from lstmkit.files import MAX_TEXT_BYTES, read_regular_file


def without_bom(raw: bytes) -> bytes:
    """`raw` less a leading UTF-8 byte-order mark (Windows editors and Excel's "CSV UTF-8"
    write one): kept, it would glue itself to the first word, or to a CSV header's first
    column name."""
    return raw.removeprefix(codecs.BOM_UTF8)


def read_text(path: str | Path) -> str:
    """The whole file as text; missing, unreadable, empty or non-UTF-8 files raise UserError."""
    path = Path(path)
    whole = _read_bytes(path)
    raw = without_bom(whole)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        offset = err.start + len(whole) - len(raw)
        raise UserError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {offset})"
        ) from None
    if not text.strip():
        raise UserError(f"{path}: file is empty")
    return text


def _read_bytes(path: Path) -> bytes:
    try:
        return read_regular_file(path, "text file", MAX_TEXT_BYTES)
    except UserError as err:
        if str(err) == f"{path}: text file not found":
            raise UserError(f"{path}: file not found") from None
        raise


@dataclass(frozen=True)
class DecodedText:
    """A file's text and how it was decoded; `fallback_line` is the first non-UTF-8 line."""
    text: str
    encoding: str  # "utf-8" or "latin-1"
    fallback_line: int | None = None

    def fallback_note(self, path: str | Path) -> str | None:
        """One line telling the user the file was not UTF-8 (None when it was)."""
        if self.fallback_line is None:
            return None
        return (f"{path}:{self.fallback_line}: not valid UTF-8, read the whole file as "
                f"Latin-1")


def read_text_or_latin1(path: str | Path) -> DecodedText:
    """Like `read_text`, but a file that is not UTF-8 is decoded as Latin-1 instead of refused.

    Latin-1 maps every byte to a character, so it never fails; older corpora (the original
    Movie Review release among them) are in Latin-1 or Windows-1252. The caller reports it.
    """
    path = Path(path)
    raw = without_bom(_read_bytes(path))
    try:
        decoded = DecodedText(raw.decode("utf-8"), "utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        decoded = DecodedText(raw.decode("latin-1"), "latin-1", line)
    if not decoded.text.strip():
        raise UserError(f"{path}: file is empty")
    return decoded

