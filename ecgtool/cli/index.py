"""ecgtool index: a nearest-neighbour index over an embedding table."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.provenance import command_line
from ecgtool.cli.app import app
from ecgtool.cli.options import Input, LabelTable, PatientColumn


@app.command("index")
def index(
    src: Input = "-",
    output: Annotated[str, typer.Option("-o", "--output", metavar="INDEX", help="The index file to write (or, with --append, to grow).")] = "",
    append: Annotated[bool, typer.Option("--append", help="Add the embeddings to the existing index -o INDEX (no rebuild; same model and dimension).")] = False,
    kind: Annotated[str, typer.Option("--kind", metavar="auto|exact|hnsw", help="auto (exact up to 50,000 rows, else hnsw), exact (brute force, NumPy), or hnsw (faiss graph; needs the 'retrieval' extra).")] = "auto",
    metric: Annotated[Optional[str], typer.Option("--metric", metavar="cosine|l2", help="cosine or l2 (default: the model card's, else cosine).")] = None,
    label_table: LabelTable = None,
    patient_column: PatientColumn = "patient_id",
    date_column: Annotated[Optional[str], typer.Option("--date-column", metavar="COL", help="Column with the recording date (default: the first of recording_date, acquisition_date, date, ... present).")] = None,
    hnsw_m: Annotated[int, typer.Option("--hnsw-m", min=4, metavar="M", help="hnsw: links per node.")] = 32,
    ef_construction: Annotated[int, typer.Option("--ef-construction", min=8, metavar="N", help="hnsw: candidate list while building (higher: better graph, slower build).")] = 80,
    ef_search: Annotated[int, typer.Option("--ef-search", min=1, metavar="N", help="hnsw: default candidate list while searching (search --ef overrides it).")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, metavar="N", help="Embedding rows read per batch.")] = 4096,
) -> None:
    """Build a nearest-neighbour index over an embedding table (any model's).

    The index file keeps the vectors (or a faiss HNSW graph), the model and
    its input contract, the embedding table's provenance, and the metadata
    columns (record id, segment, patient id, dates, labels) that search
    returns (a label table's columns are kept for search --vote). Rows with NaN embeddings are skipped and named. --append adds
    embeddings of the same model without rebuilding. See docs/retrieval.md.

    \b
    Examples:
      ecgtool index emb.parquet -o ptbxl.ecgidx
      ecgtool index emb.parquet -l labels.parquet -o ptbxl.ecgidx
      ecgtool index new_emb.parquet --append -o ptbxl.ecgidx
      ecgtool index emb.parquet --kind hnsw --metric l2 -@ 2 -o l2.ecgidx
    """

    from ecgtool.errors import UsageError
    from ecgtool.io import open_table, read_table
    from ecgtool.io.threads import default_threads
    from ecgtool.retrieval.index import build_index

    if not output or output == "-":
        raise UsageError("give the index file with -o INDEX", "an index is a file, not a stream")
    lab = None
    if label_table:
        lt, lm = read_table(label_table)
        lab = (lt, lm.label_names)
    params = {"M": hnsw_m, "ef_construction": ef_construction, "ef_search": ef_search}
    with open_table(src, batch_size=batch_size, threads=default_threads()) as reader:
        stats = build_index(reader, output, src_name=reader.name, kind=kind, metric=metric, labels=lab,
                            labels_name=label_table or "labels", patient_column=patient_column,
                            date_column=date_column, append=append, params=params,
                            threads=default_threads(64), argv=command_line())
    import logging

    what = "added" if append else "indexed"
    logging.getLogger("ecgtool").info("%s %d embeddings (%s, %s) into %s%s", what, stats.rows, stats.kind,
                                      stats.metric, output,
                                      f"; {stats.skipped} skipped (NaN)" if stats.skipped else "")
