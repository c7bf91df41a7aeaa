"""The command line: a thin layer over the library (one module per command)."""

from __future__ import annotations

import importlib
import os

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
    # Arrow's buffers from the C library's allocator: pyarrow's default (mimalloc) keeps freed pages for
    # reuse, which made a long run's peak memory creep up with its length (embed -@ 2 over 10x the
    # records: 1.19x the peak, against 1.08x with the system allocator, at the same speed; see
    # bench/RESULTS.md, "memory"). Read when pyarrow first allocates; a user's own setting wins.
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")
    app(prog_name="ecgtool")
