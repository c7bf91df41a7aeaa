"""ecgtool saliency: where in the tracing the model looked."""

from __future__ import annotations

from typing import Optional

import typer
from typing_extensions import Annotated

from ecgtool.provenance import command_line
from ecgtool.cli.app import app
from ecgtool.cli.options import Inputs, ModelRun, model_run_options


@app.command("saliency")
@model_run_options(batch_size=8, precision=False)
def saliency(
    src: Inputs = None,
    label: Annotated[Optional[str], typer.Option(
        "--label", metavar="LABEL", help="The label to explain (default: each record's most probable).")] = None,
    method: Annotated[str, typer.Option(
        "--method", metavar="auto|attention|gradient",
        help="auto (attention for models that have it, else gradient), attention, or gradient (integrated "
        "gradients).")] = "auto",
    steps: Annotated[int, typer.Option("--steps", min=1, metavar="N",
                                       help="Integrated-gradients steps (points from the all-zero baseline).")] = 16,
    png: Annotated[Optional[str], typer.Option(
        "--png", metavar="DIR",
        help="Folder for one PNG per record (ECG grid paper, trace coloured by saliency).")] = None,
    run: ModelRun = None,
) -> None:
    """Saliency per lead for each record, as a table and as PNGs on ECG grid paper.

    attention: the last layer's attention, head-averaged, maximum over keys,
    stretched to the signal (as ECG-FM does; one trace for all leads, or one
    per lead for models whose tokens are per-lead patches).
    gradient: integrated gradients of the label's logit (any model, the CNN
    too; one trace per lead). Records longer than the model's window are
    explained window by window and joined.

    \b
    Examples:
      ecgtool saliency -m finetuned.safetensors seg.parquet --png figs/ -o sal.parquet
      ecgtool saliency data/ptbxl/records500/00000/00001_hr.hea --label AF --png figs/ -o sal.parquet
      ecgtool saliency -m ecgfounder.safetensors rec.parquet --method gradient --steps 32 --png figs/ -o sal.parquet
    """

    from ecgtool.analysis.saliency import saliency_table
    from ecgtool.cli.common import finish, progress, record_errors
    from ecgtool.cli.modelrun import open_input, open_model
    from ecgtool.io.shard import parse_shard, shard_batches, shard_path

    errors = record_errors(run.on_error)
    sh = parse_shard(run.shard, use_env=not run.no_shard)
    net, dev = open_model(run.model, run.device)
    with open_input(src, run.batch_size, errors) as reader:
        batches = progress(reader, getattr(reader, "num_rows", None), "saliency", count=lambda b: b.num_rows)
        rows = saliency_table(reader, shard_path(run.output, sh), net, device=dev, label=label, method=method,
                              steps=steps, batch_size=run.batch_size, png_dir=png, errors=errors, fmt=run.output_format,
                              argv=command_line(), batches=shard_batches(batches, sh))
    finish(errors, f"saliency for {rows} records" + (f"; PNGs in {png}" if png else ""))
