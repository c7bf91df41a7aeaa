"""ecgtool predict: label probabilities from a classifier."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.provenance import command_line
from ecgtool.cli.app import app
from ecgtool.cli.options import Inputs, ModelRun, model_run_options

PredictOutput = Annotated[
    str, typer.Option("-o", "--output", metavar="FILE", help="Output table (a file, or a folder/ of part files); "
                      "default: a summary on a terminal, else stdout.")
]


@app.command("predict")
@model_run_options(batch_size=32, output=PredictOutput, output_default="")
def predict(
    src: Inputs = None,
    aggregate: Annotated[str, typer.Option(
        "--aggregate", metavar="mean|max|none",
        help="Per record over windows and segments: mean or max (the checkpoint may set some labels to max); "
        "none: one row per window.")] = "mean",
    top: Annotated[int, typer.Option("--top", metavar="N",
                                     help="Summary: also show this many most probable labels.")] = 5,
    example: Annotated[bool, typer.Option("--example", help="Predict on the example records bundled with ecgtool (four PTB-XL ECGs).")] = False,
    crops: Annotated[Optional[int], typer.Option("--crops", metavar="K", help="Test-time averaging: K evenly spaced windows of each record longer than the model's window (overlapping where needed), averaged, instead of its non-overlapping windows. The records of a batch need one length (e.g. PTB-XL's 10 s; else 'ecgtool preprocess --length' first).")] = None,
    run: ModelRun = None,
) -> None:
    """Predict labels: one probability per label, and the findings above threshold.

    Output: a table with one float column per label and 'findings' (labels at
    or above the checkpoint's per-label thresholds). A checkpoint calibrated by
    'ecgtool finetune --alpha' adds its conformal output: 'prediction_set' (exclusive
    classes), or '<label>__decision' (positive / negative / abstain) and
    'uncertain' (the labels it abstains on). Without -o on a terminal, a
    readable summary per record instead. The input may be a table or raw ECG
    files (e.g. a .hea), converted on the fly.

    \b
    Examples:
      ecgtool predict --example
      ecgtool predict data/ptbxl/records500/00000/00001_hr.hea
      ecgtool predict -m finetuned.safetensors seg.parquet -o pred.parquet
      ecgtool convert data/ -o - | ecgtool predict - -o - | ecgtool info -
      ecgtool predict -m ft.safetensors rec.parquet --crops 4 -o pred.parquet
    """
    import sys
    import tempfile

    from ecgtool.cli.common import finish, progress, record_errors
    from ecgtool.cli.modelrun import open_input, open_model
    from ecgtool.models.apply import predict_table
    from ecgtool.models.inference import parse_shard, shard_path

    if example:
        from ecgtool.data import EXAMPLES

        if src:
            from ecgtool.errors import UsageError

            raise UsageError(f"--example predicts on the bundled example records, so it takes no input ({' '.join(src)})",
                             "leave out --example to predict on your file")
        src = [str(EXAMPLES)]
    errors = record_errors(run.on_error)
    sh = parse_shard(run.shard, use_env=not run.no_shard)
    summary = run.output == "" and sys.stdout.isatty()
    net, dev = open_model(run.model, run.device)
    with tempfile.TemporaryDirectory(prefix="ecgtool-predict-") as tmp:
        dest = f"{tmp}/pred.arrow" if summary else shard_path(run.output or "-", sh)
        from ecgtool.errors import InputError

        with open_input(src, run.batch_size, errors) as reader:
            try:
                stats = predict_table(reader, dest, net, device=dev, precision=run.precision, batch_size=run.batch_size,
                                      aggregate=aggregate, shard=sh, errors=errors, fmt=run.output_format, crops=crops,
                                      argv=command_line(), batches=progress(reader, getattr(reader, "num_rows", None),
                                                                      "predict", count=lambda b: b.num_rows))
            except InputError as exc:
                if summary and exc.message.startswith("nothing written"):  # the table was for the summary only
                    raise InputError("no record could be predicted", exc.hint) from None
                raise
        if summary:
            _print_summary(dest, top)
    finish(errors, None if summary else f"predicted {stats.rows_out} rows from {stats.rows_in} input rows")


def _print_summary(path: str, top: int) -> None:
    from ecgtool.cli.common import console

    from ecgtool.io import read_table

    table, meta = read_table(path)
    names = meta.label_names
    thr = dict(zip(names, meta.thresholds))
    con = console()
    con.print(f"model: {meta.model}")
    conf = meta.conformal
    level = f"{100 * (1 - conf['alpha']):g}%" if conf else None
    for row in table.to_pylist():
        con.print(f"\n[bold]{row['record_id']}[/bold]")
        found = row["findings"]
        unsure = set(row.get("uncertain") or [])
        if found:
            for name in found:
                tag = "  [yellow]uncertain[/yellow]" if name in unsure else ""
                con.print(f"  [green]{name}[/green]  {row[name]:.3f}  (threshold {thr[name]:.2f}){tag}")
        else:
            con.print("  no finding above its threshold")
        ranked = sorted(names, key=lambda n: -row[n])[:top]
        con.print("  most probable: " + ", ".join(f"{n} {row[n]:.2f}" for n in ranked))
        if conf and "prediction_set" in row:
            con.print(f"  prediction set ({level} conformal): " + ", ".join(row["prediction_set"] or []))
        elif conf and "uncertain" in row:
            con.print(f"  uncertain ({level} conformal; the model abstains): "
                      + (", ".join(n for n in names if n in unsure) or "none"))
