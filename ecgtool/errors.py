"""Errors a user can act on.

Every error raised on purpose by ecgtool is an :class:`EcgtoolError`: its
message names the file or record, the cause and, where there is one, the fix.
The CLI prints the message on one line (a traceback only with ``-v``) and exits
with ``exit_code``.
"""

from __future__ import annotations


class EcgtoolError(Exception):
    """A failure the user can act on (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({self.hint})"
        return self.message


class UsageError(EcgtoolError):
    """Bad options or arguments (exit code 2)."""

    exit_code = 2


class InputError(EcgtoolError):
    """An input file or table that cannot be read."""


class RecordError(EcgtoolError):
    """One record that cannot be processed; the run may go on without it."""

    def __init__(self, record: str, cause: str, hint: str | None = None):
        super().__init__(f"{record}: {cause}", hint)
        self.record = record
        self.cause = cause


class CheckpointError(EcgtoolError):
    """A checkpoint that cannot be loaded safely or does not match its model."""


class RecordErrors:
    """The ``--on-error`` policy for per-record failures.

    ``fail``: the first bad record stops the run. ``skip``: bad records are
    logged (one line each) and the run exits 0. Default (``None``): logged,
    the run goes on, and exits with :data:`EXIT_SKIPPED` if any was skipped.
    """

    EXIT_SKIPPED = 3

    def __init__(self, policy: str | None = None, log=None):
        if policy not in (None, "fail", "skip"):
            raise UsageError(f"--on-error must be 'fail' or 'skip', not {policy!r}")
        self.policy = policy
        self.count = 0
        self._log = log

    def __call__(self, err: Exception, record: str | None = None) -> None:
        if not isinstance(err, EcgtoolError):
            err = RecordError(record or "?", f"{type(err).__name__}: {err}")
        elif record and not isinstance(err, RecordError):
            err = RecordError(record, str(err))
        if self.policy == "fail":
            raise err
        self.count += 1
        if self._log is not None:
            self._log.error("skipped %s", err)

    @property
    def exit_code(self) -> int:
        if self.count and self.policy is None:
            return self.EXIT_SKIPPED
        return 0

    def summary(self) -> str | None:
        if not self.count:
            return None
        return f"{self.count} record{'s' if self.count != 1 else ''} skipped"
