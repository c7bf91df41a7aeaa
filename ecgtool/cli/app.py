"""The Typer application, its global options and error handling.

Command modules register themselves on :data:`app`. This module and the
command modules import only light libraries at import time: shell completion
runs the program on every Tab.
"""

from __future__ import annotations

import logging
import sys
import traceback

import typer
import typer.completion
from typer.core import TyperGroup

from ecgtool import __version__
from ecgtool.errors import EcgtoolError

log = logging.getLogger("ecgtool")


class _State:
    verbose = 0
    quiet = False
    notes: list[str] = []  # warnings found before logging was set up (deprecated option spellings)


state = _State()


class _StderrFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.levelno >= logging.ERROR:
            return f"ecgtool: error: {msg}"
        if record.levelno >= logging.WARNING:
            return f"ecgtool: warning: {msg}"
        return f"ecgtool: {msg}"


def setup_logging(verbose: int, quiet: bool) -> None:
    root = logging.getLogger("ecgtool")
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_StderrFormatter())
    root.addHandler(handler)
    root.propagate = False
    if quiet:
        root.setLevel(logging.ERROR)
    elif verbose:
        root.setLevel(logging.DEBUG)
    else:
        root.setLevel(logging.INFO)


class Terminated(KeyboardInterrupt):
    """SIGTERM (what scancel and job time limits send), raised where the program is, so that every
    output being written is discarded exactly as on Ctrl-C."""


def _on_sigterm(signum, frame):  # noqa: ARG001
    raise Terminated()


def _handle_sigterm() -> None:
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


class EcgtoolGroup(TyperGroup):
    """Turns library errors into one-line messages and exit codes."""

    GLOBAL_FLAGS = ("-v", "-vv", "-vvv", "--verbose", "-q", "--quiet")
    GLOBAL_VALUED = ("-@", "--threads")

    @classmethod
    def hoist_global_flags(cls, args: list[str]) -> list[str]:
        """``ecgtool info -v x`` means ``ecgtool -v info x``: -v/-q given after the command move to the front
        (up to a ``--``, after which everything is an argument)."""
        front, rest, seen_command = [], [], False
        i = 0
        while i < len(args):
            tok = args[i]
            if tok == "--":
                rest.extend(args[i:])
                break
            if seen_command and tok in cls.GLOBAL_FLAGS:
                front.append(tok)
            elif seen_command and tok in cls.GLOBAL_VALUED and i + 1 < len(args):
                front.extend(args[i:i + 2])
                i += 1
            elif seen_command and (tok.startswith("--threads=") or (tok.startswith("-@") and len(tok) > 2)):
                front.append(tok)
            else:
                if not tok.startswith("-"):
                    seen_command = True
                rest.append(tok)
            i += 1
        return front + rest

    def main(self, args=None, prog_name=None, *a, **kw):
        # Commands record their command line in the tables they write (io.schema.command_line);
        # when the app is called in-process with explicit args, those are the command line.
        from ecgtool.provenance import reset_command_line, set_command_line

        args = list(map(str, args)) if args is not None else sys.argv[1:]
        token = set_command_line(["ecgtool", *args])
        args = self.hoist_global_flags(args)
        _handle_sigterm()
        try:
            return super().main(args, prog_name, *a, **kw)
        finally:
            reset_command_line(token)

    def resolve_command(self, ctx, args):
        """The command and its arguments, old option spellings replaced (cli/options.py's RENAMED)."""
        name, cmd, rest = super().resolve_command(ctx, args)
        if cmd is not None:
            from ecgtool.cli.options import rename_options

            valued = {o for p in cmd.params if p.param_type_name == "option" and not (p.is_flag or p.count)
                      for o in p.opts + p.secondary_opts}
            # the notes are said once logging is set up (by the root group's callback, which runs next)
            path = " ".join([*ctx.command_path.split()[1:], name])  # "probe", "models import"
            rest = rename_options(path, rest, valued, state.notes)
            if ctx.parent is not None:  # a subcommand group: logging is set up already
                _say_notes()
        return name, cmd, rest

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except EcgtoolError as exc:
            if state.verbose:
                traceback.print_exc(file=sys.stderr)
            typer.echo(f"ecgtool: error: {exc}", err=True)
            ctx.exit(exc.exit_code)
        except BrokenPipeError:
            _quiet_broken_pipe()
            ctx.exit(0)
        except Terminated:
            typer.echo("ecgtool: terminated (SIGTERM); no partial output was left", err=True)
            ctx.exit(143)
        except KeyboardInterrupt:
            typer.echo("ecgtool: interrupted", err=True)
            ctx.exit(130)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as exc:  # an ecgtool bug or an unexpected library failure
            if state.verbose:
                traceback.print_exc(file=sys.stderr)
                ctx.exit(1)
            typer.echo(
                f"ecgtool: error: {type(exc).__name__}: {exc} (run with -v for the traceback)", err=True
            )
            ctx.exit(1)


def _say_notes() -> None:
    while state.notes:
        log.warning(state.notes.pop(0))


def _quiet_broken_pipe() -> None:
    """Downstream closed the pipe (… | head): stop quietly, as cat does (-v says so)."""
    import os

    log.debug("output stopped early: the reading end of the pipe was closed")
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


app = typer.Typer(
    cls=EcgtoolGroup,
    name="ecgtool",
    help=(
        "Command-line toolbox for ECG foundation models (ECG-CPC, ECG-JEPA, ECGFounder, ECG-FM, MERL, "
        "HuBERT-ECG, ST-MEM; 'ecgtool models' lists them).\n\n"
        "Commands read and write record tables (Parquet on disk, Arrow IPC on pipes, NPZ for numpy); "
        "'-' means stdin/stdout, so they chain: "
        "ecgtool convert DIR -o - | ecgtool preprocess --preset ecg-fm - -o seg.parquet"
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)


# Shell completion (the scripts in completions/ call the program back with
# _ECGTOOL_COMPLETE set); registering the shells is cheap.
typer.completion.completion_init()


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ecgtool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: int = typer.Option(0, "-v", "--verbose", count=True, help="More log lines; tracebacks on errors."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only errors on stderr; no progress bar."),
    threads: int = typer.Option(None, "-@", "--threads", metavar="N", help="Threads for every command's work "
                                "(reading, filters, Parquet encoding, the model on a CPU); default: the usable "
                                "cores (at most 8 for reading). Also accepted after the command."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    state.verbose = verbose
    state.quiet = quiet
    setup_logging(verbose, quiet)
    _say_notes()
    from ecgtool.io.threads import set_threads

    set_threads(threads)
