"""The one exception type for mistakes in what a user gave us.

Anything a user can get wrong (a path, an option, a file's contents, a checkpoint) raises
`UserError` with a message that names the problem and where it is. The CLI prints it as one
line and exits with status 2; programming errors still surface as tracebacks.
"""


import contextlib
import os
import re
from collections.abc import Iterator


class UserError(Exception):
    """A user mistake, reported as one readable line (exit status 2 from the CLI)."""


def one_line(text: str, limit: int = 300) -> str:
    """`text` as one line (line breaks escaped, as a name taken from a file may hold them),
    cut to `limit` characters."""
    text = text.replace("\r", "\\r").replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit - 3] + "..."


class LstmkitWarning(RuntimeWarning):
    """Something works but not as well as it could (a slow precision, a missing kernel); the
    CLI prints it as one line on stderr and goes on."""


@contextlib.contextmanager
def model_fits(what: str) -> Iterator[None]:
    """Building a model from the user's sizes: one that cannot exist here (out of memory, or
    sizes past what the library can index) is the user's mistake, said in one line."""
    try:
        yield
    except (RuntimeError, MemoryError, OverflowError, TypeError) as err:
        if isinstance(err, TypeError) and "Overflow" not in str(err):
            raise  # a programming error, not a size (torch says Overflow as a TypeError)
        wanted = re.search(r"allocate (\d+) bytes", str(err))
        if wanted:
            why = f"it needs {int(wanted.group(1)) / 2**30:,.1f} GiB of memory"
        elif "Overflow" in str(err) or isinstance(err, OverflowError):
            why = "a size does not fit in 64 bits"
        else:
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
        raise UserError(f"cannot build the {what} from these sizes: {why}") from None


INT64_LIMIT = 2**63


def check_memory(what: str, needed_bytes: int, largest_size: int) -> None:
    """Refuse, before building it, a model that cannot exist here: a size past what torch can
    index, or more memory than the machine has (building one would take minutes to fail, or
    swap). The line is the one `model_fits` gives when an allocation fails."""
    if largest_size >= INT64_LIMIT:
        raise UserError(f"cannot build the {what} from these sizes: a size does not fit in "
                        f"64 bits")
    available = physical_memory()
    if available is not None and needed_bytes > available:
        raise UserError(f"cannot build the {what} from these sizes: it needs "
                        f"{needed_bytes / 2**30:,.1f} GiB of memory (this machine has "
                        f"{available / 2**30:,.1f} GiB)")


def physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
