"""Total file access for everything a user names: one UserError line, never an OSError, a hang
or an unbounded read.

Paths are looked at with `os.stat`, whose errors (a component over 255 bytes, a symlink loop,
no permission) become one line naming the path. Files are opened non-blocking and must be
regular files, so a FIFO, a terminal or `/dev/zero` is refused instead of blocking forever or
reading without end; each reader passes the largest size it accepts.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from lstmkit.errors import UserError

# Text corpora (PTB is 5 MB, the largest common ones a few hundred MB) are read whole into
# memory and tokenised in Python: 2 GiB is far past any real one and still fits in memory.
MAX_TEXT_BYTES = 2 * 2**30
# Config files are a flat table of a few dozen fields.
MAX_CONFIG_BYTES = 2**20
# A checkpoint is read whole; the large preset with Adam is about 1 GiB.
MAX_CHECKPOINT_BYTES = 64 * 2**30

_MISSING = (errno.ENOENT, errno.ENOTDIR)


def path_stat(path: str | Path, what: str = "path") -> os.stat_result | None:
    """`os.stat(path)`, None when nothing is there; any other failure is a UserError."""
    try:
        return os.stat(path)
    except OSError as err:
        if err.errno in _MISSING:
            return None
        raise UserError(f"{path}: cannot use this {what} ({reason(err)})") from None
    except ValueError:  # an embedded NUL byte
        raise UserError(f"{path!r}: not a usable {what} (holds a NUL byte)") from None


def exists(path: str | Path, what: str = "path") -> bool:
    return path_stat(path, what) is not None


def is_dir(path: str | Path, what: str = "path") -> bool:
    found = path_stat(path, what)
    return found is not None and stat.S_ISDIR(found.st_mode)


def is_file(path: str | Path, what: str = "path") -> bool:
    found = path_stat(path, what)
    return found is not None and stat.S_ISREG(found.st_mode)


def read_regular_file(path: str | Path, what: str, limit: int) -> bytes:
    """The bytes of `path`, which must be a regular file of at most `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as err:
        if err.errno in _MISSING:
            raise UserError(f"{path}: {what} not found") from None
        if err.errno == errno.EISDIR:
            raise UserError(f"{path}: is a directory, expected a {what}") from None
        raise UserError(f"{path}: cannot read {what} ({reason(err)})") from None
    except ValueError:
        raise UserError(f"{path!r}: not a usable path (holds a NUL byte)") from None
    try:
        _mode, size = _regular_file_size(fd, path, what, limit)
        with os.fdopen(fd, "rb", closefd=False) as handle:
            # One byte past the size fstat saw: a file that grows meanwhile is still bounded.
            data = handle.read(size + 1)
    except OSError as err:
        raise UserError(f"{path}: cannot read {what} ({reason(err)})") from None
    finally:
        os.close(fd)
    if len(data) > limit:
        raise UserError(f"{path}: over the limit of {limit:,} bytes for a {what}")
    return data


def _regular_file_size(fd: int, path: str | Path, what: str, limit: int) -> tuple[int, int]:
    found = os.fstat(fd)
    if stat.S_ISDIR(found.st_mode):
        raise UserError(f"{path}: is a directory, expected a {what}")
    if not stat.S_ISREG(found.st_mode):
        raise UserError(f"{path}: is {kind_of(found.st_mode)}, expected a {what} (a regular "
                        f"file)")
    if found.st_size > limit:
        raise UserError(f"{path}: {found.st_size:,} bytes, over the limit of {limit:,} for a "
                        f"{what}")
    return found.st_mode, found.st_size


def kind_of(mode: int) -> str:
    """What a non-regular file is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISDIR, "a directory")):
        if test(mode):
            return name
    return "not a regular file"


def reason(err: BaseException) -> str:
    return getattr(err, "strerror", None) or str(err) or type(err).__name__
