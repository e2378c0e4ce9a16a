"""One exception type for every input problem a user can fix.

The CLI turns a `JcwError` into one line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class JcwError(Exception):
    """A problem with the user's input, stated with the fix."""


class JcwWarning(UserWarning):
    """Something was skipped or approximated; the CLI prints it as one line, `jcw: warning: ...`."""
