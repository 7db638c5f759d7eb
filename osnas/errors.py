"""User-facing errors.

Everything a user can get wrong (a path, a name, a file's content) raises `OsnasError`
with a one-line message naming the offending path or value and what was expected. The CLI
turns it into that line on stderr and exit code 2; no traceback.
"""


class OsnasError(Exception):
    """A user error: bad input, bad usage. Printed as one line, exit code 2."""

    exit_code = 2


class NaNLossError(OsnasError):
    """Training produced a non-finite loss; the last good checkpoint is kept."""


class OsnasInterrupted(OsnasError):
    """Ctrl-C / SIGTERM: a checkpoint was saved and the run can be resumed; exit code 130."""

    exit_code = 130


def one_line(msg: str) -> str:
    """Collapse a message onto one line (error messages must stay one line)."""
    return " ".join(str(msg).split())


def first_line(e: BaseException) -> str:
    """The gist of a (possibly multi-line) library error, for a one-line message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return ("; ".join(lines[:2]) or type(e).__name__)[:300]
