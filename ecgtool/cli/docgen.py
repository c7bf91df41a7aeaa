"""Man pages and shell completion scripts, generated from the app itself.

``python scripts/gen_docs.py`` writes ``man/`` and ``completions/``; a test
regenerates them in memory and fails when the files in the repository are stale.
"""

from __future__ import annotations

import re
from pathlib import Path

import typer
import typer.main
from typer._completion_shared import get_completion_script

from ecgtool import __version__
from ecgtool.cli import app

PROG = "ecgtool"
COMPLETE_VAR = "_ECGTOOL_COMPLETE"
SHELLS = {"bash": "ecgtool.bash", "zsh": "_ecgtool", "fish": "ecgtool.fish"}

OVERVIEW = r"""
.SH STREAMS
Every command reads and writes tables of ECG records (see docs/format.md for the contract).
On disk the default is Parquet; on a pipe the default is the Arrow IPC stream format,
because Parquet and NPZ cannot be read from a non-seekable stream.
NPZ is an export/import format for numpy users.
The output format comes from \fB\-O\fR, else from the \fB\-o\fR extension
(.parquet, .arrow, .npz), else from whether stdout is a pipe.
.PP
\fB\-\fR means stdin or stdout. Data goes to stdout only; logs, warnings and
progress go to stderr. A binary table is never written to a terminal.
Input formats are recognised from their first bytes (Parquet, Arrow IPC stream or file, NPZ),
and gzip or zstd wrappers are removed transparently.
Memory stays bounded by \fB\-\-batch\-size\fR whatever the number of records.
A command that fails leaves no partial output file: output is written to a temporary
file beside the target and renamed on success. A symbolic link is written through (its
target is replaced); a device or FIFO given as -o (/dev/null, a named pipe) is written in place.
New files get mode 0666 minus the umask; a replaced file keeps its mode.
A closed downstream pipe (\fB| head\fR) ends the command quietly.
.PP
Columns a command does not know pass through untouched, so metadata and labels ride
along a pipeline. Each command appends its command line to the table's history
(shown by \fBecgtool info\fR).
.SH SHARDS, THREADS AND PRECISION
An input table may be one file, \fB\-\fR, a folder of part files, a glob or a list: parts are
read in name order as one table. Every part is checked before a row is read: a part whose columns,
kind, format version or normalisation differ from the first's is refused, naming both files, and a
truncated part is named. \fB\-o DIR/\fR (or an existing folder) writes part files
part\-00000.parquet, ... each encoded by one of the \fB\-@\fR threads, all or nothing; a folder that
already holds tables is refused, except the parts of the other shards of one run
(part\-shardKofN\-00000.parquet, ...), so that N shards write one folder.
.PP
\fB\-\-shard K/N\fR (convert, preprocess, label, embed, predict, saliency) keeps the records whose
id hashes to shard K of N (1 <= K <= N), the same records in every step, so the shards of a
pipeline need no merge; inside a SLURM array job the shard comes from
SLURM_ARRAY_TASK_ID and SLURM_ARRAY_TASK_COUNT (said on stderr; \fB\-\-no\-shard\fR ignores them).
examples/slurm/ has array-job scripts.
.PP
\fB\-@\fR/\fB\-\-threads N\fR (before or after the command) sets the threads of every command's work:
readers, filters, Parquet encoding and the model on a CPU; the default is the usable cores.
0, or more than the usable cores, is clamped with a note. \fBconvert \-j\fR is the same option.
On a node whose cores other jobs also use, set OMP_WAIT_POLICY=PASSIVE: torch's threads then sleep
while they wait instead of spinning on a core another process needs (predict \-@ 2 took 4 s instead
of 14\-39 s on two busy cores).
.PP
Model commands (embed, predict) take \fB\-\-precision auto\fR by default: bfloat16 on a CPU with
AVX512\-BF16 or AMX and on a CUDA GPU with bf16, float32 elsewhere; the choice is said once on
stderr. \fB\-\-precision fp32\fR gives full float32 results (the same on every machine).
.SH BAD RECORDS
A bad record does not stop a long run: it gets a one-line error on stderr naming the
record and the cause, and a count is printed at the end.
\fB\-\-on\-error fail\fR stops at the first bad record;
\fB\-\-on\-error skip\fR drops bad records and exits 0.
.SH EXIT STATUS
.TP
.B 0
success
.TP
.B 1
failure (the message says which file or record, why, and what to do)
.TP
.B 2
usage error (bad option or argument)
.TP
.B 3
finished, but some records were skipped (see \-\-on\-error)
.TP
.B 130
interrupted
.SH EXAMPLES
.nf
ecgtool convert data/ptbxl/records500 \-o \- | ecgtool preprocess \-\-preset ecg\-fm \- \-o seg.parquet
ecgtool info seg.parquet
.fi
"""


def _esc(text: str) -> str:
    text = text.replace("\\", "\\\\").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in text.split("\n"))


