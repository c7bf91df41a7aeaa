"""The command line of the ecgtool command now running, for the tables it writes (their history).

The CLI (ecgtool.cli.app) sets it once per command; library calls leave it empty. Standard library only, so
that the CLI modules can import it without paying for numpy or pyarrow at start-up."""

from __future__ import annotations

from contextvars import ContextVar
from typing import Sequence

_COMMAND: ContextVar[tuple[str, ...]] = ContextVar("ecgtool_command", default=())


def set_command_line(argv: Sequence[str]):
    """Record ``argv`` (``["ecgtool", ...]``) as the running command; returns a token for :func:`reset_command_line`."""
    return _COMMAND.set(tuple(str(a) for a in argv))


def reset_command_line(token) -> None:
    _COMMAND.reset(token)


def command_line() -> list[str]:
    """The running ecgtool command line (``["ecgtool", ...]``), or [] outside the CLI."""
    return list(_COMMAND.get())
