"""ecgtool search: the nearest indexed records of each query; a patient's history; kNN votes; change from baseline."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.provenance import command_line
from ecgtool.cli.app import app
from ecgtool.cli.options import BatchSize, Device, Model, OnError


@app.command("search")
def search(
    index: Annotated[str, typer.Argument(metavar="INDEX", help="An index file written by 'ecgtool index'.")],
    src: Annotated[str, typer.Argument(metavar="QUERIES", help="Embeddings of the index's model, or records (a table, raw ECG files); '-' for stdin.")] = "-",
    k: Annotated[int, typer.Option("-k", min=1, metavar="N", help="Neighbours per query.")] = 10,
    same_patient: Annotated[bool, typer.Option("--same-patient", help="Only the query's patient's ECGs (by patient id), ordered by date: the patient's history.")] = False,
    exclude_self: Annotated[bool, typer.Option("--exclude-self", help="Leave out the query itself (same record id, and segment when both have one).")] = False,
    vote: Annotated[Optional[str], typer.Option("--vote", metavar="LABELCOLS", help="Comma-separated label columns of the index: one row per query with the neighbours' vote (and the model's own prediction and agreement, for records as queries).")] = None,
    weighted: Annotated[bool, typer.Option("--weighted", help="--vote: weight each neighbour by 1/distance (default: one vote each).")] = False,
    compare: Annotated[bool, typer.Option("--compare", help="With --same-patient: compare each query record with the patient's latest earlier ECG (distance, probability change, overlay PNG).")] = False,
    png: Annotated[Optional[str], typer.Option("--png", metavar="DIR", help="--compare: folder for one PNG per query (both tracings overlaid on ECG grid paper).")] = None,
    records: Annotated[Optional[str], typer.Option("--records", metavar="SRC", help="--compare: a table or raw files holding the baselines' tracings (default: the index's 'source' column).")] = None,
    ef: Annotated[Optional[int], typer.Option(
        "--ef", min=1, metavar="N",
        help="hnsw: candidate list while searching (higher: better recall, slower; default: the index's "
        "ef_search, at least -k).")] = None,
    model: Model = None,
    output: Annotated[str, typer.Option("-o", "--output", metavar="FILE", help="Output table (a file, or a folder/ of part files); default: a readable list on a terminal, else stdout.")] = "",
    output_format: Annotated[Optional[str], typer.Option("-O", "--output-format", metavar="FORMAT", help="parquet, arrow, npz, or text (the readable list, also in a pipe); default: from -o, a list on a terminal, else Arrow.")] = None,
    device: Device = "auto",
    batch_size: BatchSize = 256,
    on_error: OnError = None,
) -> None:
    """Search an index: for each query, the k nearest records with distance, metadata and labels.

    Queries are embeddings of the index's model, or records that are embedded
    here with it (the bundled default model, or -m). --same-patient restricts
    the neighbours to the query's patient and orders them by date; a patient
    with no other ECG gives an empty result and a note (exit 0). --vote turns
    the neighbours' labels into a kNN classifier. --compare reports the change
    from the patient's previous ECG. Without -o on a terminal, a readable list.

    \b
    Examples:
      ecgtool search ptbxl.ecgidx ptbxl/records100/00000/00017_lr.hea
      ecgtool search ptbxl.ecgidx query_emb.parquet -k 5 --exclude-self -o neighbours.parquet
      ecgtool search ptbxl.ecgidx ptbxl/records100/00000/00039_lr.hea --same-patient
      ecgtool search ptbxl.ecgidx emb.parquet --exclude-self --vote NORM,MI,STTC -o votes.parquet
      ecgtool search ptbxl.ecgidx ptbxl/records100/00000/00039_lr.hea --same-patient --compare --png figs/
    """
    import sys
    import tempfile

    from ecgtool.cli.common import finish, parse_list, record_errors
    from ecgtool.cli.modelrun import open_input, open_model
    from ecgtool.errors import UsageError
    from ecgtool.io.stream import refuse_terminal
    from ecgtool.io.threads import default_threads
    from ecgtool.retrieval.index import load_index, set_threads
    from ecgtool.retrieval.search import SearchOptions, is_embedding_table
    from ecgtool.retrieval.search import search as run_search

    if compare and not same_patient:
        raise UsageError("--compare compares with the same patient's earlier ECG", "add --same-patient")
    if (png or records) and not compare:
        raise UsageError("--png and --records go with --compare")
    if compare and vote:
        raise UsageError("--compare and --vote are separate reports", "run search twice")
    errors = record_errors(on_error)
    set_threads(default_threads(64))
    idx = load_index(index)
    readable = output_format == "text" or (output == "" and output_format is None and sys.stdout.isatty())
    if not readable:
        refuse_terminal(output or "-")
    with open_input(src, batch_size, errors) as reader:
        net = dev = None
        if compare or not is_embedding_table(reader):
            net, dev = _model_for(idx, model, device, open_model)
        with tempfile.TemporaryDirectory(prefix="ecgtool-search-") as tmp:
            dest = f"{tmp}/out.arrow" if readable else (output or "-")
            fmt = "arrow" if readable else output_format
            if readable and output not in ("", "-"):
                raise UsageError("-O text prints to stdout", "leave out -o, or choose a table format")
            if compare:
                from ecgtool.retrieval.baseline import compare as run_compare

                stats = run_compare(reader, idx, dest, index_name=index, src_name=getattr(reader, "name", src), model=net,
                                    device=dev, records_src=records, png_dir=png, batch_size=min(batch_size, 64),
                                    errors=errors, fmt=fmt, argv=command_line())
                if readable:
                    _print_compare(dest)
                done = f"compared {stats.compared} of {stats.queries} queries with a baseline" + (
                    f"; PNGs in {png}" if png and stats.pngs else "")
            else:
                opts = SearchOptions(k=k, same_patient=same_patient, exclude_self=exclude_self, ef=ef,
                                     vote=parse_list(vote) or None,
                                     weighted=weighted)
                stats = run_search(reader, idx, dest, index_name=index, src_name=getattr(reader, "name", src), opts=opts,
                                   model=net, device=dev, batch_size=batch_size, errors=errors, fmt=fmt,
                                   argv=command_line())
                if readable:
                    _print_neighbours(dest, bool(vote), idx)
                done = f"searched {stats.queries} queries: {stats.rows_out} rows"
    finish(errors, None if readable else done)


def _model_for(idx, spec, device, open_model):
    """The model that embeds record queries: -m, else the bundled default model (checked against the index's)."""
    return open_model(spec, device)


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


def _short(v, n: int = 40) -> str:
    text = _fmt(v)
    return text if len(text) <= n else text[: n - 1] + "…"


def _print_neighbours(path: str, vote: bool, idx) -> None:
    from ecgtool.cli.common import console
    from ecgtool.io import read_table

    table, meta = read_table(path)
    con = console(soft_wrap=True)
    rows = table.to_pylist()
    if vote:
        for r in rows:
            con.print(f"\n[bold]{r['query_record_id']}[/bold]  ({r['neighbours']} neighbours)")
            for key, v in r.items():
                if key.startswith("knn_") and not key.endswith("_fraction"):
                    lab = key[4:]
                    line = f"  {lab}: kNN {_fmt(v)}"
                    if f"knn_{lab}_fraction" in r:
                        line += f" ({_fmt(r[f'knn_{lab}_fraction'])})"
                    if f"model_{lab}" in r:
                        line += f", model {_fmt(r[f'model_{lab}'])}, agree: {_fmt(r[f'agree_{lab}'])}"
                    con.print(line)
        return
    if not rows:
        con.print("no neighbour found")
        return
    labels = idx.label_names
    pcol, dcol = idx.patient_column, idx.date_column
    text_col = next((c for c in ("scp_codes", "diagnosis", "label") if c in table.column_names), None)
    same_patient = bool(meta.same_patient)
    current = object()
    for r in rows:
        q = (r["query_record_id"], r.get("query_segment"))
        if q != current:
            current = q
            seg = f" (window {q[1]})" if q[1] is not None else ""
            what = ("ECGs of the same patient by date (number: rank by distance)" if same_patient
                    else "nearest records")
            con.print(f"\n[bold]{q[0]}[/bold]{seg}: {what}")
        seg = f"#{r['segment']}" if r.get("segment") is not None else ""
        parts = [f"{r['rank']:>3}. {r['record_id']}{seg}", f"d={r['distance']:.4f}"]
        if dcol and r.get(dcol) is not None:
            parts.append(_short(r[dcol], 19))
        if pcol and r.get(pcol) is not None and not same_patient:
            parts.append(f"patient {r[pcol]}")
        if labels:
            on = [n for n in labels if r.get(n) not in (None, 0, 0.0, False)]
            parts.append("labels: " + (", ".join(on) if on else "none"))
        if text_col and r.get(text_col) is not None:
            parts.append(_short(r[text_col]))
        con.print("  ".join(parts))


def _print_compare(path: str) -> None:
    from ecgtool.cli.common import console
    from ecgtool.io import read_table

    table, meta = read_table(path)
    con = console(soft_wrap=True)
    names = meta.label_names or []
    if not table.num_rows:
        con.print("no query has an earlier ECG of the same patient in the index")
    for r in table.to_pylist():
        con.print(f"\n[bold]{r['query_record_id']}[/bold] ({r['query_date'] or 'no date'}) against "
                  f"{r['baseline_record_id']} ({r['baseline_date'] or 'no date'}), patient {r['patient_id']}")
        if r["days_between"] is not None:
            con.print(f"  {r['days_between']:.0f} days apart; baseline: {r['baseline_rule']}")
        con.print(f"  embedding distance {r['distance']:.4f}")
        changes = [(n, r.get(f"change_{n}")) for n in names if r.get(f"change_{n}") is not None]
        for n, c in sorted(changes, key=lambda x: -abs(x[1])):
            con.print(f"  {n}: {r[f'baseline_{n}']:.2f} -> {r[f'query_{n}']:.2f} ({c:+.2f})")
        if r.get("png"):
            con.print(f"  overlay: {r['png']}")
