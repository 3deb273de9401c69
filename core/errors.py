"""Errors with a meaning for users: the CLI turns them into one sentence and an exit code."""


class UserError(Exception):
    """A problem the user can fix (bad file, bad option, missing model). CLI exit code 2."""

    exit_code = 2


class Cancelled(Exception):
    """The run was cancelled by the caller (cancel event/callable, or GIMP's Cancel)."""


class NumericalError(UserError):
    """The loss became NaN or infinite; no result is written."""
