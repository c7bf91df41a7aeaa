"""Helpers the command modules share: progress, finishing, provenance."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

import typer

from ecgtool.cli.app import state
from ecgtool.errors import RecordErrors, UsageError

log = logging.getLogger("ecgtool")
T = TypeVar("T")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "rec",
             count=None, postfix=None) -> Iterator[T]:
    """A tqdm bar on a terminal; a log line every 30 s otherwise (clusters).

    ``count(item)`` says how many units one item is worth (e.g. rows of a batch);
    ``postfix(item)`` an optional short status (e.g. the current loss) shown on
    the bar and appended to the log lines.
    """
    count = count or (lambda _: 1)
    if state.quiet:
        yield from items
        return
    if sys.stderr.isatty():
        from tqdm import tqdm

        with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True) as bar:
            for item in items:
                yield item
                if postfix is not None:
                    bar.set_postfix_str(postfix(item), refresh=False)
                bar.update(count(item))
        return
    done, start, last = 0, time.monotonic(), time.monotonic()
    for item in items:
        yield item
        done += count(item)
        now = time.monotonic()
        if now - last >= 30:
            last = now
            rate = done / max(now - start, 1e-9)
            of = f"/{total}" if total else ""
            extra = f" {postfix(item)}" if postfix is not None else ""
            log.info("%s: %d%s %s (%.1f %s/s)%s", desc, done, of, unit, rate, unit, extra)


def finish(errors: RecordErrors, done_msg: str | None = None) -> None:
    """Log the summary line and leave with the right exit code."""
    if done_msg:
        log.info(done_msg)
    summary = errors.summary()
    if summary:
        if errors.policy is None:
            log.error("%s (exit %d; --on-error skip accepts this, --on-error fail stops at the first)",
                      summary, errors.exit_code)
        else:
            log.warning(summary)
    if errors.exit_code:
        raise typer.Exit(errors.exit_code)


def parse_list(text: str | None) -> list[str]:
    """A comma-separated option value as a list of names (empty items dropped)."""
    return [t.strip() for t in text.split(",") if t.strip()] if text else []


def parse_floats(text: str, n: int, option: str) -> tuple[float, ...]:
    """Exactly ``n`` comma-separated numbers of ``option`` (a usage error otherwise)."""
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise UsageError(f"{option} {text!r}: expected {n} comma-separated numbers") from None
    if len(vals) != n:
        raise UsageError(f"{option} {text!r}: expected {n} comma-separated numbers, got {len(vals)}")
    return vals


def training_status(rec: dict) -> str:
    """Short status of one update for the progress bar / cluster log lines (pretrain, finetune)."""
    text = f"step {rec['step']} loss {rec['loss']:.4f}"
    if "eval" in rec:
        text += f" val AUPRC {rec['eval'].get('macro_auprc', float('nan')):.4f}"
    return text


def run_steps(trainer, desc: str, postfix=None):
    """Drive a training run's ``steps()`` (a progress bar or log lines on rank 0 only); the last step's record."""
    steps = trainer.steps()
    if trainer.dist.is_main:
        steps = progress(steps, total=trainer.total_steps, desc=desc, unit="step", postfix=postfix)
    last = None
    for last in steps:
        pass
    return last


def record_errors(policy: str | None) -> RecordErrors:
    return RecordErrors(policy, log)


def console(**kwargs):
    """A rich Console for text output; a closed pipe (``| head``) ends the command quietly with exit 0
    (rich alone would exit 1)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            raise BrokenPipeError

    kwargs.setdefault("highlight", False)
    return _Console(**kwargs)


def emit_report(rep: dict, report: str | None, as_json: bool, show) -> None:
    """A command's JSON report: written to ``--report FILE`` (atomically) or stdout (``--report -``, ``--json``);
    otherwise ``show(rep)`` prints it as tables."""
    from ecgtool.io.files import json_text, write_bytes_atomic

    text = json_text(rep)
    if report and report != "-":
        write_bytes_atomic(str(report), (text + "\n").encode())
        log.info("wrote the report to %s", report)
    if as_json or report == "-":
        typer.echo(text)
    elif show is not None:
        show(rep)


def cell(m: dict | None, ci: bool = True) -> str:
    """A metric ``{"value", "ci"}`` as a table cell: 0.912 (0.88–0.94); n/a when it could not be computed."""
    if not m or m.get("value") is None:
        return "n/a"
    if ci and m.get("ci"):
        return f"{m['value']:.3f} ({m['ci'][0]:.2f}–{m['ci'][1]:.2f})"
    return f"{m['value']:.3f}"


def delta(m: dict | None) -> str:
    """A difference ``{"value", "ci"}`` as a signed table cell: +0.012 (-0.01 to +0.03)."""
    if not m or m.get("value") is None:
        return "n/a"
    if m.get("ci"):
        return f"{m['value']:+.3f} ({m['ci'][0]:+.2f} to {m['ci'][1]:+.2f})"
    return f"{m['value']:+.3f}"
