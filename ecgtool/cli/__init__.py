"""The command line: a thin layer over the library (one module per command)."""

from __future__ import annotations

import importlib

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
    app(prog_name="ecgtool")