def _split_help(help_text: str) -> tuple[str, str, str]:
    """(first line, body, examples) of a command docstring."""
    text = (help_text or "").strip()
    examples = ""
    m = re.search(r"\n\s*\x08?\s*\n?\s*Examples:\s*\n", text)
    if m:
        examples = text[m.end():]
        text = text[: m.start()]
    text = text.replace("\b\n", "").replace("\b", "")
    lines = text.split("\n\n", 1)
    first = " ".join(lines[0].split())
    body = lines[1].strip() if len(lines) > 1 else ""
    ex = "\n".join(line.strip() for line in examples.replace("\b", "").strip().split("\n") if line.strip())
    return first, body, ex


def _option_lines(cmd) -> list[str]:
    ctx = typer.Context(cmd)
    out = []
    for p in cmd.params:
        if getattr(p, "hidden", False) or p.param_type_name == "argument":
            continue
        rec = p.get_help_record(ctx)
        if not rec:
            continue
        names, help_ = rec
        out += [".TP", f"\\fB{_esc(names)}\\fR", _esc(" ".join(help_.split()))]
    out += [".TP", "\\fB\\-h\\fR, \\fB\\-\\-help\\fR", "show the help and exit"]
    return out


def _usage(cmd, path: str) -> str:
    pieces = [f"\\fB{path}\\fR", "[OPTIONS]"]
    for p in cmd.params:
        if p.param_type_name == "argument":
            name = (p.metavar or p.name).upper()
            if p.nargs == -1 and not name.endswith("..."):
                name += "..."
            pieces.append(name if p.required else f"[{name}]")
    if hasattr(cmd, "commands"):
        pieces.append("COMMAND [ARGS]...")
    return " ".join(pieces)


def _page(cmd, path: str, subcommands: list[tuple[str, object]]) -> str:
    first, body, ex = _split_help(cmd.help or "")
    title = path.replace(" ", "-")
    lines = [
        f'.TH {title.upper()} 1 "" "ecgtool {__version__}" "ecgtool manual"',
        ".SH NAME",
        f"{_esc(title)} \\- {_esc(first)}",
        ".SH SYNOPSIS",
        _esc(_usage(cmd, path)).replace("\\\\fB", "\\fB").replace("\\\\fR", "\\fR"),
        ".SH DESCRIPTION",
        _esc(first),
    ]
    if body:
        for para in body.split("\n\n"):
            lines += [".PP", _esc(" ".join(para.split()))]
    args = [p for p in cmd.params if p.param_type_name == "argument"]
    if args:
        lines.append(".SH ARGUMENTS")
        for p in args:
            lines += [".TP", f"\\fI{_esc((p.metavar or p.name).upper())}\\fR", _esc(" ".join((getattr(p, 'help', '') or '').split()))]
    if subcommands:
        lines.append(".SH COMMANDS")
        for name, sub in subcommands:
            lines += [".TP", f"\\fB{_esc(name)}\\fR", _esc(_split_help(sub.help or "")[0])]
    lines.append(".SH OPTIONS")
    lines += _option_lines(cmd)
    if ex:
        lines += [".SH EXAMPLES", ".nf", _esc(ex), ".fi"]
    if path == PROG:
        lines.append(OVERVIEW.strip())
        lines += _renamed()
    lines += [".SH SEE ALSO", "\\fBecgtool\\fR(1), docs/format.md"]
    return "\n".join(lines) + "\n"


def _renamed() -> list[str]:
    """The old option spellings still accepted (cli/options.py's RENAMED)."""
    from ecgtool.cli.options import RENAMED

    lines = [".SH RENAMED OPTIONS", "An option has one name in every command. These old spellings are still accepted "
             "for one release, each with a deprecation note on stderr:"]
    for cmd, table in RENAMED.items():
        for old, new in table.items():
            lines += [".TP", f"\\fB{_esc(cmd)} {_esc(old)}\\fR", f"now {_esc(new)}"]
    return lines


def man_pages() -> dict[str, str]:
    """File name -> roff text, one page per (sub)command plus the overview."""
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    pages: dict[str, str] = {}

    def walk(cmd, path: str) -> None:
        subs = []
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                subs.append((name, cmd.get_command(ctx, name)))
        pages[path.replace(" ", "-") + ".1"] = _page(cmd, path, subs)
        for name, sub in subs:
            walk(sub, f"{path} {name}")

    walk(root, PROG)
    return pages


def completion_scripts() -> dict[str, str]:
    return {
        fname: get_completion_script(prog_name=PROG, complete_var=COMPLETE_VAR, shell=shell).rstrip("\n") + "\n"
        for shell, fname in SHELLS.items()
    }


def write_all(root: Path) -> list[Path]:
    written = []
    man = root / "man"
    comp = root / "completions"
    man.mkdir(exist_ok=True)
    comp.mkdir(exist_ok=True)
    pages = man_pages()
    for old in man.glob("*.1"):
        if old.name not in pages:
            old.unlink()
    for name, text in pages.items():
        (man / name).write_text(text)
        written.append(man / name)
    for name, text in completion_scripts().items():
        (comp / name).write_text(text)
        written.append(comp / name)
    return written
