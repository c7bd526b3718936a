"""Exit statuses: 0 everything went as asked, 1 something failed (a job ended failed, a refusal,
an AWS error, an interruption), 2 bad usage (arguments, an unknown stack, no local stack)."""

from __future__ import annotations

import click

OK = 0
FAILED = 1
USAGE = 2


class Failure(click.ClickException):
    """Something the command was asked to do failed (exit status 1)."""

    exit_code = FAILED


class BadUsage(click.ClickException):
    """The command cannot run as given (exit status 2)."""

    exit_code = USAGE


class Interrupted(Failure):
    """Ctrl-C: the command stopped at a safe point (exit status 1)."""
