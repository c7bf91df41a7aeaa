"""The man pages, completions and --help texts are generated from the app and kept in step."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import typer.main

from conftest import ROOT
from ecgtool.cli import app
from ecgtool.cli.docgen import completion_scripts, man_pages


def _all_commands():
    root = typer.main.get_command(app)
    ctx = typer.Context(root)
    out = []

    def walk(cmd, path):
        if hasattr(cmd, "list_commands"):
            for name in cmd.list_commands(ctx):
                sub = cmd.get_command(ctx, name)
                out.append((path + [name], sub))
                walk(sub, path + [name])

    walk(root, [])
    return out


def test_man_pages_are_current():
    pages = man_pages()
    on_disk = {p.name: p.read_text() for p in (ROOT / "man").glob("*.1")}
    stale = sorted(n for n in set(pages) | set(on_disk) if pages.get(n) != on_disk.get(n))
    assert not stale, f"man/ is stale for {stale}: run python scripts/gen_docs.py"


def test_completions_are_current():
    for name, text in completion_scripts().items():
        path = ROOT / "completions" / name
        assert path.exists() and path.read_text() == text, f"{path} is stale: run python scripts/gen_docs.py"


def test_every_command_has_a_page():
    pages = man_pages()
    for path, _ in _all_commands():
        assert "ecgtool-" + "-".join(path) + ".1" in pages


@pytest.mark.parametrize("path", [p for p, c in _all_commands() if not hasattr(c, "list_commands")],
                         ids=lambda p: " ".join(p))
def test_help_has_examples(cli, path):
    res = cli(path + ["--help"])
    assert res.exit_code == 0
    assert "Examples:" in res.output and "ecgtool " in res.output.split("Examples:")[1]


def test_help_and_completion_do_not_import_torch():
    code = (
        "import sys, os\n"
        "from ecgtool.cli import app\n"
        "try:\n"
        "    app(['--help'], prog_name='ecgtool')\n"
        "except SystemExit:\n"
        "    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported by --help'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    env = dict(os.environ, _ECGTOOL_COMPLETE="complete_bash", COMP_WORDS="ecgtool ", COMP_CWORD="1")
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "ecgtool"], env=env, capture_output=True, text=True)
    assert "info" in out.stdout.split()
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if "|" in line}
    assert "torch" not in imported


def test_version_flag(cli):
    from ecgtool import __version__

    res = cli(["--version"])
    assert res.exit_code == 0 and __version__ in res.output
