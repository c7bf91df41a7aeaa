#!/usr/bin/env python
"""Regenerate man/ and completions/ from the app (run after changing any option or command)."""

from pathlib import Path

from ecgtool.cli.docgen import write_all

if __name__ == "__main__":
    for path in write_all(Path(__file__).resolve().parents[1]):
        print(path)
