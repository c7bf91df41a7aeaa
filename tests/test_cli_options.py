"""One name per meaning: every option says what it takes, the shared option sets are the same declaration
everywhere, and every old spelling still works with one deprecation note."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main

import ecgtool.cli  # noqa: F401  (registers the commands)
from ecgtool.cli.app import app
from ecgtool.cli.options import RENAMED, rename_options

GENERIC = {"TEXT", "INTEGER", "FLOAT", "PATH", "FILENAME", "BOOLEAN", "STR", "INT"}


def _commands():
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    out = {}

    def walk(cmd, path):
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                walk(cmd.get_command(ctx, name), f"{path} {name}".strip())
        else:
            out[path] = cmd

    walk(root, "")
    return out


COMMANDS = _commands()


def _options(cmd):
    return [p for p in cmd.params if p.param_type_name == "option" and not p.hidden]


def test_every_option_has_a_metavar_and_help():
    problems = []
    for path, cmd in COMMANDS.items():
        for p in _options(cmd):
            name = "/".join(p.opts)
            if not (p.is_flag or p.count) and (not p.metavar or p.metavar.upper() in GENERIC):
                problems.append(f"{path} {name}: no metavar saying what it takes")
            if not (p.help or "").strip():
                problems.append(f"{path} {name}: no help")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("option", ["--label-table", "--label-names", "--fold-column", "--test-folds", "--val-folds",
                                    "--patient-column", "--seed", "--n-boot", "--report", "--device", "--batch-size",
                                    "--shard", "--on-error", "--output-format"])
def test_a_shared_option_reads_the_same_everywhere(option):
    """The shared sets of cli/options.py: the same short name and metavar in every command that takes them."""
    seen = {}
    for path, cmd in COMMANDS.items():
        for p in _options(cmd):
            if option in p.opts:
                seen[path] = (tuple(sorted(p.opts)), p.metavar)
    assert len(seen) >= 2, f"{option} is declared by {sorted(seen)} only"
    if option in ("--report", "--batch-size"):  # the same name and metavar; the help says what is reported/batched
        assert len({m for _, m in seen.values()}) == 1, seen
    else:
        assert len(set(seen.values())) == 1, seen


def test_label_and_split_options_have_one_name():
    """finetune, probe, compare and index agree: no command declares an old spelling any more."""
    old = {o for table in RENAMED.values() for o in table}
    for path, cmd in COMMANDS.items():
        declared = {o for p in cmd.params for o in p.opts + p.secondary_opts}
        for o in RENAMED.get(path, {}):
            assert o not in declared, f"{path} still declares {o}"
        # the new names exist where renamed
        for new in RENAMED.get(path, {}).values():
            assert new in declared, f"{path}: {new} is not an option"
    assert "--fold-col" in old and "--labels-table" in old


@pytest.mark.parametrize("path,old,new", [(p, o, n) for p, t in RENAMED.items() for o, n in t.items()])
def test_every_old_spelling_sets_the_new_option(path, old, new):
    cmd = COMMANDS[path]
    param = next(p for p in cmd.params if new in p.opts)
    valued = {o for p in cmd.params if p.param_type_name == "option" and not (p.is_flag or p.count)
              for o in p.opts + p.secondary_opts}
    notes: list[str] = []
    args = rename_options(path, [old, "x1", f"{old}=x2"], valued, notes)
    assert args == [new, "x1", f"{new}=x2"]
    assert notes == [f"{path} {old} is deprecated and will be removed in the next release; use {new}"]
    ctx = cmd.make_context(path, rename_options(path, [old, "x1"], valued), resilient_parsing=True)
    value = ctx.params[param.name]
    assert value in ("x1", ["x1"], ("x1",)), (path, old, value)


def test_values_and_arguments_after_double_dash_are_not_renamed():
    valued = {"--names", "-o"}
    assert rename_options("compare", ["--names", "--labels", "a.parquet"], valued) == ["--names", "--labels", "a.parquet"]
    assert rename_options("probe", ["--", "--fold-col"], valued) == ["--", "--fold-col"]
    assert rename_options("info", ["--fold-col"], valued) == ["--fold-col"]


def test_old_spelling_through_the_program_says_so_once(cli, tmp_path):
    """The note comes once per command line however often the old spelling is given, before the command's own
    messages; with -q it is not shown."""
    args = ["probe", tmp_path / "none.parquet", "--fold-col", "a", "--group-col", "b", "--fold-col", "c"]
    r = cli(args)
    assert r.exit_code == 2
    lines = r.stderr.splitlines()
    assert sum("--fold-col is deprecated" in line for line in lines) == 1
    assert sum("--group-col is deprecated" in line for line in lines) == 1
    assert "--fold-column and --patient-column/--cv both given" in lines[-1]
    r = cli(["-q", *args])
    assert "deprecated" not in r.stderr


def test_the_readme_names_every_old_spelling():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    conventions = readme[readme.index("## Conventions"):]
    for path, table in RENAMED.items():
        assert f"`{path}" in conventions or f"{path} " in conventions, path
        for old in table:
            assert old in conventions, f"README's conventions do not name {path} {old}"


def test_old_spelling_of_a_subcommand_is_said_too(cli, tmp_path):
    """models import is a command of a command group, resolved after logging is set up: its note still comes."""
    r = cli(["models", "import", tmp_path / "none.pt", "--labels", "a,b", "-o", tmp_path / "x.safetensors"])
    assert r.exit_code != 0
    assert r.stderr.count("models import --labels is deprecated") == 1, r.stderr


def test_commands_choose_arrows_allocator_unless_told_otherwise():
    # mimalloc (pyarrow's default) kept freed pages, so peak memory crept up with the run's length
    code = ("import sys; sys.argv = ['ecgtool', '--version']\n"
            "from ecgtool.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "import pyarrow as pa; print(pa.default_memory_pool().backend_name)")
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == ("jemalloc" if sys.platform == "linux" else "system")
    assert "Unsupported backend" not in out.stderr
    env["ARROW_DEFAULT_MEMORY_POOL"] = "mimalloc"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split()[-1] == "mimalloc"
