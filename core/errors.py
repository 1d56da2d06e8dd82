"""The one error type a user can act on: every message names the problem and the fix."""


class WorkbenchError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""
