"""Errors a user can cause. The entry point prints them as one line and exits non-zero."""


class UserError(Exception):
    """A bad value or file the user can fix. The message names the value and the fix."""

    exit_code = 2


class Refused(UserError):
    """A requested combination (mode x precision x CPU) that cannot run, refused before work starts."""

    exit_code = 3
