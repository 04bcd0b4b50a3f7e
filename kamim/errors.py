"""Errors a user can cause: they end the command with one line and exit code 2, no traceback."""

from __future__ import annotations

import sys

import click


class UserError(click.ClickException):
    """A mistake the user can fix (bad flag, missing data, corrupt file, mismatched cache).

    The message must name the thing and the fix. Click prints ``Error: <message>`` and exits 2.
    """

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))  # always one line


class UserErrorLines(UserError):
    """A UserError whose message keeps its lines: one per item when a single line cannot say it
    (e.g. every flag that conflicts with a run being resumed). Same exit code 2, no traceback."""

    def __init__(self, header: str, lines: list[str]) -> None:
        self.header, self.lines = " ".join(header.split()), [" ".join(str(line).split()) for line in lines]
        click.ClickException.__init__(self, "\n".join([self.header, *(f"  {line}" for line in self.lines)]))

    def show(self, file=None) -> None:  # noqa: ANN001 - click's signature
        # The items first, the error last: the final line is still ``Error: ...`` naming the thing and the fix.
        file = file or sys.stderr
        for line in self.lines:
            click.echo(f"  {line}", file=file)
        click.echo(f"Error: {self.header.rstrip(':')} (listed above)", file=file)
