"""Helpers for the tests that run documented examples exactly as written: the commands of the app, the
"Examples:" lines of each command's --help, code blocks of a Markdown file, stand-ins for the SLURM
launchers, and running a shell snippet with ``bash -euo pipefail`` so that ``ecgtool`` (and ``python -m
ecgtool``) is this checkout's, whatever else is installed."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUPERCLASSES = ("NORM", "MI", "STTC", "CD", "HYP")


def commands() -> list[list[str]]:
    """Every command path of the app, groups and their subcommands included: [['convert'], ..., ['models'],
    ['models', 'info'], ...], in --help order."""
    import typer
    import typer.main

    from ecgtool.cli import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    out: list[list[str]] = []

    def walk(cmd, path):
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                out.append(path + [name])
                walk(cmd.get_command(ctx, name), path + [name])

    walk(root, [])
    return out


@cache
def _help(path: tuple[str, ...]) -> str:
    from typer.testing import CliRunner

    from ecgtool.cli import app

    res = CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    return res.output


def help_examples(path: list[str] | str) -> list[str]:
    """The examples in the "Examples:" section of ``ecgtool PATH --help``, one string each; a line ending in a
    backslash continues on the next (kept as two lines, as a shell reads them)."""
    path = [path] if isinstance(path, str) else list(path)
    text = _help(tuple(path))
    if "Examples:" not in text:
        return []
    ex: list[str] = []
    for raw in text.split("Examples:", 1)[1].splitlines():
        ln = raw.strip()
        if not ln:
            if ex:
                break
            continue
        if ex and ex[-1].endswith("\\"):
            ex[-1] = ex[-1] + "\n" + ln
        elif raw[:1].isspace():
            ex.append(ln)
        else:  # the next section ("Arguments:", "Options:")
            break
    return ex


def all_help_examples() -> list[tuple[str, str]]:
    """(command, example) for every command's --help, each distinct example once (under the first command
    that shows it: 'models' repeats examples of 'models info' and 'models import')."""
    seen: set[str] = set()
    out = []
    for path in commands():
        for e in help_examples(path):
            if e not in seen:
                seen.add(e)
                out.append((" ".join(path), e))
    return out


def code_blocks(doc: Path) -> list[tuple[str, str]]:
    """(language, body) of every fenced code block of a Markdown file, in order ('' when unnamed)."""
    return re.findall(r"^```([\w-]*)\n(.*?)^```", doc.read_text(encoding="utf-8"), flags=re.S | re.M)


def bin_env(**extra) -> dict:
    """The environment examples run in: this interpreter's bin folder first on PATH, this checkout first on
    PYTHONPATH, no SLURM variables of the job the tests may run in, wide help text, and half the cores for
    torch's threads (the tests run two examples at a time)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               COLUMNS="200")
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores // 2)))
    for k in [k for k in env if k.startswith("SLURM_")]:
        del env[k]
    env.update(extra)
    return env


def missing_tool(script: str, env: dict) -> str | None:
    """The first program a snippet starts (at its start or after a pipe, ';' or '&&') that is not on PATH."""
    import shlex
    import shutil

    for part in re.split(r"\|\||&&|[|;\n]", script.replace("\\\n", " ")):
        words = shlex.split(part)
        if words and not shutil.which(words[0], path=env.get("PATH")):
            return words[0]
    return None


def run_sh(script: str, cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a snippet as written with bash -euo pipefail; stdout is bytes (an example may write a table to it)."""
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, capture_output=True,
                          env=env or bin_env(), timeout=timeout, check=False)


def ptbxl_cohort(rows: list[dict], quota: dict[str, int]) -> list[int]:
    """PTB-XL ecg_ids, in order, taken while some superclass of the record still lacks positives in the
    record's split (fold 9: val, 10: test, else train): every label has both classes on every side."""
    have: dict = {}
    out = []
    for row in rows:
        side = {"9": "val", "10": "test"}.get(str(row["strat_fold"]), "train")
        pos = [n for n in SUPERCLASSES if row[n] == 1]
        if any(have.get((side, n), 0) < quota[side] for n in pos):
            out.append(int(row["record_id"]))
            for n in pos:
                have[(side, n)] = have.get((side, n), 0) + 1
    return out


SBATCH = r'''#!/usr/bin/env python3
"""sbatch stand-in: runs --wrap's command once per task of --array=A-B[:S] on this machine, all at once,
with the SLURM_ARRAY_* variables a job array sets; waits for them (sbatch itself would return at once)."""
import os, subprocess, sys
args = sys.argv[1:]
array = wrap = None
while args:
    a = args.pop(0)
    if a.startswith("--array="): array = a.split("=", 1)[1]
    elif a == "--array": array = args.pop(0)
    elif a.startswith("--wrap="): wrap = a.split("=", 1)[1]
    elif a == "--wrap": wrap = args.pop(0)
    else: sys.exit(f"sbatch stand-in: {a!r} is not understood here")
span, _, step = array.partition(":")
lo, _, hi = span.partition("-")
ids = list(range(int(lo), int(hi or lo) + 1, int(step or 1)))
procs = []
for i in ids:
    env = dict(os.environ, SLURM_JOB_ID=str(1000 + i), SLURM_ARRAY_JOB_ID="1000", SLURM_ARRAY_TASK_ID=str(i),
               SLURM_ARRAY_TASK_MIN=str(ids[0]), SLURM_ARRAY_TASK_MAX=str(ids[-1]),
               SLURM_ARRAY_TASK_STEP=str(step or 1), SLURM_ARRAY_TASK_COUNT=str(len(ids)), SLURM_CPUS_PER_TASK="1")
    procs.append(subprocess.Popen(["bash", "-c", wrap], env=env))
print("Submitted batch job 1000")
sys.exit(max(p.wait() for p in procs))
'''

SRUN = r'''#!/usr/bin/env python3
"""srun stand-in, one node: starts --ntasks-per-node N (or --ntasks / -n N) copies of the command with the
variables srun sets for each task (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, ...); GPU options are
accepted and ignored. MASTER_PORT, when not set, is a free port (a batch script sets it on a cluster)."""
import os, socket, subprocess, sys
args = sys.argv[1:]
n = 1
while args and args[0].startswith("-"):
    a = args.pop(0)
    key, eq, val = a.partition("=")
    if key in ("--ntasks-per-node", "--ntasks", "-n"):
        n = int(val if eq else args.pop(0))
    elif key in ("--gpus-per-task", "--gpus", "--gres", "--cpus-per-task", "-c", "--nodes", "-N"):
        None if eq else args.pop(0)
    else:
        sys.exit(f"srun stand-in: {a!r} is not understood here")
env = dict(os.environ)
if "MASTER_PORT" not in env:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env["MASTER_PORT"] = str(s.getsockname()[1])
procs = [subprocess.Popen(args, env=dict(env, SLURM_PROCID=str(i), SLURM_NTASKS=str(n), SLURM_LOCALID=str(i),
                                         SLURM_NODEID="0", SLURM_NNODES="1", SLURM_JOB_ID="1000"))
         for i in range(n)]
sys.exit(max(p.wait() for p in procs))
'''


def write_launchers(folder: Path) -> Path:
    """sbatch and srun stand-ins (the machine running the tests is no SLURM cluster) in folder; put it first
    on PATH to use them."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in (("sbatch", SBATCH), ("srun", SRUN)):
        (folder / name).write_text(text)
        (folder / name).chmod(0o755)
    return folder
