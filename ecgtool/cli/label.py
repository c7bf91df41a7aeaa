"""ecgtool label: a label table and a label-definition report from codes and text."""

from __future__ import annotations

import json
import sys
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ecgtool.cli.app import app, state
from ecgtool.cli.options import BatchSize, Input, NoShard, Output, OutputFormat, Shard


@app.command("label")
def label(
    src: Input = "-",
    output: Output = "-",
    output_format: OutputFormat = None,
    vocab: Annotated[Optional[str], typer.Option(
        "--vocab", metavar="NAME|FILE", help="Target vocabulary: a name (see --list-vocabs) or a .json/.txt file. "
        "Default: ptbxl-superclass for SCP codes, cinc2017 for classes, snomed for codes, concepts for text.")] = None,
    text_column: Annotated[Optional[List[str]], typer.Option(
        "--text-column", metavar="COL",
        help="Free-text column(s) (header diagnoses, report lines); repeatable.")] = None,
    codes_column: Annotated[Optional[str], typer.Option(
        "--codes-column", metavar="COL",
        help="SNOMED CT code list column (CinC 2020/2021 '# Dx:'; default: dx).")] = None,
    scp_column: Annotated[Optional[str], typer.Option(
        "--scp-column", metavar="COL", help="PTB-XL SCP codes with likelihoods (default: scp_codes).")] = None,
    class_column: Annotated[Optional[str], typer.Option(
        "--class-column", metavar="COL", help="CinC 2017 class column (N, A, O, ~).")] = None,
    id_column: Annotated[Optional[str], typer.Option(
        "--id-column", metavar="COL",
        help="Record id column (default: the first of record_id, record, ecg_id, ID, id the input has).")] = None,
    split_column: Annotated[Optional[str], typer.Option(
        "--split-column", metavar="COL",
        help="Report counts, prevalence and pos_weight per value of this column (e.g. strat_fold).")] = None,
    min_likelihood: Annotated[float, typer.Option(
        "--min-likelihood", min=0, max=100, metavar="PCT",
        help="PTB-XL: drop SCP statements whose likelihood (0-100 %) is below this; likelihood 0 means unknown "
        "and is always kept.")] = 0.0,
    uncertain: Annotated[str, typer.Option(
        "--uncertain", metavar="positive|negative|missing",
        help="Uncertain findings ('possible', 'probable', SCP likelihood < 100): positive, negative or missing.")
    ] = "positive",
    weights: Annotated[bool, typer.Option(
        "--weights", help="Add a '<label>__w' float column per label (uncertainty weight of a positive; 1 otherwise).")] = False,
    no_hierarchy: Annotated[bool, typer.Option(
        "--no-hierarchy", help="Do not let a finding imply its ancestors.")] = False,
    join: Annotated[Optional[str], typer.Option(
        "--join", metavar="FILE",
        help="CSV with per-record metadata (ptbxl_database.csv, REFERENCE.csv, ludb.csv) joined by record id.")
    ] = None,
    join_on: Annotated[Optional[str], typer.Option(
        "--join-on", metavar="COL",
        help="Record id column of the --join CSV (default: the one that matches most ids).")] = None,
    report: Annotated[Optional[str], typer.Option(
        "--report", metavar="FILE", help="Write the label-definition report to FILE.json or FILE.csv.")] = None,
    report_only: Annotated[bool, typer.Option(
        "--report-only", help="Print the report; write no label table.")] = False,
    list_vocabs: Annotated[bool, typer.Option(
        "--list-vocabs", help="List the named vocabularies and exit.")] = False,
    batch_size: BatchSize = 1024,
    shard: Shard = None,
    no_shard: NoShard = False,
) -> None:
    """Turn SNOMED CT codes, PTB-XL SCP codes, CinC 2017 classes or free text into a label table.

    The table has record_id and one column per label of the target vocabulary:
    1, 0 or null (nothing recognisable about the record). A report on stderr
    (and in --report) gives counts, prevalence and pos_weight = (1-p)/p per
    label and split, unknown codes, unmapped items and unrecognised text.
    SRC is a record table or a plain CSV (.csv/.tsv, e.g. ptbxl_database.csv
    with --id-column ecg_id). The signal column is never read.

    \b
    Examples:
      ecgtool label ptbxl.parquet --split-column strat_fold -o labels.parquet
      ecgtool convert data/cinc2021/ -o - | ecgtool label - --vocab snomed -o labels.parquet
      ecgtool label ludb.parquet --text-column diagnosis --vocab ecgfm-17 --report rep.json -o lab.parquet
      ecgtool label records.parquet --join REFERENCE.csv --class-column label -o labels.parquet
      ecgtool label --list-vocabs
    """
    from ecgtool.errors import UsageError
    from ecgtool.labels import SourceColumns, list_vocabularies, load_vocabulary, run_label, write_report

    if list_vocabs:
        for name in list_vocabularies():
            try:
                v = load_vocabulary(name)
                typer.echo(f"{name}\t{len(v.labels)} labels\t{v.title}")
            except Exception as exc:  # a vocabulary whose data file is absent
                typer.echo(f"{name}\tunavailable\t{exc}")
        return
    if report_only:
        dest = None
    else:
        dest = output
    if dest == "-" and sys.stdout.isatty() and not report_only:
        raise UsageError("refusing to write a binary table to the terminal",
                         "give -o FILE, pipe into another command, or use --report-only")
    from ecgtool.io.shard import parse_shard, shard_path

    sh = parse_shard(shard, use_env=not no_shard)
    if dest is not None:
        dest = shard_path(dest, sh)
    cols = SourceColumns(text=list(text_column or []), codes=codes_column, scp=scp_column, classes=class_column)
    rep, _ = run_label(
        src, dest, vocab=vocab, shard=sh, columns=cols, id_column=id_column, split_column=split_column,
        min_likelihood=min_likelihood, uncertain=uncertain, weights=weights, hierarchy=not no_hierarchy,
        join=join, join_on=join_on, fmt=output_format, batch_size=batch_size,
    )
    if report:
        write_report(rep, report)
    if not state.quiet:
        _print_report(rep)


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _print_report(rep: dict) -> None:
    from ecgtool.cli.common import console
    from rich.table import Table

    con = console(stderr=True, soft_wrap=True, width=None if sys.stderr.isatty() else 200)
    un = rep["unlabelled"]
    con.print(f"[bold]{rep['vocabulary']}[/bold]: {len(rep['labels'])} labels from {json.dumps(rep['sources'])}; "
              f"{rep['records']} records, {rep['labelled']} labelled, unlabelled: {un['empty']} empty, "
              f"{un['unrecognised']} unrecognised, {un['out_of_scope']} out of scope")
    if rep.get("repeated_rows"):
        con.print(f"{rep['repeated_rows']} more rows repeat a record id (segments of one record): "
                  "one label row per record")
    if "join" in rep:
        j = rep["join"]
        con.print(f"join {j['file']} on {j['on']}: {j['joined']} joined, {j['not_joined']} not joined"
                  + (f" (e.g. {', '.join(map(str, j['not_joined_examples']))})" if j["not_joined"] else ""))
    uc = rep["unknown_codes"]
    if uc["total"]:
        for source, codes in uc["codes"].items():
            shown = ", ".join(f"{c} ×{n}" for c, n in list(codes.items())[:10])
            more = f", … ({len(codes)} distinct)" if len(codes) > 10 else ""
            con.print(f"[yellow]unknown {source} codes[/yellow] in {uc['records']} records: {shown}{more}")
    um = rep["unmapped"]
    if um["total"]:
        items = list(um["items"].items())
        shown = ", ".join(f"{k}{' (' + v['name'] + ')' if 'name' in v and v['name'] != k else ''} ×{v['count']}"
                          for k, v in items[:8])
        more = f", … ({len(items)} distinct)" if len(items) > 8 else ""
        con.print(f"not in the vocabulary: {shown}{more}")
    if rep["unmapped_labels"]:
        con.print(f"{len(rep['unmapped_labels'])} labels of {rep['vocabulary']} have no mapping "
                  f"(always missing): {', '.join(rep['unmapped_labels'][:6])}{', …' if len(rep['unmapped_labels']) > 6 else ''}")
    for ex in rep["unrecognised_examples"][:3]:
        con.print(f"unrecognised text ({ex['record_id']}): {ex['text'][:80]!r}")
    splits = [s for s in (rep["labels"][0]["splits"] if rep["labels"] else {}) if s != "all"]
    t = Table("label", "pos", "neg", "missing", "prevalence", "pos_weight", box=None, pad_edge=False)
    for s in splits:
        t.add_column(f"pw[{s}]")
    labels = rep["labels"]
    shown = labels if len(labels) <= 40 else [lab for lab in labels if lab["splits"]["all"]["positive"]][:40]
    for lab in shown:
        a = lab["splits"]["all"]
        cells = [lab["name"], str(a["positive"]), str(a["negative"]), str(a["missing"]),
                 _fmt(a["prevalence"]), _fmt(a["pos_weight"], 2) if a["pos_weight"] is not None else (a.get("note") or "–")]
        for s in splits:
            cells.append(_fmt(lab["splits"].get(s, {}).get("pos_weight"), 2))
        t.add_row(*cells)
    con.print(t)
    if len(shown) < len(labels):
        con.print(f"({len(labels) - len(shown)} more labels, most without positives: see --report)")
