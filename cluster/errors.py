"""Failures the user can fix: the CLI prints them as one line, no traceback."""


class UserError(RuntimeError):
    pass
