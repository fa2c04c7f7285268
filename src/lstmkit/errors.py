"""The one exception type for mistakes in what a user gave us.

Anything a user can get wrong (a path, an option, a file's contents, a checkpoint) raises
`UserError` with a message that names the problem and where it is. The CLI prints it as one
line and exits with status 2; programming errors still surface as tracebacks.
"""


class UserError(Exception):
    """A user mistake, reported as one readable line (exit status 2 from the CLI)."""


class LstmkitWarning(RuntimeWarning):
    """Something works but not as well as it could (a slow precision, a missing kernel); the
    CLI prints it as one line on stderr and goes on."""
