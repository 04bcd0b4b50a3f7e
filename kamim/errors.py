"""Errors a user can cause: they end the command with one line and exit code 2, no traceback."""

from __future__ import annotations

import click


class UserError(click.ClickException):
    """A mistake the user can fix (bad flag, missing data, corrupt file, mismatched cache).

    The message must name the thing and the fix. Click prints ``Error: <message>`` and exits 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line
