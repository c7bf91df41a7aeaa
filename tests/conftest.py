"""Shared fixtures: paths to ../shared (skipped cleanly when absent)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ECGTOOL_SHARED", ROOT.parent / "shared"))
DATA = SHARED / "data"
REFERENCE = SHARED / "reference"


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} is not here (tests that read ../shared need it beside the project)")
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return _need(DATA)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture
def cli():
    """Run the CLI in-process: cli(args, input=bytes) -> Result (exit_code, stdout_bytes, stderr)."""
    from typer.testing import CliRunner

    from ecgtool.cli import app

    runner = CliRunner()

    def run(args, input=None):
        return runner.invoke(app, [str(a) for a in args], input=input, catch_exceptions=False)

    return run


@pytest.fixture(autouse=True)
def _fresh_ecgtool_logger():
    """Each test starts with the 'ecgtool' logger as the library leaves it: a command run in-process
    (CliRunner) gives it a handler on that run's captured stderr, closed afterwards, and stops it
    propagating, so a later test's caplog would see nothing."""
    yield
    lg = logging.getLogger("ecgtool")
    for h in list(lg.handlers):
        lg.removeHandler(h)
    lg.propagate = True
    lg.setLevel(logging.NOTSET)
