"""The command line: a thin layer over the library (one module per command)."""

from __future__ import annotations

import importlib
import os
import sys

from ecgtool.cli.app import app

# Order here is the order in --help.
COMMANDS = [
    "convert",
    "preprocess",
    "label",
    "pretrain",
    "finetune",
    "embed",
    "predict",
    "probe",
    "compare",
    "saliency",
    "index",
    "search",
    "models",
    "info",
]

for _name in COMMANDS:
    importlib.import_module(f"ecgtool.cli.{_name}")


def main() -> None:
    # Arrow's buffers from jemalloc (bundled with pyarrow's Linux wheels), else the C library's allocator:
    # pyarrow's default, mimalloc, kept freed pages for reuse, so a long run's peak memory crept up with
    # its length (predict -@ 2 over 10x the records: 1.19x the peak; jemalloc 0.98x, the C library 1.10x),
    # and with threads it faulted pages in again and again (convert -@ 2: 0.5-0.9 s of system time per 500
    # PTB-XL records, jemalloc 0.35-0.44 s); see bench/RESULTS.md, "memory". Read when pyarrow first
    # allocates, inherited by worker processes; a user's own setting wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "jemalloc" if sys.platform == "linux" else "system")
    app(prog_name="ecgtool")
