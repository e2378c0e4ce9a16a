"""One exception type for every input problem a user can fix, and one warning type for what was skipped.

The CLI turns a `JcwError` into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""
import contextlib
import sys
import warnings
from collections.abc import Iterator


class JcwError(Exception):
    """A problem with the user's input, stated with the fix."""


class JcwWarning(UserWarning):
    """Something was skipped or approximated; the CLI prints it as one line, `jcw: warning: ...`."""


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """jcw's own warnings are for users: one line on stderr, no source location. Other libraries' keep their form."""
    library_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, JcwWarning):
            sys.stderr.write(f"jcw: warning: {message}\n")
        else:
            library_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = library_show
