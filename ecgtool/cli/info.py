"""ecgtool info: what a table is."""

from __future__ import annotations

import json

import typer

from ecgtool.cli.app import app
from ecgtool.cli.options import Input, Json


@app.command("info")
def info(
    src: Input = "-",
    as_json: Json = False,
) -> None:
    """Describe a table: kind, rows, columns, sampling rates, lead sets, lengths, labels, history.

    A folder of part files (or a glob) is described as the one table it is: rows over every part, and
    the number of part files.

    \b
    Examples:
      ecgtool info records.parquet
      ecgtool convert data/ -o - | ecgtool info -
      ecgtool info --json seg.parquet | jq .lead_sets
    """
    from ecgtool.io import open_table
    from ecgtool.io.describe import describe

    with open_table(src) as reader:
        d = describe(reader)
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    _print_text(d)


def _print_text(d: dict) -> None:
    from rich.table import Table

    from ecgtool.cli.common import console

    con = console(soft_wrap=True)
    con.print(f"[bold]{d['kind']}[/bold] table ({d['format']}, format {d['format_version']}): {d['rows']} rows"
              + (f" from {d['records']} records" if "records" in d else "")
              + (f" in {d['parts']} part file{'s' if d['parts'] != 1 else ''}" if "parts" in d else ""))
    if "sampling_rates" in d:
        con.print("sampling rates: " + ", ".join(f"{k} Hz × {v}" for k, v in d["sampling_rates"].items()))
    if "signal_shape" in d:
        shape = d["signal_shape"]
        con.print("signal: " + ("variable leads × samples" if shape == "variable" else f"{shape[0]} leads × {shape[1]} samples (fixed)"))
    if "duration_s" in d:
        s = d["duration_s"]
        con.print(f"duration: {s['min']}–{s['max']} s (median {s['median']} s)")
    for ls in d.get("lead_sets", [])[:5]:
        con.print(f"leads ({ls['rows']} rows): {' '.join(ls['leads'])}")
    if len(d.get("lead_sets", [])) > 5:
        con.print(f"… and {len(d['lead_sets']) - 5} more lead sets")
    t = Table("column", "type", box=None, pad_edge=False)
    for name, typ in d["columns"].items():
        t.add_row(name, typ)
    con.print(t)
    skip = {"kind", "format", "format_version", "rows", "parts", "records", "columns", "sampling_rates",
            "lead_sets", "duration_s", "signal_shape", "history"}
    for key, value in d.items():
        if key in skip:
            continue
        text = json.dumps(value) if not isinstance(value, str) else value
        if isinstance(value, list) and len(value) > 12:
            text = json.dumps(value[:12])[:-1] + f", … ({len(value)} in all)]"
        con.print(f"{key}: {text}")
    if d["history"]:
        con.print("history:")
        for step in d["history"]:
            con.print(f"  {step.get('time', '')}  ecgtool {step.get('version', '')}: {step.get('command', '')}")
