"""ecgtool convert: raw ECG files -> one record table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from ecgtool.cli.app import app
from ecgtool.cli.options import BatchSize, NoShard, OnError, Output, OutputFormat, Shard, Workers

log = logging.getLogger("ecgtool")


@app.command("convert")
def convert(
    inputs: Annotated[
        List[str],
        typer.Argument(metavar="INPUT...", help="Files, folders (scanned recursively), glob patterns, PhysioNet RECORDS files, "
                       "or '-' to read one path per line from stdin."),
    ],
    output: Output = "-",
    output_format: OutputFormat = None,
    workers: Workers = 1,
    batch_size: BatchSize = 64,
    shard: Shard = None,
    no_shard: NoShard = False,
    on_error: OnError = None,
    join: Annotated[
        Optional[List[str]],
        typer.Option("--join", metavar="FILE", help="CSV of per-record columns to add (repeatable), e.g. "
                     "ptbxl_database.csv or CinC 2017's REFERENCE.csv; rows match records by name or trailing path."),
    ] = None,
    join_key: Annotated[
        Optional[List[str]],
        typer.Option("--join-on", metavar="COL", help="CSV column(s) holding the record key "
                     "(default: of record_id, record, ecg_id, id, filename_hr/filename_lr and the first column, "
                     "the one matching most records; the rule is label --join's too)."),
    ] = None,
    fs: Annotated[
        Optional[float],
        typer.Option("--fs", metavar="HZ", help="Sampling rate in Hz of .csv/.npy inputs; for EDF and MFER files, "
                     "the rate every channel is resampled to (else one record per sampling rate)."),
    ] = None,
    leads: Annotated[
        Optional[str], typer.Option("--leads", metavar="LEAD,...", help="Lead names of .csv/.npy inputs, e.g. I,II,V1.")
    ] = None,
    waveform: Annotated[
        Optional[str],
        typer.Option("--waveform", metavar="rhythm|median",
                     help="GE MUSE XML: the 10 s rhythm ECG (default) or the median beats."),
    ] = None,
    all_channels: Annotated[
        bool,
        typer.Option("--all-channels", help="EDF and MFER: keep the non-ECG channels too (EEG, pressures, "
                     "accelerometers), in their own units."),
    ] = False,
) -> None:
    """Convert raw ECG files into one record table: WFDB, PhysioNet .mat, GE MUSE XML, Philips XML, HL7 aECG,
    DICOM, SCP-ECG, EDF/EDF+, MFER, Apple Health CSV, Contec ECG90A, CSV/NPY, and the MIMIC-IV-ECG and CODE-15
    archive layouts.

    Formats are recognised from the files' content, not their names (see
    docs/formats.md). Signals become float32 mV (WFDB: equal to
    wfdb.rdrecord(...).p_signal); lead names are normalised (AVR -> aVR,
    MLII -> II); header metadata (age, sex, SNOMED Dx codes, diagnosis
    statements, patient and device ids, EDF annotations, base date/time)
    becomes columns. A folder holding record_list.csv (MIMIC-IV-ECG) or
    exams.csv and HDF5 files (CODE-15) converts with the archive's ids and its
    CSV columns joined. A file that cannot be read gets a one-line error and
    the others go on (exit 3, or 0 with --on-error skip). Record ids are file
    names, or relative paths when names collide.

    --join: a CSV row joins the record whose id, name, or trailing path
    without extension equals the row's key (the --join-on column; by default
    filename_hr/filename_lr when present, as in PTB-XL, else the first column).
    A CSV whose first row already names a record has no header row (CinC
    2017's REFERENCE.csv: columns record, label). A joined column the table
    already has (age, sex) only fills empty values. Each join's match count is
    reported.

    \b
    Examples:
      ecgtool convert ptbxl/records500 --join ptbxl/ptbxl_database.csv -o ptbxl.parquet
      ecgtool convert cinc2017/RECORDS --join cinc2017/REFERENCE.csv -j 4 -o cinc2017.parquet
      ecgtool convert 'ludb/data/*.hea' -o - | ecgtool info -
      find data -name '*.xml' | ecgtool convert - -o aecg.parquet
      ecgtool convert ecg.npy --fs 500 --leads I,II,III -o ecg.parquet
      ecgtool convert muse/ --waveform median -o medians.parquet
    """
    from ecgtool.cli.common import finish, progress, record_errors
    from ecgtool.convert import convert as run_convert
    from ecgtool.signal.leads import parse_lead_list

    errors = record_errors(on_error)
    lead_names = parse_lead_list(leads) if leads else None
    if fs is not None and any(Path(i).suffix.lower() not in (".csv", ".npy", ".edf", ".bdf", ".mwf", ".mfer")
                              for i in inputs):
        log.warning("--fs %g sets the rate of .csv/.npy inputs and resamples EDF/MFER channels; records that state "
                    "their own rate (WFDB, XML, DICOM, SCP) keep it: resample them with 'ecgtool preprocess --fs'", fs)

    def wrap(chunks, total):
        return progress(chunks, total=None, desc="convert", unit="rec",
                        count=lambda res: sum(b.num_rows for b in res.batches) + len(res.errors))

    from ecgtool.io.shard import parse_shard, shard_path

    sh = parse_shard(shard, use_env=not no_shard)
    if workers == 1:
        from ecgtool.io.threads import chosen_threads

        workers = chosen_threads() or 1  # -@ N: N reader processes unless -j says otherwise
    res = run_convert(inputs, shard_path(output, sh), shard=sh, fmt=output_format, workers=workers, batch_size=batch_size,
                      errors=errors, join=join or (), join_key=join_key, fs=fs, leads=lead_names,
                      waveform=waveform, all_channels=all_channels, wrap=wrap)
    if res.ignored:
        log.info("ignored %d files in the folders that are not records (signal, annotation, label files)",
                 res.ignored)
    for name, n in res.joined.items():
        if n == 0 and res.rows:
            log.warning("--join %s matched none of the %d records: its key column shares no id with them "
                        "(give the column with --join-on; --on-error fail makes this an error)", name, res.rows)
        else:
            log.info("joined %s to %d of %d records", name, n, res.rows)
    finish(errors, f"converted {res.rows} of {res.records} records")
